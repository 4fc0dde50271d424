// Step over the shared-memory data plane: an entry's q, k and v read from a region the client
// registered, its output written into the region (the response carries only the slice), mixed
// with an ordinary entry in the same step; outputs that overlap inputs are refused.

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>

#include "host_region.h"
#include "testing/conversation.h"
#include "testing/reference.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

TEST(StepRegionsTest, InputsAndOutputsInARegionBesideOrdinaryEntries) {
  const server::ServerConfig config = SmallModelConfig();
  absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config);
  ASSERT_TRUE(server.ok()) << server.status();
  HostRegion region(**server, 1 << 20);
  ASSERT_TRUE(region.attached());
  ReferenceCache reference(config.model);
  std::mt19937_64 rng(1);
  for (const char* id : {"in-region", "in-bytes"}) {
    grpc::ClientContext context;
    v1::CreateSequenceRequest request;
    request.set_sequence_id(id);
    v1::CreateSequenceResponse response;
    ASSERT_TRUE((*server)->kvcache().CreateSequence(&context, request, &response).ok());
  }
  for (int layer = 0; layer < 3; ++layer) {
    for (int n : {5, 1}) {
      const v1::StepEntry wanted = reference.MakeEntry("in-region", n, rng);
      const v1::StepEntry plain = reference.MakeEntry("in-bytes", n, rng);
      v1::StepEntry placed = wanted;
      region.Place(placed.mutable_q(), 0);
      region.Place(placed.mutable_k(), 64 << 10);
      region.Place(placed.mutable_v(), 128 << 10);
      placed.mutable_out()->set_region_id(region.id());
      placed.mutable_out()->set_offset(256 << 10);
      const size_t out_bytes = size_t(n) * 4 * 64 * 4;
      std::memset(region.data() + (256 << 10), 0xff, out_bytes);  // poison
      v1::StepResponse response;
      grpc::ClientContext context;
      const grpc::Status status =
          (*server)->kvcache().Step(&context, MakeStep(layer, {placed, plain}), &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      ASSERT_EQ(response.out_size(), 2);
      EXPECT_TRUE(response.out(0).data().empty()) << "the output went to the region";
      EXPECT_EQ(response.out(0).region().region_id(), region.id());
      EXPECT_EQ(response.out(0).region().offset(), uint64_t(256 << 10));
      v1::Tensor from_region = response.out(0);
      from_region.clear_region();
      from_region.set_data(region.data() + (256 << 10), out_bytes);
      EXPECT_EQ(reference.Apply(layer, wanted, from_region), "") << "layer " << layer;
      EXPECT_EQ(reference.Apply(layer, plain, response.out(1)), "") << "layer " << layer;
    }
  }
  // An output over its own q is refused, and changes nothing.
  v1::StepEntry overlapping = reference.MakeEntry("in-region", 2, rng);
  region.Place(overlapping.mutable_q(), 0);
  region.Place(overlapping.mutable_k(), 64 << 10);
  region.Place(overlapping.mutable_v(), 128 << 10);
  overlapping.mutable_out()->set_region_id(region.id());
  overlapping.mutable_out()->set_offset(1024);
  grpc::ClientContext context;
  v1::StepResponse response;
  const grpc::Status status =
      (*server)->kvcache().Step(&context, MakeStep(0, {overlapping}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("entries[0].out overlaps entries[0].q"), std::string::npos)
      << status.error_message();
  // An output inside a long input, past a shorter input that starts within it: the overlap is
  // with the long one, not with its neighbour in address order.
  v1::StepEntry nested = reference.MakeEntry("in-region", 5, rng);
  region.Place(nested.mutable_q(), 0);  // 5 rows of 4 heads x 64 fp32: [0, 5120)
  region.Place(nested.mutable_k(), 64);  // inputs may share bytes: [64, 2624)
  region.Place(nested.mutable_v(), 128 << 10);
  nested.mutable_out()->set_region_id(region.id());
  nested.mutable_out()->set_offset(3072);
  grpc::ClientContext context3;
  const grpc::Status inside =
      (*server)->kvcache().Step(&context3, MakeStep(0, {nested}), &response);
  EXPECT_EQ(inside.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << inside.error_message();
  EXPECT_NE(inside.error_message().find("entries[0].out overlaps entries[0].q"), std::string::npos)
      << inside.error_message();
  // Unknown regions are NOT_FOUND, named by field.
  v1::StepEntry unknown = reference.MakeEntry("in-region", 1, rng);
  unknown.mutable_out()->set_region_id(region.id() ^ 1);
  grpc::ClientContext context2;
  const grpc::Status missing =
      (*server)->kvcache().Step(&context2, MakeStep(0, {unknown}), &response);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND) << missing.error_message();
  EXPECT_NE(missing.error_message().find("entries[0].out"), std::string::npos)
      << missing.error_message();
}

}  // namespace
}  // namespace flashkv::testing
