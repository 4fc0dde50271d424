// The decoders' limits (DecodeLimits): each repeated thing a request carries stops at its limit,
// counted before it is stored, with the field and limit in the error; at the limit exactly the
// message decodes; values split over repeated occurrences of a field count together.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "flashkv/v1/attention.pb.h"
#include "flashkv/v1/kvcache.pb.h"
#include "flashkv/wire/messages.h"

namespace flashkv::wire {
namespace {

MessageBytes Bytes(const std::string& s) {
  std::vector<grpc::Slice> slices;
  slices.emplace_back(s.data(), s.size());
  return MessageBytes::FromSlices(std::move(slices));
}

absl::Status DecodeStep(const flashkv::v1::StepRequest& request, const DecodeLimits& limits) {
  StepRequestView view;
  return DecodeStepRequest(Bytes(request.SerializeAsString()), &view, limits);
}

void ExpectRefused(const absl::Status& status, const std::string& text) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(text), std::string::npos) << status;
}

TEST(WireLimitsTest, StepRequestEntriesIdsTokenIdsAndRank) {
  DecodeLimits limits;
  limits.max_entries = 3;
  limits.max_token_ids = 4;
  limits.max_id_bytes = 8;
  flashkv::v1::StepRequest request;
  for (int i = 0; i < 3; ++i) request.add_entries()->set_sequence_id("12345678");
  for (int i = 0; i < 4; ++i) request.mutable_entries(0)->add_token_ids(1000000 + i);
  for (int i = 0; i < 8; ++i) request.mutable_entries(1)->mutable_q()->add_shape(1);
  EXPECT_TRUE(DecodeStep(request, limits).ok());  // every limit reached, none passed

  flashkv::v1::StepRequest more = request;
  more.add_entries();
  ExpectRefused(DecodeStep(more, limits), "StepRequest.entries: more than 3 entries");
  more = request;
  more.mutable_entries(0)->add_token_ids(7);
  ExpectRefused(DecodeStep(more, limits), "StepEntry.token_ids: field 5 has more than 4 values");
  more = request;
  more.mutable_entries(2)->set_sequence_id("123456789");
  ExpectRefused(DecodeStep(more, limits), "StepEntry.sequence_id has 9 bytes; at most 8");
  more = request;
  more.mutable_entries(1)->mutable_q()->add_shape(1);
  ExpectRefused(DecodeStep(more, limits), "Tensor.shape: field 2 has more than 8 values");
}

TEST(WireLimitsTest, RepeatedOccurrencesCountTogether) {
  // Two packed runs of token ids in one entry (protobuf appends them), and a Tensor field given
  // twice (protobuf merges it): the limits apply to the sums.
  DecodeLimits limits;
  limits.max_token_ids = 5;
  flashkv::v1::StepEntry a, b;
  for (int i = 0; i < 3; ++i) a.add_token_ids(i), b.add_token_ids(i);
  for (int i = 0; i < 5; ++i) a.mutable_q()->add_shape(1), b.mutable_q()->add_shape(1);
  flashkv::v1::StepRequest request;
  *request.add_entries() = a;
  const std::string entry_a = a.SerializeAsString(), entry_b = b.SerializeAsString();
  // entries { a-bytes b-bytes }: one entry whose fields occur twice.
  const std::string merged = entry_a + entry_b;
  std::string message;
  message.push_back(static_cast<char>((2 << 3) | 2));  // field 2 (entries), length-delimited
  message.push_back(static_cast<char>(merged.size()));
  ASSERT_LT(merged.size(), 128u);
  message += merged;
  StepRequestView view;
  const absl::Status status = DecodeStepRequest(Bytes(message), &view, limits);
  ExpectRefused(status, "more than");
  limits.max_token_ids = 6;
  view = StepRequestView();
  const absl::Status rank = DecodeStepRequest(Bytes(message), &view, limits);
  ExpectRefused(rank, "Tensor.shape: field 2 has more than 8 values");  // 5 + 5 dims
}

TEST(WireLimitsTest, VarlenCuSeqlens) {
  DecodeLimits limits;
  limits.max_cu_seqlens = 3;
  flashkv::v1::AttentionVarlenRequest request;
  for (int i = 0; i < 3; ++i) request.add_cu_seqlens_q(i), request.add_cu_seqlens_kv(i);
  AttentionVarlenRequestView view;
  EXPECT_TRUE(DecodeAttentionVarlenRequest(Bytes(request.SerializeAsString()), &view, limits).ok());
  request.add_cu_seqlens_kv(3);
  view = AttentionVarlenRequestView();
  ExpectRefused(DecodeAttentionVarlenRequest(Bytes(request.SerializeAsString()), &view, limits),
                "AttentionVarlenRequest.cu_seqlens_kv: field 5 has more than 3 values");
}

}  // namespace
}  // namespace flashkv::wire
