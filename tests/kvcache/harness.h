#pragma once

// A KvCache under test beside a simple model of what it should hold. Every operation goes
// through the harness, which checks the cache's invariants after it (CheckConsistency, the block
// partition, every sequence's lengths against the model) and can read every K/V row back from the
// pools and compare it, bit for bit, with what the model says was written there.
//
// K/V contents are a function of (tenant, all token ids up to the position, layer, K or V, head,
// dim): what a real model's K/V depends on. A prefix hit, a fork, a copy-on-write or a swap that
// handed a sequence anything but its own prefix's rows shows up as a mismatch.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "flashkv/kvcache/kv_cache.h"
#include "flashkv/kvcache/step.h"
#include "gtest/gtest.h"

#define FLASHKV_EXPECT_OK(expr)                 \
  do {                                          \
    const absl::Status flashkv_s_ = (expr);     \
    EXPECT_TRUE(flashkv_s_.ok()) << flashkv_s_; \
  } while (0)
#define FLASHKV_ASSERT_OK(expr)                 \
  do {                                          \
    const absl::Status flashkv_s_ = (expr);     \
    ASSERT_TRUE(flashkv_s_.ok()) << flashkv_s_; \
  } while (0)

namespace flashkv::kvcache::kvtest {

// Memory where `backend` computes: host memory on the CPU backend, device memory with CUDA (the
// copies go through the flashkv::cuda wrappers, synchronously).
class BackendBuffer {
 public:
  BackendBuffer(Backend backend, size_t bytes);
  ~BackendBuffer();
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;
  void* data() const { return data_; }
  size_t size() const { return bytes_; }
  absl::Status Upload(const void* src, size_t bytes);
  absl::Status Download(void* dst, size_t bytes) const;

 private:
  Backend backend_;
  size_t bytes_;
  void* data_ = nullptr;
};
// Copies `bytes` from `src`, which lives where `backend` computes, to host memory.
absl::Status ReadBackend(Backend backend, const void* src, void* dst, size_t bytes);

// A small CPU cache: `blocks` usable blocks, `swap_blocks` blocks of swap space.
CacheConfig TestConfig(int num_layers, int page_size, int64_t blocks, int64_t swap_blocks = 0,
                       DType dtype = DType::kFloat32, int num_kv_heads = 1, int head_dim = 32);

// Host conversions for building tensors and reading results in any dtype.
float RoundTo(DType dtype, float value);
std::vector<char> ToBytes(DType dtype, const std::vector<float>& values);
std::vector<float> ToFloats(DType dtype, const void* data, size_t count);

// The value the model writes for one element of one token's K or V row.
float KvValue(uint64_t prefix_hash, int layer, int kv, int head, int dim);

struct ModelSeq {
  uint64_t uid = 0;             // seeds the token ids past `fixed`
  std::string tenant;
  std::vector<int64_t> fixed;   // token ids fixed by the prompt or inherited at fork
  std::vector<int> len;         // tokens per layer
};

// One entry of a layer batch in harness terms.
struct Step {
  std::string id;
  int n = 1;
  bool with_ids = false;  // tell the cache the new tokens' ids
};

class Harness {
 public:
  explicit Harness(CacheConfig config);
  // Frees every sequence and checks that the pool is whole again.
  ~Harness();
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  KvCache& cache() { return *cache_; }
  StepWorkspace* workspace() { return workspace_.get(); }
  const CacheConfig& config() const { return config_; }
  absl::Time now() const { return now_; }
  void Advance(absl::Duration d) { now_ += d; }

  int64_t TokenAt(const ModelSeq& seq, int64_t pos) const;
  std::vector<int64_t> Tokens(const std::string& id, int64_t begin, int64_t n) const;
  // A prompt whose token ids depend only on `seed`.
  static std::vector<int64_t> Prompt(uint64_t seed, int length);

  absl::StatusOr<int> Create(const std::string& id, std::vector<int64_t> prompt = {},
                             const std::string& tenant = "");
  absl::Status Fork(const std::string& parent, const std::string& child);
  absl::Status Free(const std::string& id);
  absl::Status SwapOut(const std::string& id);
  std::vector<std::string> Expire(absl::Duration ttl);

  absl::StatusOr<LayerBatch> Prepare(int layer, const std::vector<Step>& steps);
  // A decode pass over every layer (KvCache::PreparePass).
  absl::StatusOr<LayerBatch> PreparePass(const std::vector<Step>& steps);
  // Writes the model's K/V rows for the batch at `layer` (append only, through RunLayerStep): the
  // batch's own layer, or any layer of a pass.
  absl::Status Write(const LayerBatch& batch, int layer, const std::vector<Step>& steps);
  // Advances the model at `layer`, or at every layer for a pass.
  void Commit(LayerBatch&& batch, int layer, const std::vector<Step>& steps);
  void Abort(LayerBatch&& batch);
  // Prepare + Write + Commit.
  absl::Status Append(int layer, const std::vector<Step>& steps);
  // Appends n tokens to one sequence on every layer, layer 0 first.
  absl::Status AppendAllLayers(const std::string& id, int n, bool with_ids = false);

  // The model's packed K or V rows [sum n, Hkv, D] in the cache dtype for a batch.
  std::vector<char> PackedKv(int layer, int kv, const std::vector<Step>& steps) const;

  // The model's K or V rows [0, count) of a sequence at a layer, [count, Hkv, D], as the floats
  // the cache dtype holds.
  std::vector<float> KvFloats(const std::string& id, int layer, int kv, int64_t count) const;

  // Invariants (after every operation).
  void Check();
  // Reads every present row of `id` from the pools and compares it with the model.
  void Verify(const std::string& id);
  void VerifyAll();

  std::map<std::string, ModelSeq> model;

 private:
  std::vector<uint64_t> PrefixHashes(const ModelSeq& seq, int64_t count) const;
  // Prepare's and PreparePass's shared half: `layer` (0 for a pass) picks the new token ids.
  absl::StatusOr<LayerBatch> PrepareWith(
      int layer, const std::vector<Step>& steps,
      const std::function<absl::StatusOr<LayerBatch>(absl::Span<const BatchEntry>)>& prepare);

  CacheConfig config_;
  // The model sequences a pending batch (keyed by its buffer) was prepared for: an id freed and
  // created again meanwhile names another sequence.
  std::map<const void*, std::vector<uint64_t>> pending_uids_;
  std::unique_ptr<StepWorkspace> workspace_;  // CUDA only
  absl::Time now_ = absl::FromUnixSeconds(1'000'000);
  std::unique_ptr<KvCache> cache_;
  uint64_t next_uid_ = 1;
};

}  // namespace flashkv::kvcache::kvtest
