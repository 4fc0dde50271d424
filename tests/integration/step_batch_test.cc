// Batched Steps (StepRequest.batch): a whole batch as one descriptor per tensor, in a registered
// region or in bytes, checked entry by entry against the float64 reference with the outputs
// poisoned first; and the refusals, each naming its field, changing nothing.

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "host_region.h"
#include "testing/conversation.h"
#include "testing/reference.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

class StepBatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = SmallModelConfig();
    absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    region_ = std::make_unique<HostRegion>(*server_, 1 << 20);
    ASSERT_TRUE(region_->attached());
    reference_ = std::make_unique<ReferenceCache>(config_.model);
    for (const char* id : ids_) {
      grpc::ClientContext context;
      v1::CreateSequenceRequest request;
      request.set_sequence_id(id);
      v1::CreateSequenceResponse response;
      ASSERT_TRUE(server_->kvcache().CreateSequence(&context, request, &response).ok());
    }
  }

  size_t QRow() const {
    return size_t(config_.model.num_q_heads) * config_.model.head_dim *
           DTypeSize(config_.model.dtype);
  }
  size_t KvRow() const {
    return size_t(config_.model.num_kv_heads) * config_.model.head_dim *
           DTypeSize(config_.model.dtype);
  }

  // Random entries for ids_ with `counts` new tokens, and a batch whose q, k and v concatenate
  // theirs: in the region at kQ/kK/kV (in_region) or as bytes.
  v1::StepBatch MakeBatch(const std::vector<int>& counts, bool in_region,
                          std::vector<v1::StepEntry>* entries) {
    v1::StepBatch batch;
    int64_t total = 0;
    std::string q, k, v;
    for (size_t i = 0; i < counts.size(); ++i) {
      entries->push_back(reference_->MakeEntry(ids_[i], counts[i], rng_));
      batch.add_sequence_ids(ids_[i]);
      batch.add_num_tokens(counts[i]);
      q += entries->back().q().data();
      k += entries->back().k().data();
      v += entries->back().v().data();
      total += counts[i];
    }
    for (const auto& [tensor, bytes, heads, offset] :
         {std::tuple{batch.mutable_q(), &q, config_.model.num_q_heads, kQ},
          std::tuple{batch.mutable_k(), &k, config_.model.num_kv_heads, kK},
          std::tuple{batch.mutable_v(), &v, config_.model.num_kv_heads, kV}}) {
      tensor->set_dtype(static_cast<v1::DType>(static_cast<int>(config_.model.dtype)));
      for (int64_t d : {total, int64_t(heads), int64_t(config_.model.head_dim)}) {
        tensor->add_shape(d);
      }
      tensor->set_data(*bytes);
      if (in_region) region_->Place(tensor, offset);
    }
    return batch;
  }

  grpc::Status Run(int layer, const v1::StepBatch& batch, v1::StepResponse* response) {
    v1::StepRequest request;
    request.set_layer(layer);
    *request.mutable_batch() = batch;
    grpc::ClientContext context;
    return server_->kvcache().Step(&context, request, response);
  }

  // A refused batch: `code`, a message containing `field`.
  void ExpectRefused(const v1::StepBatch& batch, grpc::StatusCode code, const std::string& field) {
    v1::StepResponse response;
    const grpc::Status status = Run(0, batch, &response);
    EXPECT_EQ(status.error_code(), code) << status.error_message();
    EXPECT_NE(status.error_message().find(field), std::string::npos) << status.error_message();
  }

  static constexpr size_t kQ = 0, kK = 128 << 10, kV = 256 << 10, kOut = 512 << 10;
  const std::vector<const char*> ids_ = {"a", "b", "c"};
  server::ServerConfig config_;
  std::unique_ptr<TestServer> server_;
  std::unique_ptr<HostRegion> region_;
  std::unique_ptr<ReferenceCache> reference_;
  std::mt19937_64 rng_{7};
};

TEST_F(StepBatchTest, RegionAndBytesBatchesMatchTheReference) {
  // A prefill of uneven lengths, then decodes (num_tokens left empty: one token each), with the
  // batch in the region (output written there) and in bytes (output in batch_out), alternating.
  const std::vector<std::vector<int>> passes = {{5, 1, 3}, {1, 1, 1}, {1, 1, 1}, {2, 1, 1}};
  for (size_t p = 0; p < passes.size(); ++p) {
    for (int layer = 0; layer < config_.model.num_layers; ++layer) {
      const bool in_region = (p + layer) % 2 == 0;
      std::vector<v1::StepEntry> entries;
      v1::StepBatch batch = MakeBatch(passes[p], in_region, &entries);
      if (passes[p] == std::vector<int>{1, 1, 1}) batch.clear_num_tokens();
      int64_t total = 0;
      for (int n : passes[p]) total += n;
      if (in_region) {
        batch.mutable_out()->set_region_id(region_->id());
        batch.mutable_out()->set_offset(kOut);
        std::memset(region_->data() + kOut, 0xff, total * QRow());  // poison: NaN
      }
      v1::StepResponse response;
      const grpc::Status status = Run(layer, batch, &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(response.out_size(), 0);
      ASSERT_TRUE(response.has_batch_out());
      const v1::Tensor& out = response.batch_out();
      ASSERT_EQ(out.shape_size(), 3);
      EXPECT_EQ(out.shape(0), total);
      EXPECT_EQ(out.shape(1), config_.model.num_q_heads);
      const uint8_t* rows;
      if (in_region) {
        EXPECT_TRUE(out.data().empty());
        EXPECT_EQ(out.region().region_id(), region_->id());
        EXPECT_EQ(out.region().offset(), kOut);
        rows = region_->data() + kOut;
      } else {
        EXPECT_FALSE(out.has_region());
        ASSERT_EQ(out.data().size(), total * QRow());
        rows = reinterpret_cast<const uint8_t*>(out.data().data());
      }
      int64_t row = 0;
      for (size_t i = 0; i < entries.size(); ++i) {
        v1::Tensor entry_out;
        entry_out.set_dtype(out.dtype());
        for (int64_t d : {int64_t(passes[p][i]), out.shape(1), out.shape(2)})
          entry_out.add_shape(d);
        entry_out.set_data(rows + row * QRow(), passes[p][i] * QRow());
        EXPECT_EQ(reference_->Apply(layer, entries[i], entry_out), "")
            << "pass " << p << " layer " << layer << " entry " << i;
        row += passes[p][i];
      }
    }
  }
}

TEST_F(StepBatchTest, RefusalsNameTheFieldAndChangeNothing) {
  std::vector<v1::StepEntry> entries;
  const v1::StepBatch good = MakeBatch({1, 1, 1}, true, &entries);
  {
    v1::StepRequest both;
    *both.mutable_batch() = good;
    *both.add_entries() = entries[0];
    grpc::ClientContext context;
    v1::StepResponse response;
    const grpc::Status status = server_->kvcache().Step(&context, both, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("one or the other"), std::string::npos);
  }
  v1::StepBatch b = good;
  b.clear_sequence_ids();
  ExpectRefused(b, grpc::StatusCode::INVALID_ARGUMENT, "batch.sequence_ids is empty");
  b = good;
  b.clear_num_tokens();
  b.add_num_tokens(1);
  ExpectRefused(b, grpc::StatusCode::INVALID_ARGUMENT, "batch.num_tokens has 1 values");
  b = good;
  b.set_num_tokens(1, 0);
  ExpectRefused(b, grpc::StatusCode::INVALID_ARGUMENT, "batch.num_tokens[1] = 0");
  b = good;
  b.set_num_tokens(2, 2);  // 4 rows named, q holds 3
  ExpectRefused(b, grpc::StatusCode::INVALID_ARGUMENT, "batch.q.shape[0] (T) = 3");
  b = good;
  b.set_sequence_ids(2, "a");
  ExpectRefused(b, grpc::StatusCode::INVALID_ARGUMENT, "batch.sequence_ids[2] 'a' repeats [0]");
  b = good;
  b.set_sequence_ids(1, "nobody");
  ExpectRefused(b, grpc::StatusCode::NOT_FOUND, "batch.sequence_ids[1]: sequence 'nobody'");
  b = good;
  b.add_token_ids(1);
  ExpectRefused(b, grpc::StatusCode::INVALID_ARGUMENT, "batch.token_ids has 1 ids");
  b = good;
  b.mutable_k()->set_shape(1, config_.model.num_kv_heads + 1);
  ExpectRefused(b, grpc::StatusCode::INVALID_ARGUMENT, "batch.k.shape[1] (Hkv)");
  b = good;
  b.mutable_v()->set_dtype(v1::DTYPE_BFLOAT16);
  ExpectRefused(b, grpc::StatusCode::INVALID_ARGUMENT, "batch.v.dtype");
  b = good;
  b.mutable_q()->mutable_region()->set_offset((1 << 20) - 8);
  ExpectRefused(b, grpc::StatusCode::INVALID_ARGUMENT, "lies outside region");
  b = good;
  b.mutable_q()->mutable_region()->set_region_id(region_->id() ^ 1);
  ExpectRefused(b, grpc::StatusCode::NOT_FOUND, "batch.q.region");
  b = good;
  b.mutable_out()->set_region_id(region_->id());
  b.mutable_out()->set_offset(kV + 4);  // into v's rows
  ExpectRefused(b, grpc::StatusCode::INVALID_ARGUMENT, "batch.out overlaps batch.v");
  b = good;
  b.mutable_out()->set_region_id(region_->id());
  b.mutable_out()->set_offset((1 << 20) - 16);
  ExpectRefused(b, grpc::StatusCode::INVALID_ARGUMENT, "batch.out");
  {
    // The KV cache's own refusals name the batch's field too: layer 1 may not run ahead of 0.
    v1::StepResponse response;
    const grpc::Status status = Run(1, good, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << status.error_message();
    EXPECT_EQ(status.error_message().rfind("batch.sequence_ids[0]: sequence 'a' layer 1", 0), 0u)
        << status.error_message();
  }
  // Nothing was applied: the good batch runs at layer 0 and matches the reference.
  v1::StepBatch ok = good;
  ok.mutable_out()->set_region_id(region_->id());
  ok.mutable_out()->set_offset(kOut);
  std::memset(region_->data() + kOut, 0xff, 3 * QRow());
  v1::StepResponse response;
  const grpc::Status status = Run(0, ok, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  for (size_t i = 0; i < entries.size(); ++i) {
    v1::Tensor out;
    out.set_dtype(entries[i].q().dtype());
    *out.mutable_shape() = entries[i].q().shape();
    out.set_data(region_->data() + kOut + i * QRow(), QRow());
    EXPECT_EQ(reference_->Apply(0, entries[i], out), "") << "entry " << i;
  }
}

}  // namespace
}  // namespace flashkv::testing
