// AppendKv on every backend: it writes exactly the mapped slots, bit for bit, and nothing else
// (every other element of both pools, gaps of padded layouts included, keeps its poison); negative
// slots are skipped; and attention over a cache filled by AppendKv matches the reference.

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/sweep.h"
#include "kernels/testbed.h"

namespace flashkv::testbed {
namespace {

using AppendParam = std::tuple<Backend, DType, int /*page size*/>;

std::string AppendName(const ::testing::TestParamInfo<AppendParam>& info) {
  const auto& [backend, dtype, page] = info.param;
  (void)backend;
  return std::string(DTypeName(dtype)) + "_page" + std::to_string(page);
}

class AppendKvWrites : public ::testing::TestWithParam<AppendParam> {
 protected:
  // Checks that the pools hold row i of k/v at slot_mapping[i] (for slots >= 0) and poison
  // everywhere else.
  static void ExpectExactlyMappedSlots(const HostTensor& k, const HostTensor& v,
                                       const std::vector<int64_t>& slots, const HostTensor& k_cache,
                                       const HostTensor& v_cache) {
    const int64_t page = k_cache.shape().rows;
    std::vector<bool> written(static_cast<size_t>(k_cache.capacity()), false);
    int64_t mismatches = 0;
    for (size_t i = 0; i < slots.size(); ++i) {
      if (slots[i] < 0) continue;
      for (int64_t h = 0; h < k.shape().heads; ++h) {
        for (int64_t d = 0; d < k.shape().dim; ++d) {
          const int64_t at = k_cache.Offset(slots[i] / page, slots[i] % page, h, d);
          written[at] = true;
          const int64_t k_from = k.Offset(0, static_cast<int64_t>(i), h, d);
          const int64_t v_from = v.Offset(0, static_cast<int64_t>(i), h, d);
          if (k_cache.BitsAt(at) != k.BitsAt(k_from) || v_cache.BitsAt(at) != v.BitsAt(v_from)) {
            if (mismatches++ == 0) {
              ADD_FAILURE() << "token " << i << " (slot " << slots[i] << "), head " << h << ", d "
                            << d << ": cache holds " << k_cache.GetAt(at) << " / "
                            << v_cache.GetAt(at) << ", want " << k.GetAt(k_from) << " / "
                            << v.GetAt(v_from);
            }
          }
        }
      }
    }
    EXPECT_EQ(mismatches, 0);
    EXPECT_TRUE(UntouchedIsPoison(k_cache, written)) << "k_cache";
    EXPECT_TRUE(UntouchedIsPoison(v_cache, written)) << "v_cache";
  }
};

TEST_P(AppendKvWrites, ExactlyTheMappedSlots) {
  const auto& [backend, dtype, page] = GetParam();
  const int head_dim = kSupportedHeadDims[page % 6];
  FLASHKV_SKIP_UNLESS_AVAILABLE(backend);
  SeededRng seeded;
  const int num_heads = 3;
  const int num_blocks = 7;
  const int64_t num_slots = int64_t{num_blocks} * page;
  for (Layout pool_layout : {Layout::kRowMajor, Layout::kHeadMajor, Layout::kPadded}) {
    for (Layout input_layout : {Layout::kRowMajor, Layout::kPadded}) {
      SCOPED_TRACE(std::string("pool ") + LayoutName(pool_layout) + ", k input " +
                   LayoutName(input_layout));
      // Distinct random slots; every fourth token is padding (slot -1, or another negative).
      std::vector<int64_t> all(static_cast<size_t>(num_slots));
      std::iota(all.begin(), all.end(), int64_t{0});
      std::shuffle(all.begin(), all.end(), seeded.rng());
      const int64_t tokens = std::min<int64_t>(num_slots, 29);
      std::vector<int64_t> slots(all.begin(), all.begin() + tokens);
      for (size_t i = 0; i < slots.size(); i += 4) slots[i] = i % 8 == 0 ? -1 : -int64_t{7};
      HostTensor k(dtype, {1, tokens, num_heads, head_dim}, input_layout);
      // V in another layout than K: its strides are its own.
      const Layout v_layout =
          input_layout == Layout::kRowMajor ? Layout::kHeadMajor : Layout::kRowMajor;
      HostTensor v(dtype, {1, tokens, num_heads, head_dim}, v_layout);
      k.FillNormal(seeded.rng());
      v.FillNormal(seeded.rng());
      HostTensor k_cache(dtype, {num_blocks, page, num_heads, head_dim}, pool_layout);
      HostTensor v_cache(dtype, {num_blocks, page, num_heads, head_dim}, pool_layout);
      FLASHKV_ASSERT_OK(RunAppendKvProblem(backend, k, v, slots, &k_cache, &v_cache));
      ExpectExactlyMappedSlots(k, v, slots, k_cache, v_cache);
    }
  }
}

TEST_P(AppendKvWrites, AllSlotsNegativeWritesNothing) {
  const auto& [backend, dtype, page] = GetParam();
  FLASHKV_SKIP_UNLESS_AVAILABLE(backend);
  SeededRng seeded;
  HostTensor k(dtype, {1, 5, 2, 64}, Layout::kRowMajor);
  HostTensor v(dtype, {1, 5, 2, 64}, Layout::kRowMajor);
  k.FillNormal(seeded.rng());
  v.FillNormal(seeded.rng());
  HostTensor k_cache(dtype, {3, page, 2, 64}, Layout::kHeadMajor);
  HostTensor v_cache(dtype, {3, page, 2, 64}, Layout::kHeadMajor);
  FLASHKV_ASSERT_OK(RunAppendKvProblem(backend, k, v, {-1, -1, -2, -100, -1}, &k_cache, &v_cache));
  const std::vector<bool> none(static_cast<size_t>(k_cache.capacity()), false);
  EXPECT_TRUE(UntouchedIsPoison(k_cache, none));
  EXPECT_TRUE(UntouchedIsPoison(v_cache, none));
}

INSTANTIATE_TEST_SUITE_P(Cpu, AppendKvWrites,
                         ::testing::Combine(::testing::Values(Backend::kCpu),
                                            ::testing::ValuesIn(kAllDTypes),
                                            ::testing::Values(1, 16, 19)),
                         AppendName);
INSTANTIATE_TEST_SUITE_P(Cuda, AppendKvWrites,
                         ::testing::Combine(::testing::Values(Backend::kCuda),
                                            ::testing::ValuesIn(kAllDTypes),
                                            ::testing::Values(1, 16, 19)),
                         AppendName);

class AppendKvEdges : public ::testing::TestWithParam<Backend> {};

TEST_P(AppendKvEdges, ZeroTokensAcceptNullPointers) {
  FLASHKV_SKIP_UNLESS_AVAILABLE(GetParam());
  KvAppendArgs a;
  a.dtype = DType::kFloat16;
  a.num_tokens = 0;
  a.num_heads_kv = 2;
  a.head_dim = 128;
  a.num_blocks = 4;
  a.page_size = 16;
  FLASHKV_EXPECT_OK(RunAppendKv(GetParam(), a));
}

// The path the KV cache takes: a prefill's K/V appended into pages of a shuffled block table, then
// paged attention over them.
TEST_P(AppendKvEdges, AttentionOverAppendedCacheMatchesReference) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kFloat16, 64);
  SeededRng seeded;
  AttentionConfig config;
  config.dtype = DType::kFloat16;
  config.head_dim = 64;
  config.num_heads_q = 8;
  config.num_heads_kv = 2;
  config.causal = true;
  PagedCacheOptions cache;
  cache.page_size = 19;
  PagedProblem p = PagedProblem::Random(config, {12, 1, 40}, {50, 20, 40}, cache, seeded.rng());
  p.k_cache.Poison();
  p.v_cache.Poison();
  FLASHKV_ASSERT_OK(
      RunAppendKvProblem(GetParam(), p.k, p.v, SlotMapping(p), &p.k_cache, &p.v_cache));
  EXPECT_TRUE(RunAndCheck(GetParam(), &p));
}

INSTANTIATE_TEST_SUITE_P(Cpu, AppendKvEdges, ::testing::Values(Backend::kCpu));
INSTANTIATE_TEST_SUITE_P(Cuda, AppendKvEdges, ::testing::Values(Backend::kCuda));

}  // namespace
}  // namespace flashkv::testbed
