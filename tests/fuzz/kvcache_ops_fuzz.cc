// Fuzz target: the KV cache's operation sequences. The input's first bytes choose a small CPU
// cache (page size, blocks, swap space, layers); the rest drive the kvcache tests' OpRunner
// (create with prompts that hit the prefix cache, layer batches committed / aborted / dropped,
// fork, free, swap out, expire, bad input) against the Harness model. After every operation:
// CheckConsistency (free + cached + used == total, ref counts equal table references, swap slots
// partition, prefix index consistent), the model's lengths and tenants; every resident row is
// compared bit for bit with what the model wrote at intervals and at the end; and the harness's
// destructor frees everything and checks that the pool is whole. ASan catches any use of a freed
// block's memory; any failed check aborts (gtest's throw_on_failure).

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>

#include "byte_reader.h"
#include "kvcache/harness.h"
#include "kvcache/op_runner.h"

namespace {

using flashkv::fuzz::ByteReader;
using flashkv::kvcache::CacheConfig;
using flashkv::kvcache::kvtest::Choices;
using flashkv::kvcache::kvtest::Harness;
using flashkv::kvcache::kvtest::OpRunner;
using flashkv::kvcache::kvtest::TestConfig;

// Enough operations for deep states, few enough that one input runs in milliseconds.
constexpr int kMaxOps = 400;
constexpr int kVerifyEvery = 16;

class ByteChoices final : public Choices {
 public:
  explicit ByteChoices(ByteReader* in) : in_(in) {}
  int Below(int n) override { return in_->Below(n); }
  bool Chance(double p) override { return in_->Chance(p); }

 private:
  ByteReader* in_;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // A failed EXPECT/ASSERT in the harness throws; uncaught, it aborts, which the fuzzer reports.
  GTEST_FLAG_SET(throw_on_failure, true);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteReader in(data, size);
  ByteChoices choices(&in);
  static constexpr int kPageSizes[] = {1, 2, 3, 4, 5, 16};
  const int page_size = kPageSizes[in.Below(6)];
  const int layers = 1 + in.Below(3);
  const int blocks = 4 + in.Below(60);
  const int swap_blocks = in.Below(3) == 0 ? 0 : in.Below(48);
  CacheConfig config = TestConfig(layers, page_size, blocks, swap_blocks);
  config.max_context = 64 + in.Below(97);  // room for the runner's 64-token prompts
  Harness harness(config);
  OpRunner runner(&harness, &choices);
  for (int op = 0; op < kMaxOps && !in.exhausted(); ++op) {
    runner.RunOne();
    if (op % kVerifyEvery == kVerifyEvery - 1) harness.VerifyAll();
  }
  harness.VerifyAll();
  return 0;
}
