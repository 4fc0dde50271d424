// Step over the shared-memory data plane: an entry's q, k and v read from a region the client
// registered, its output written into the region (the response carries only the slice), mixed
// with an ordinary entry in the same step; outputs that overlap inputs are refused.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>

#include "flashkv/v1/region.grpc.pb.h"
#include "testing/conversation.h"
#include "testing/reference.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

// A sealed memfd of this process, mapped, and registered with the server for as long as the
// AttachRegion call lasts.
class Region {
 public:
  Region(TestServer& server, size_t size) : size_(size) {
    fd_ = memfd_create("step-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    EXPECT_EQ(ftruncate(fd_, off_t(size)), 0);
    EXPECT_EQ(fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
    data_ = static_cast<uint8_t*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
    stub_ = v1::RegionService::NewStub(server.channel());
    v1::AttachRegionRequest request;
    request.set_size(size);
    request.mutable_host()->set_pid(getpid());
    request.mutable_host()->set_fd(fd_);
    reader_ = stub_->AttachRegion(&context_, request);
    v1::AttachRegionResponse response;
    attached_ = reader_->Read(&response);
    id_ = response.region_id();
  }
  ~Region() {
    context_.TryCancel();
    v1::AttachRegionResponse ignored;
    while (reader_->Read(&ignored)) {
    }
    (void)reader_->Finish();
    munmap(data_, size_);
    close(fd_);
  }
  bool attached() const { return attached_; }
  uint64_t id() const { return id_; }
  uint8_t* data() const { return data_; }

  // Moves `tensor`'s bytes to `offset` in the region and makes it name them there.
  void Place(v1::Tensor* tensor, size_t offset) {
    std::memcpy(data_ + offset, tensor->data().data(), tensor->data().size());
    tensor->clear_data();
    tensor->mutable_region()->set_region_id(id_);
    tensor->mutable_region()->set_offset(offset);
  }

 private:
  size_t size_;
  int fd_ = -1;
  uint8_t* data_ = nullptr;
  std::unique_ptr<v1::RegionService::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::AttachRegionResponse>> reader_;
  bool attached_ = false;
  uint64_t id_ = 0;
};

TEST(StepRegionsTest, InputsAndOutputsInARegionBesideOrdinaryEntries) {
  const server::ServerConfig config = SmallModelConfig();
  absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config);
  ASSERT_TRUE(server.ok()) << server.status();
  Region region(**server, 1 << 20);
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
