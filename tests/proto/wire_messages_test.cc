// The zero-copy codec (flashkv/wire/messages.h) against protobuf's own parser and serializer on
// random messages cut into random slices, plus the parsing rules protobuf follows that a
// hand-written decoder easily gets wrong: unknown fields, unpacked repeated scalars, a repeated
// singular message merging, wrong wire types, truncation.

#include <google/protobuf/unknown_field_set.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flashkv/v1/attention.pb.h"
#include "flashkv/v1/kvcache.pb.h"
#include "flashkv/wire/messages.h"
#include "flatten.h"

namespace flashkv::wire {
namespace {

namespace v1 = flashkv::v1;

class Random {
 public:
  explicit Random(uint64_t seed) : rng_(seed) {}
  int Int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool Bool() { return Int(0, 1) == 1; }
  std::string Bytes(size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(Int(0, 255));
    return s;
  }
  // Cuts into 1..8 pieces, sometimes one byte each.
  MessageBytes Slices(const std::string& bytes) {
    std::vector<grpc::Slice> slices;
    if (Int(0, 4) == 0) {
      for (char c : bytes) slices.emplace_back(&c, 1);
      return MessageBytes::FromSlices(std::move(slices));
    }
    std::vector<size_t> cuts = {0, bytes.size()};
    for (int i = Int(0, 7); i > 0; --i)
      cuts.push_back(bytes.empty() ? 0 : Int(0, int(bytes.size())));
    std::sort(cuts.begin(), cuts.end());
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      slices.emplace_back(bytes.data() + cuts[i], cuts[i + 1] - cuts[i]);
    }
    return MessageBytes::FromSlices(std::move(slices));
  }

 private:
  std::mt19937_64 rng_;
};

// Sometimes defaults (an empty submessage), sometimes 64-bit values.
void FillRegionSlice(Random& r, v1::RegionSlice* s) {
  if (r.Bool()) s->set_region_id((uint64_t(r.Int(0, 1 << 30)) << 33) | uint64_t(r.Int(1, 9)));
  if (r.Bool()) s->set_offset(uint64_t(r.Int(0, 1 << 30)) << r.Int(0, 30));
}

void FillTensor(Random& r, v1::Tensor* t) {
  if (r.Int(0, 5) > 0) t->set_dtype(static_cast<v1::DType>(r.Int(0, 3)));
  for (int i = r.Int(0, 4); i > 0; --i) t->add_shape(r.Int(-3, 1 << 20));
  if (r.Int(0, 5) > 0) t->set_data(r.Bytes(r.Int(0, 9000)));
  if (r.Int(0, 3) == 0) FillRegionSlice(r, t->mutable_region());
}

v1::StepRequest RandomStepRequest(Random& r) {
  v1::StepRequest m;
  if (r.Bool()) m.set_layer(r.Int(0, 100));
  if (r.Bool()) m.set_step_id(uint64_t(r.Int(0, 1 << 30)) << 20);
  for (int i = r.Int(0, 5); i > 0; --i) {
    v1::StepEntry* e = m.add_entries();
    if (r.Bool()) e->set_sequence_id("seq-" + std::to_string(r.Int(0, 1000)));
    if (r.Int(0, 4) > 0) FillTensor(r, e->mutable_q());
    if (r.Int(0, 4) > 0) FillTensor(r, e->mutable_k());
    if (r.Int(0, 4) > 0) FillTensor(r, e->mutable_v());
    for (int j = r.Int(0, 20); j > 0; --j) e->add_token_ids(r.Int(-5, 1 << 30));
    if (r.Int(0, 3) == 0) FillRegionSlice(r, e->mutable_out());
  }
  return m;
}

std::string DataOf(const MessageBytes& message, Span span) {
  std::string out(span.size, '\0');
  message.CopyTo(span, out.data());
  return out;
}

void ExpectRegionSliceEq(const RegionSliceView& got, bool has, const v1::RegionSlice& want,
                         const std::string& where) {
  EXPECT_EQ(got.present, has) << where;
  EXPECT_EQ(got.region_id, want.region_id()) << where;
  EXPECT_EQ(got.offset, want.offset()) << where;
}

RegionSliceView ToView(bool has, const v1::RegionSlice& s) {
  return RegionSliceView{has, s.region_id(), s.offset()};
}

void ExpectTensorEq(const MessageBytes& message, const TensorView& got, bool has,
                    const v1::Tensor& want, const std::string& where) {
  EXPECT_EQ(got.present, has) << where;
  EXPECT_EQ(got.dtype, int32_t(want.dtype())) << where;
  EXPECT_EQ(got.shape, Dims(want.shape().begin(), want.shape().end())) << where;
  EXPECT_EQ(DataOf(message, got.data), want.data()) << where;
  ExpectRegionSliceEq(got.region, want.has_region(), want.region(), where + ".region");
}

void ExpectStepRequestEq(const MessageBytes& message, const StepRequestView& got,
                         const v1::StepRequest& want) {
  EXPECT_EQ(got.layer, want.layer());
  EXPECT_EQ(got.step_id, want.step_id());
  ASSERT_EQ(got.entries.size(), size_t(want.entries_size()));
  for (size_t i = 0; i < got.entries.size(); ++i) {
    const StepEntryView& g = got.entries[i];
    const v1::StepEntry& w = want.entries(int(i));
    const std::string where = "entries[" + std::to_string(i) + "]";
    EXPECT_EQ(g.sequence_id, w.sequence_id()) << where;
    ExpectTensorEq(message, g.q, w.has_q(), w.q(), where + ".q");
    ExpectTensorEq(message, g.k, w.has_k(), w.k(), where + ".k");
    ExpectTensorEq(message, g.v, w.has_v(), w.v(), where + ".v");
    EXPECT_EQ(g.token_ids, std::vector<int64_t>(w.token_ids().begin(), w.token_ids().end()));
    ExpectRegionSliceEq(g.out, w.has_out(), w.out(), where + ".out");
  }
}

TensorData ToData(const v1::Tensor& t, std::shared_ptr<const void> owner) {
  return TensorData{int32_t(t.dtype()), Dims(t.shape().begin(), t.shape().end()),
                    t.data().data(),    t.data().size(),
                    std::move(owner),   ToView(t.has_region(), t.region())};
}

TEST(WireMessagesTest, DecodesStepRequestsAsProtobufParsesThem) {
  Random r(1);
  for (int trial = 0; trial < 300; ++trial) {
    const v1::StepRequest want = RandomStepRequest(r);
    const std::string bytes = want.SerializeAsString();
    const MessageBytes message = r.Slices(bytes);
    StepRequestView got;
    ASSERT_TRUE(DecodeStepRequest(message, &got).ok()) << trial;
    ExpectStepRequestEq(message, got, want);
  }
}

TEST(WireMessagesTest, EncodesStepRequestsAndResponsesThatProtobufParses) {
  Random r(2);
  auto owner = std::make_shared<int>(0);
  for (int trial = 0; trial < 200; ++trial) {
    const v1::StepRequest want = RandomStepRequest(r);
    std::vector<StepEntryData> entries;
    for (const v1::StepEntry& e : want.entries()) {
      entries.push_back(StepEntryData{
          e.sequence_id(), ToData(e.q(), owner), ToData(e.k(), owner), ToData(e.v(), owner),
          std::vector<int64_t>(e.token_ids().begin(), e.token_ids().end()),
          ToView(e.has_out(), e.out())});
    }
    v1::StepRequest parsed;
    ASSERT_TRUE(
        parsed.ParseFromString(Flatten(EncodeStepRequest(want.layer(), want.step_id(), entries))));
    // An absent tensor and an empty one encode alike; compare through a canonical copy.
    v1::StepRequest canonical = want;
    for (auto& e : *canonical.mutable_entries()) {
      e.mutable_q();
      e.mutable_k();
      e.mutable_v();
    }
    EXPECT_EQ(parsed.SerializeAsString(), canonical.SerializeAsString()) << trial;

    std::vector<TensorData> out;
    v1::StepResponse response;
    response.set_step_id(want.step_id());
    for (const v1::StepEntry& e : want.entries()) {
      *response.add_out() = e.q();
      out.push_back(ToData(e.q(), owner));
    }
    StepTiming timing;
    if (r.Bool()) timing.kernel_ns = uint64_t(r.Int(0, 1 << 30)) << r.Int(0, 30);
    if (r.Bool()) timing.server_ns = uint64_t(r.Int(0, 1 << 30)) << r.Int(0, 30);
    if (r.Bool()) timing.queue_ns = uint64_t(r.Int(0, 1 << 30)) << r.Int(0, 30);
    if (r.Bool()) timing.launch_ns = uint64_t(r.Int(0, 1 << 30)) << r.Int(0, 30);
    response.set_kernel_ns(timing.kernel_ns);
    response.set_server_ns(timing.server_ns);
    response.set_queue_ns(timing.queue_ns);
    response.set_launch_ns(timing.launch_ns);
    v1::StepResponse parsed_response;
    ASSERT_TRUE(
        parsed_response.ParseFromString(Flatten(EncodeStepResponse(out, want.step_id(), timing))));
    EXPECT_EQ(parsed_response.SerializeAsString(), response.SerializeAsString());

    StepResponseView view;
    const std::string response_bytes = response.SerializeAsString();
    const MessageBytes message = r.Slices(response_bytes);
    ASSERT_TRUE(DecodeStepResponse(message, &view).ok());
    EXPECT_EQ(view.timing.kernel_ns, timing.kernel_ns);
    EXPECT_EQ(view.timing.server_ns, timing.server_ns);
    EXPECT_EQ(view.timing.queue_ns, timing.queue_ns);
    EXPECT_EQ(view.timing.launch_ns, timing.launch_ns);
    ASSERT_EQ(view.out.size(), size_t(response.out_size()));
    for (size_t i = 0; i < view.out.size(); ++i) {
      ExpectTensorEq(message, view.out[i], true, response.out(int(i)), "out");
    }
  }
}

v1::StepRequest RandomBatchRequest(Random& r) {
  v1::StepRequest m;
  if (r.Bool()) m.set_layer(r.Int(0, 100));
  if (r.Bool()) m.set_step_id(uint64_t(r.Int(0, 1 << 30)) << 20);
  v1::StepBatch* b = m.mutable_batch();
  for (int i = r.Int(0, 6); i > 0; --i) b->add_sequence_ids("seq-" + std::to_string(r.Int(0, 99)));
  for (int i = r.Int(0, 6); i > 0; --i) b->add_num_tokens(uint32_t(r.Int(0, 1 << 30)) << 1);
  if (r.Int(0, 4) > 0) FillTensor(r, b->mutable_q());
  if (r.Int(0, 4) > 0) FillTensor(r, b->mutable_k());
  if (r.Int(0, 4) > 0) FillTensor(r, b->mutable_v());
  if (r.Bool()) FillRegionSlice(r, b->mutable_out());
  for (int j = r.Int(0, 20); j > 0; --j) b->add_token_ids(r.Int(-5, 1 << 30));
  if (r.Bool()) b->set_pass_id(uint64_t(r.Int(1, 1 << 30)) << r.Int(0, 33));
  return m;
}

TEST(WireMessagesTest, StepBatchesAsProtobufHasThem) {
  Random r(9);
  auto owner = std::make_shared<int>(0);
  for (int trial = 0; trial < 200; ++trial) {
    const v1::StepRequest want = RandomBatchRequest(r);
    const v1::StepBatch& w = want.batch();
    // Decoding, from random slices.
    const std::string bytes = want.SerializeAsString();
    const MessageBytes message = r.Slices(bytes);
    StepRequestView got;
    ASSERT_TRUE(DecodeStepRequest(message, &got).ok()) << trial;
    EXPECT_TRUE(got.batch.present);
    EXPECT_TRUE(got.entries.empty());
    EXPECT_EQ(got.layer, want.layer());
    EXPECT_EQ(got.step_id, want.step_id());
    EXPECT_EQ(got.batch.sequence_ids,
              std::vector<std::string>(w.sequence_ids().begin(), w.sequence_ids().end()));
    EXPECT_EQ(got.batch.num_tokens,
              std::vector<int64_t>(w.num_tokens().begin(), w.num_tokens().end()));
    ExpectTensorEq(message, got.batch.q, w.has_q(), w.q(), "batch.q");
    ExpectTensorEq(message, got.batch.k, w.has_k(), w.k(), "batch.k");
    ExpectTensorEq(message, got.batch.v, w.has_v(), w.v(), "batch.v");
    ExpectRegionSliceEq(got.batch.out, w.has_out(), w.out(), "batch.out");
    EXPECT_EQ(got.batch.token_ids,
              std::vector<int64_t>(w.token_ids().begin(), w.token_ids().end()));
    EXPECT_EQ(got.batch.pass_id, w.pass_id());
    // Encoding: what protobuf parses back (absent and empty tensors encode alike).
    StepBatchData data;
    data.sequence_ids.assign(w.sequence_ids().begin(), w.sequence_ids().end());
    data.num_tokens.assign(w.num_tokens().begin(), w.num_tokens().end());
    data.q = ToData(w.q(), owner);
    data.k = ToData(w.k(), owner);
    data.v = ToData(w.v(), owner);
    data.out = ToView(w.has_out(), w.out());
    data.token_ids.assign(w.token_ids().begin(), w.token_ids().end());
    data.pass_id = w.pass_id();
    v1::StepRequest parsed;
    ASSERT_TRUE(parsed.ParseFromString(
        Flatten(EncodeStepBatchRequest(want.layer(), want.step_id(), data))));
    v1::StepRequest canonical = want;
    canonical.mutable_batch()->mutable_q();
    canonical.mutable_batch()->mutable_k();
    canonical.mutable_batch()->mutable_v();
    EXPECT_EQ(parsed.SerializeAsString(), canonical.SerializeAsString()) << trial;
    // The response's batch_out, both ways.
    v1::StepResponse response;
    response.set_step_id(want.step_id());
    *response.mutable_batch_out() = w.q();
    const TensorData batch_out = ToData(w.q(), owner);
    v1::StepResponse parsed_response;
    ASSERT_TRUE(parsed_response.ParseFromString(
        Flatten(EncodeStepResponse({}, want.step_id(), StepTiming{}, &batch_out))));
    EXPECT_EQ(parsed_response.SerializeAsString(), response.SerializeAsString());
    const std::string response_bytes = response.SerializeAsString();
    const MessageBytes response_message = r.Slices(response_bytes);
    StepResponseView view;
    ASSERT_TRUE(DecodeStepResponse(response_message, &view).ok());
    EXPECT_TRUE(view.out.empty());
    ExpectTensorEq(response_message, view.batch_out, true, response.batch_out(), "batch_out");
  }
}

TEST(WireMessagesTest, StepBatchLimits) {
  v1::StepRequest request;
  for (int i = 0; i < 3; ++i) request.mutable_batch()->add_sequence_ids("s" + std::to_string(i));
  for (int i = 0; i < 5; ++i) request.mutable_batch()->add_token_ids(i);
  const std::string bytes = request.SerializeAsString();
  const MessageBytes message = MessageBytes::FromSlices({grpc::Slice(bytes)});
  DecodeLimits limits;
  limits.max_entries = 2;
  StepRequestView view;
  absl::Status s = DecodeStepRequest(message, &view, limits);
  EXPECT_NE(s.message().find("StepBatch.sequence_ids: more than 2"), std::string::npos) << s;
  limits = DecodeLimits();
  limits.max_batch_rows = 4;
  view = StepRequestView();
  s = DecodeStepRequest(message, &view, limits);
  EXPECT_NE(s.message().find("StepBatch.token_ids"), std::string::npos) << s;
}

TEST(WireMessagesTest, AttentionRequestsAndResponses) {
  Random r(3);
  for (int trial = 0; trial < 100; ++trial) {
    v1::AttentionVarlenRequest want;
    FillTensor(r, want.mutable_q());
    FillTensor(r, want.mutable_k());
    if (r.Bool()) FillTensor(r, want.mutable_v());
    for (int i = r.Int(0, 6); i > 0; --i) want.add_cu_seqlens_q(r.Int(-10, 1000));
    for (int i = r.Int(0, 6); i > 0; --i) want.add_cu_seqlens_kv(r.Int(-10, 1000));
    want.set_causal(r.Bool());
    if (r.Bool()) want.set_softmax_scale(float(r.Int(-100, 100)) / 7.0f);
    want.set_return_lse(r.Bool());
    if (r.Bool()) FillRegionSlice(r, want.mutable_out());
    if (r.Bool()) FillRegionSlice(r, want.mutable_lse());
    const std::string bytes = want.SerializeAsString();
    const MessageBytes message = r.Slices(bytes);
    AttentionVarlenRequestView got;
    ASSERT_TRUE(DecodeAttentionVarlenRequest(message, &got).ok());
    ExpectTensorEq(message, got.q, true, want.q(), "q");
    ExpectTensorEq(message, got.k, true, want.k(), "k");
    ExpectTensorEq(message, got.v, want.has_v(), want.v(), "v");
    EXPECT_EQ(got.cu_seqlens_q,
              std::vector<int32_t>(want.cu_seqlens_q().begin(), want.cu_seqlens_q().end()));
    EXPECT_EQ(got.cu_seqlens_kv,
              std::vector<int32_t>(want.cu_seqlens_kv().begin(), want.cu_seqlens_kv().end()));
    EXPECT_EQ(got.causal, want.causal());
    EXPECT_EQ(got.softmax_scale.has_value(), want.has_softmax_scale());
    if (want.has_softmax_scale()) EXPECT_EQ(*got.softmax_scale, want.softmax_scale());
    EXPECT_EQ(got.return_lse, want.return_lse());
    ExpectRegionSliceEq(got.out, want.has_out(), want.out(), "out");
    ExpectRegionSliceEq(got.lse, want.has_lse(), want.lse(), "lse");

    // The same fields in the fixed-length request.
    v1::AttentionRequest fixed;
    *fixed.mutable_q() = want.q();
    *fixed.mutable_k() = want.k();
    fixed.set_causal(want.causal());
    if (want.has_softmax_scale()) fixed.set_softmax_scale(want.softmax_scale());
    fixed.set_return_lse(want.return_lse());
    if (want.has_out()) *fixed.mutable_out() = want.out();
    if (want.has_lse()) *fixed.mutable_lse() = want.lse();
    const std::string fixed_bytes = fixed.SerializeAsString();
    AttentionRequestView fixed_got;
    ASSERT_TRUE(DecodeAttentionRequest(r.Slices(fixed_bytes), &fixed_got).ok());
    EXPECT_EQ(fixed_got.q.shape.size(), size_t(fixed.q().shape_size()));
    EXPECT_EQ(fixed_got.causal, fixed.causal());
    EXPECT_EQ(fixed_got.softmax_scale.has_value(), fixed.has_softmax_scale());
    EXPECT_FALSE(fixed_got.v.present);
    ExpectRegionSliceEq(fixed_got.out, fixed.has_out(), fixed.out(), "fixed out");
    ExpectRegionSliceEq(fixed_got.lse, fixed.has_lse(), fixed.lse(), "fixed lse");

    // Responses, with and without lse.
    auto owner = std::make_shared<int>(0);
    v1::AttentionResponse response;
    *response.mutable_out() = want.q();
    if (want.return_lse()) *response.mutable_lse() = want.k();
    const TensorData lse = ToData(want.k(), owner);
    v1::AttentionResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(Flatten(
        EncodeAttentionResponse(ToData(want.q(), owner), want.return_lse() ? &lse : nullptr))));
    EXPECT_EQ(parsed.SerializeAsString(), response.SerializeAsString());
    AttentionResponseView view;
    const std::string response_bytes = response.SerializeAsString();
    const MessageBytes response_message = r.Slices(response_bytes);
    ASSERT_TRUE(DecodeAttentionResponse(response_message, &view).ok());
    ExpectTensorEq(response_message, view.out, true, response.out(), "out");
    EXPECT_EQ(view.lse.present, response.has_lse());
  }
}

// The clients' encoders: what protobuf parses back is the request, byte for byte once absent
// tensors are made empty (the encoder always writes q, k and v).
TEST(WireMessagesTest, EncodesAttentionRequestsThatProtobufParses) {
  Random r(4);
  auto owner = std::make_shared<int>(0);
  for (int trial = 0; trial < 200; ++trial) {
    v1::AttentionVarlenRequest want;
    FillTensor(r, want.mutable_q());
    FillTensor(r, want.mutable_k());
    FillTensor(r, want.mutable_v());
    for (int i = r.Int(0, 6); i > 0; --i) want.add_cu_seqlens_q(r.Int(-10, 1 << 20));
    for (int i = r.Int(0, 6); i > 0; --i) want.add_cu_seqlens_kv(r.Int(-10, 1 << 20));
    want.set_causal(r.Bool());
    if (r.Bool()) want.set_softmax_scale(r.Int(0, 3) == 0 ? 0.0f : float(r.Int(-100, 100)) / 7.0f);
    want.set_return_lse(r.Bool());
    if (r.Bool()) FillRegionSlice(r, want.mutable_out());
    if (r.Bool()) FillRegionSlice(r, want.mutable_lse());
    AttentionRequestData data;
    data.q = ToData(want.q(), owner);
    data.k = ToData(want.k(), owner);
    data.v = ToData(want.v(), owner);
    data.causal = want.causal();
    if (want.has_softmax_scale()) data.softmax_scale = want.softmax_scale();
    data.return_lse = want.return_lse();
    data.out = ToView(want.has_out(), want.out());
    data.lse = ToView(want.has_lse(), want.lse());
    data.cu_seqlens_q.assign(want.cu_seqlens_q().begin(), want.cu_seqlens_q().end());
    data.cu_seqlens_kv.assign(want.cu_seqlens_kv().begin(), want.cu_seqlens_kv().end());
    v1::AttentionVarlenRequest parsed;
    ASSERT_TRUE(parsed.ParseFromString(Flatten(EncodeAttentionVarlenRequest(data))));
    EXPECT_EQ(parsed.SerializeAsString(), want.SerializeAsString()) << trial;

    v1::AttentionRequest fixed;
    *fixed.mutable_q() = want.q();
    *fixed.mutable_k() = want.k();
    *fixed.mutable_v() = want.v();
    fixed.set_causal(want.causal());
    if (want.has_softmax_scale()) fixed.set_softmax_scale(want.softmax_scale());
    fixed.set_return_lse(want.return_lse());
    if (want.has_out()) *fixed.mutable_out() = want.out();
    if (want.has_lse()) *fixed.mutable_lse() = want.lse();
    v1::AttentionRequest parsed_fixed;
    ASSERT_TRUE(parsed_fixed.ParseFromString(Flatten(EncodeAttentionRequest(data))));
    EXPECT_EQ(parsed_fixed.SerializeAsString(), fixed.SerializeAsString()) << trial;
  }
}

// Unknown fields of every wire type, at every level, are skipped as protobuf skips them; a known
// field with the wrong wire type is an unknown field too.
TEST(WireMessagesTest, SkipsUnknownFieldsAndWrongWireTypes) {
  Random r(4);
  auto add_unknown = [](google::protobuf::Message* m) {
    google::protobuf::UnknownFieldSet* u = m->GetReflection()->MutableUnknownFields(m);
    u->AddVarint(100, 5);
    u->AddFixed64(101, 0x0101010101010101);
    u->AddLengthDelimited(102, "xy");
    u->AddFixed32(103, 0x04030201);
    u->AddLengthDelimited(1, "z");  // field 1 is a varint in Tensor and StepRequest
  };
  for (int trial = 0; trial < 50; ++trial) {
    v1::StepRequest want = RandomStepRequest(r);
    for (auto& e : *want.mutable_entries()) {
      if (e.has_q()) add_unknown(e.mutable_q());
      add_unknown(&e);
    }
    add_unknown(&want);
    const std::string bytes = want.SerializeAsString();
    v1::StepRequest reparsed;
    ASSERT_TRUE(reparsed.ParseFromString(bytes));
    const MessageBytes message = r.Slices(bytes);
    StepRequestView got;
    ASSERT_TRUE(DecodeStepRequest(message, &got).ok());
    ExpectStepRequestEq(message, got, reparsed);
  }
}

TEST(WireMessagesTest, AcceptsUnpackedRepeatedScalarsAndMergesRepeatedTensors) {
  // token_ids 5 as three separate varints; shape of q as two separate varints plus a packed run.
  std::string entry;
  entry += std::string("\x0a\x01s", 3);                         // sequence_id "s"
  entry += std::string("\x28\x07\x28\x08\x28\x09", 6);          // token_ids 7, 8, 9 unpacked
  entry += std::string("\x12\x06\x08\x01\x10\x02\x10\x03", 8);  // q: dtype 1, shape 2, 3 unpacked
  entry += std::string("\x12\x05\x12\x01\x04\x1a\x00", 7);  // q again: shape [4] packed, data ""
  entry += std::string("\x12\x04\x08\x02\x1a\x00", 6);      // q again: dtype 2
  const std::string bytes = std::string("\x12") + char(entry.size()) + entry;
  v1::StepRequest want;
  ASSERT_TRUE(want.ParseFromString(bytes));
  ASSERT_EQ(want.entries(0).q().shape_size(), 3);
  const MessageBytes message = MessageBytes::FromSlices({grpc::Slice(bytes)});
  StepRequestView got;
  ASSERT_TRUE(DecodeStepRequest(message, &got).ok());
  ExpectStepRequestEq(message, got, want);
}

// Every prefix of a valid message: the decoder fails exactly when protobuf fails, and never
// reads out of bounds (the ASan build runs this too).
TEST(WireMessagesTest, TruncatedMessagesFailLikeProtobuf) {
  Random r(5);
  for (int trial = 0; trial < 20; ++trial) {
    const std::string bytes = RandomStepRequest(r).SerializeAsString();
    for (size_t n = 0; n <= bytes.size(); n += 1 + bytes.size() / 300) {
      const std::string prefix = bytes.substr(0, n);
      v1::StepRequest proto;
      const bool proto_ok = proto.ParseFromString(prefix);
      StepRequestView got;
      const absl::Status status = DecodeStepRequest(r.Slices(prefix), &got);
      ASSERT_EQ(status.ok(), proto_ok)
          << "prefix " << n << " of " << bytes.size() << ": " << status;
      if (!status.ok()) {
        EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
        EXPECT_NE(status.message().find("malformed"), std::string::npos) << status;
      }
    }
  }
}

}  // namespace
}  // namespace flashkv::wire
