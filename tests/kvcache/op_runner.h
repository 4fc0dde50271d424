#pragma once

// Operation sequences on a Harness: create (prompts drawn from a few shared bases, so the prefix
// cache hits, misses and evicts), layer batches (committed, aborted, or dropped while pending),
// fork (copy-on-write), free, swap out, expire, and bad input. Every operation goes through the
// harness, which checks the cache's invariants and its model after it; the runner also checks
// each status against what the operation allows.
//
// The choices come from a Choices source: a seeded PRNG for the random test
// (random_test.cc), the fuzzer's bytes for the kvcache_ops fuzz target (tests/fuzz), so that both
// run exactly the same operations and checks.

#include <cstddef>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "harness.h"

namespace flashkv::kvcache::kvtest {

// Where the runner's decisions come from.
class Choices {
 public:
  virtual ~Choices() = default;
  // In [0, n); n >= 1.
  virtual int Below(int n) = 0;
  // True with probability (about) p.
  virtual bool Chance(double p) = 0;
};

class RngChoices final : public Choices {
 public:
  explicit RngChoices(uint32_t seed) : rng_(seed) {}
  int Below(int n) override;
  bool Chance(double p) override;

 private:
  std::mt19937 rng_;
};

// What a run went through (the random test checks that it reached the interesting paths).
struct OpCounts {
  int64_t ops = 0;
  int64_t prefix_hit_tokens = 0;
  int64_t exhausted = 0;  // batches refused with RESOURCE_EXHAUSTED
};

class OpRunner {
 public:
  // At most this many live sequences; creating stops there and frees take over.
  static constexpr int kMaxSequences = 12;

  // `harness` and `choices` must outlive the runner.
  OpRunner(Harness* harness, Choices* choices);

  // Advances the harness clock by up to 2 s and runs one operation. Failures are gtest failures
  // (fatal ones end the operation).
  void RunOne();
  const OpCounts& counts() const { return counts_; }

 private:
  std::string AnyId();
  void Touch(const std::string& id) { last_used_[id] = h_->now(); }
  void DoCreate();
  void DoBatch();
  void FinishBatch(LayerBatch batch, int layer, const std::vector<Step>& steps);
  void DoFork();
  void DoFree();
  void DoSwapOut();
  void DoExpire();
  void DoBadInput();

  Harness* h_;
  Choices* choices_;
  std::vector<std::vector<int64_t>> base_prompts_;
  std::map<std::string, absl::Time> last_used_;
  int next_id_ = 0;
  OpCounts counts_;
};

}  // namespace flashkv::kvcache::kvtest
