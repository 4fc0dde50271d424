// Tests of the testbed itself. A comparison that cannot fail would make every sweep worthless, so
// the negative checks here corrupt a correct output in each way a kernel could get it wrong and
// require the comparison to notice, naming the element.

#include "kernels/testbed.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <set>
#include <string>

#include "flashkv/cuda_backend.h"

namespace flashkv::testbed {
namespace {

// Writes a reference into `out` (rounded to its dtype) and `lse`, as a perfect kernel would.
void WriteReference(const ReferenceOutput& r, HostTensor* out, std::vector<float>* lse) {
  for (int64_t o = 0; o < r.outer; ++o) {
    for (int64_t row = 0; row < r.rows; ++row) {
      for (int h = 0; h < r.heads; ++h) {
        for (int d = 0; d < r.dim; ++d) {
          out->Set(o, row, h, d, static_cast<float>(r.out[r.OutIndex(o, row, h, d)]));
        }
      }
    }
  }
  lse->resize(r.lse.size());
  for (size_t i = 0; i < r.lse.size(); ++i) (*lse)[i] = static_cast<float>(r.lse[i]);
}

class ComparisonNegatives : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    AttentionConfig config;
    config.dtype = GetParam();
    config.head_dim = 32;
    config.num_heads_q = 4;
    config.num_heads_kv = 2;
    config.causal = true;
    config.out_layout = Layout::kPadded;
    // Sq > Skv under causal: the first rows of every batch see no key.
    problem_ = FixedProblem::Random(config, 2, 9, 6, seeded_.rng());
    want_ = Reference(problem_);
    naive_ = Reference(problem_, Precision::kNaiveStorage);
    WriteReference(want_, &problem_.out, &problem_.lse);
  }

  ::testing::AssertionResult Check() const {
    return CheckAttentionOutput(problem_.out, &problem_.lse, want_,
                                GetParam() == DType::kFloat32 ? nullptr : &naive_,
                                ToleranceFor(problem_.config));
  }

  SeededRng seeded_;
  FixedProblem problem_;
  ReferenceOutput want_;
  ReferenceOutput naive_;
};

TEST_P(ComparisonNegatives, ReferenceRoundedToTheDtypePasses) { EXPECT_TRUE(Check()); }

TEST_P(ComparisonNegatives, OneCorruptedElementFailsAndIsNamed) {
  // Batch 1, query 7 (which sees keys), head 3, d 17: off by 30 x the tolerance.
  const double want = want_.out[want_.OutIndex(1, 7, 3, 17)];
  const Tolerance tol = ToleranceFor(problem_.config);
  problem_.out.Set(1, 7, 3, 17,
                   static_cast<float>(want + 30 * (tol.atol + tol.rtol * std::fabs(want))));
  const ::testing::AssertionResult result = Check();
  ASSERT_FALSE(result);
  EXPECT_TRUE(HasSubstring(result.message(), "out: 1 of"));
  EXPECT_TRUE(HasSubstring(result.message(), "[batch 1, query 7, head 3, d 17]"));
}

TEST_P(ComparisonNegatives, UnwrittenElementFailsAsPoison) {
  problem_.out.SetBitsAt(problem_.out.Offset(0, 8, 1, 31), PoisonBits(GetParam()));
  const ::testing::AssertionResult result = Check();
  ASSERT_FALSE(result);
  EXPECT_TRUE(HasSubstring(result.message(), "POISON (never written)"));
  EXPECT_TRUE(HasSubstring(result.message(), "[batch 0, query 8, head 1, d 31]"));
}

TEST_P(ComparisonNegatives, NaNOutputFails) {
  problem_.out.Set(0, 5, 0, 0, std::numeric_limits<float>::quiet_NaN());
  EXPECT_FALSE(Check());
}

TEST_P(ComparisonNegatives, WriteIntoPaddingFails) {
  // The gap after head 0 of batch 0, query 0.
  problem_.out.SetAt(problem_.out.Offset(0, 0, 0, 32), 0.0f);
  const ::testing::AssertionResult result = Check();
  ASSERT_FALSE(result);
  EXPECT_TRUE(HasSubstring(result.message(), "outside the written region"));
}

TEST_P(ComparisonNegatives, RowThatSeesNoKeyMustBeExactlyZero) {
  // Query 0 of 9 over 6 keys, causal: sees nothing. A tiny value is still wrong.
  ASSERT_TRUE(std::isinf(want_.lse[want_.LseIndex(0, 0, 2)]));
  problem_.out.Set(0, 0, 2, 4, 1e-3f);
  const ::testing::AssertionResult result = Check();
  ASSERT_FALSE(result);
  EXPECT_TRUE(HasSubstring(result.message(), "[batch 0, query 0, head 2, d 4]"));
}

TEST_P(ComparisonNegatives, CorruptedLseFails) {
  problem_.lse[want_.LseIndex(1, 6, 0)] += 0.05f;
  const ::testing::AssertionResult result = Check();
  ASSERT_FALSE(result);
  EXPECT_TRUE(HasSubstring(result.message(), "lse: 1 of"));
  EXPECT_TRUE(HasSubstring(result.message(), "[batch 1, query 6, head 0]"));
}

TEST_P(ComparisonNegatives, UnwrittenLseFails) {
  problem_.lse[want_.LseIndex(0, 7, 1)] = PoisonedFloats(1)[0];
  const ::testing::AssertionResult result = Check();
  ASSERT_FALSE(result);
  EXPECT_TRUE(HasSubstring(result.message(), "POISON (never written)"));
}

TEST_P(ComparisonNegatives, EmptyRowLseMustBeMinusInfinity) {
  problem_.lse[want_.LseIndex(1, 0, 3)] = -1e30f;
  EXPECT_FALSE(Check());
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, ComparisonNegatives,
                         ::testing::Values(DType::kFloat16, DType::kBFloat16, DType::kFloat32),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

// The naive bound catches an error that every per-element tolerance lets through.
TEST(ComparisonNaiveBound, CatchesErrorWithinElementTolerance) {
  HostTensor out(DType::kFloat32, {1, 1, 1, 4}, Layout::kRowMajor);
  ReferenceOutput want;
  want.outer = want.rows = want.heads = 1;
  want.dim = 4;
  want.out = {0.5, -0.25, 0.125, 1.0};
  want.lse = {1.0};
  ReferenceOutput naive = want;
  for (double& x : naive.out) x += 1e-4;
  Tolerance tol;
  tol.atol = tol.rtol = 1e-3;
  tol.lse_atol = tol.lse_rtol = 1e-3;
  tol.use_naive_bound = true;
  tol.naive_factor = 2;
  tol.naive_slack = 1e-4;
  for (int d = 0; d < 4; ++d) out.Set(0, 0, 0, d, static_cast<float>(want.out[d] + 2.5e-4));
  EXPECT_TRUE(CheckAttentionOutput(out, nullptr, want, &naive, tol));
  out.Set(0, 0, 0, 2, static_cast<float>(want.out[2] + 8e-4));  // within 1e-3, above 3e-4
  const ::testing::AssertionResult result = CheckAttentionOutput(out, nullptr, want, &naive, tol);
  ASSERT_FALSE(result);
  EXPECT_TRUE(HasSubstring(result.message(), "naive same-dtype"));
}

TEST(Bitwise, NamesTheFirstDifference) {
  HostTensor a(DType::kBFloat16, {2, 3, 2, 32}, Layout::kRowMajor);
  SeededRng seeded;
  a.FillNormal(seeded.rng());
  HostTensor b(DType::kBFloat16, {2, 3, 2, 32}, Layout::kPadded);
  for (int o = 0; o < 2; ++o) {
    for (int r = 0; r < 3; ++r) {
      for (int h = 0; h < 2; ++h) {
        for (int d = 0; d < 32; ++d)
          b.SetBitsAt(b.Offset(o, r, h, d), a.BitsAt(a.Offset(o, r, h, d)));
      }
    }
  }
  EXPECT_TRUE(BitwiseEqual(a, b));
  b.SetBitsAt(b.Offset(1, 2, 0, 9), b.BitsAt(b.Offset(1, 2, 0, 9)) ^ 1u);  // one ulp
  const ::testing::AssertionResult result = BitwiseEqual(a, b);
  ASSERT_FALSE(result);
  EXPECT_TRUE(HasSubstring(result.message(), "1 of 384"));
  EXPECT_TRUE(HasSubstring(result.message(), "[batch 1, query 2, head 0, d 9]"));
}

TEST(HostTensors, EveryElementStartsPoisonedAndRandomFillsHaveNoZeros) {
  SeededRng seeded;
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    for (Layout layout : {Layout::kRowMajor, Layout::kHeadMajor, Layout::kPadded}) {
      HostTensor t(dtype, {3, 5, 4, 32}, layout);
      for (int64_t i = 0; i < t.capacity(); ++i) ASSERT_TRUE(t.IsPoisonAt(i));
      t.FillNormal(seeded.rng());
      const std::vector<bool> logical = t.LogicalMask();
      int64_t count = 0;
      for (int64_t i = 0; i < t.capacity(); ++i) {
        if (!logical[i]) {
          ASSERT_TRUE(t.IsPoisonAt(i)) << "gaps keep their poison";
          continue;
        }
        ++count;
        ASSERT_NE(t.GetAt(i), 0.0);
        ASSERT_TRUE(std::isfinite(t.GetAt(i)));
      }
      EXPECT_EQ(count, t.shape().Elements()) << LayoutName(layout) << ": no two elements alias";
    }
  }
}

TEST(HostTensors, PoisonIsNaNInEveryDtype) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    HostTensor t(dtype, {1, 1, 1, 1}, Layout::kRowMajor);
    EXPECT_TRUE(std::isnan(t.GetAt(0))) << DTypeName(dtype);
  }
}

TEST(Builders, CuSeqlensAndRowLabels) {
  const std::vector<int32_t> cu = CuSeqlens({3, 0, 2});
  EXPECT_EQ(cu, (std::vector<int32_t>{0, 3, 3, 5}));
  const RowLabels labels{&cu};
  EXPECT_EQ(labels.Label(0, 0), "token 0 (seq 0, query 0)");
  EXPECT_EQ(labels.Label(0, 3), "token 3 (seq 2, query 0)");  // zero-length seq 1 skipped
  EXPECT_EQ(labels.Label(0, 4), "token 4 (seq 2, query 1)");
  EXPECT_EQ(MaxLength({3, 0, 2}), 3);
  EXPECT_EQ(MaxLength({}), 0);
}

TEST(Builders, ShuffledBlockTableIsAPermutationWithUnusedTail) {
  SeededRng seeded;
  const std::vector<int> lengths = {33, 0, 16, 17, 70};
  const int page = 16;
  const int stride = 6;
  const std::vector<int32_t> table =
      ShuffledBlockTable(seeded.rng(), lengths, page, stride, /*num_blocks=*/20);
  std::set<int32_t> used;
  std::vector<int32_t> in_order;
  for (size_t b = 0; b < lengths.size(); ++b) {
    const int pages = BlocksNeeded(lengths[b], page);
    for (int i = 0; i < stride; ++i) {
      const int32_t id = table[b * stride + i];
      if (i >= pages) {
        EXPECT_EQ(id, kUnusedBlockId);
        continue;
      }
      EXPECT_GE(id, 0);
      EXPECT_LT(id, 20);
      EXPECT_TRUE(used.insert(id).second) << "block " << id << " given twice";
      in_order.push_back(id);
    }
  }
  EXPECT_EQ(used.size(), 3u + 0 + 1 + 2 + 5);
  // Eleven blocks out of twenty in increasing consecutive order would mean no shuffle
  // (probability of a false alarm ~1e-12).
  bool consecutive = true;
  for (size_t i = 1; i < in_order.size(); ++i) consecutive &= in_order[i] == in_order[i - 1] + 1;
  EXPECT_FALSE(consecutive);
}

TEST(Builders, SharedPrefixPagesMapToSequenceZerosBlocks) {
  SeededRng seeded;
  const std::vector<int> lengths = {40, 35, 10, 50};
  const int stride = 4;
  const std::vector<int32_t> table =
      ShuffledBlockTable(seeded.rng(), lengths, 16, stride, 20, /*shared_prefix_pages=*/2);
  // Sequence 1 has 2 full pages and shares both; sequence 2 has none full; sequence 3 shares 2.
  EXPECT_EQ(table[1 * stride + 0], table[0]);
  EXPECT_EQ(table[1 * stride + 1], table[1]);
  EXPECT_NE(table[1 * stride + 2], table[2]);
  EXPECT_NE(table[2 * stride + 0], table[0]);
  EXPECT_EQ(table[3 * stride + 1], table[1]);
  EXPECT_NE(table[3 * stride + 2], table[2]);
}

TEST(Builders, ScatteredPoolHoldsEveryTokenAndPoisonElsewhere) {
  SeededRng seeded;
  AttentionConfig config;
  config.dtype = DType::kBFloat16;
  config.head_dim = 32;
  config.num_heads_q = 2;
  config.num_heads_kv = 2;
  config.kv_layout = Layout::kPadded;
  PagedCacheOptions cache;
  cache.page_size = 19;
  const PagedProblem p = PagedProblem::Random(config, {1, 1, 0}, {40, 0, 19}, cache, seeded.rng());
  std::vector<bool> written(static_cast<size_t>(p.k_cache.capacity()), false);
  for (int b = 0; b < p.num_seqs(); ++b) {
    for (int t = 0; t < p.cu_seqlens_kv[b + 1] - p.cu_seqlens_kv[b]; ++t) {
      const int32_t block = p.block_table[b * p.block_table_stride + t / 19];
      for (int h = 0; h < 2; ++h) {
        for (int d = 0; d < 32; ++d) {
          const int64_t at = p.k_cache.Offset(block, t % 19, h, d);
          written[at] = true;
          ASSERT_EQ(p.k_cache.BitsAt(at), p.k.BitsAt(p.k.Offset(0, p.cu_seqlens_kv[b] + t, h, d)));
          ASSERT_EQ(p.v_cache.BitsAt(at), p.v.BitsAt(p.v.Offset(0, p.cu_seqlens_kv[b] + t, h, d)));
        }
      }
    }
  }
  EXPECT_TRUE(UntouchedIsPoison(p.k_cache, written));
  EXPECT_TRUE(UntouchedIsPoison(p.v_cache, written));
}

TEST(Seeds, EveryTestGetsAFreshSeed) {
  if (std::getenv("FLASHKV_TEST_SEED") != nullptr) GTEST_SKIP() << "seed forced";
  SeededRng a;
  SeededRng b;
  EXPECT_NE(a.seed(), b.seed());
}

TEST(Backends, CudaIsUnavailableWithoutADevice) {
  if (cuda::DeviceCount() > 0) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_FALSE(UnavailableReason(Backend::kCuda, DType::kFloat16, 128).empty());
  EXPECT_TRUE(BackendUnavailableReason(Backend::kCpu).empty());
}

class BufferRoundTrip : public ::testing::TestWithParam<Backend> {};

TEST_P(BufferRoundTrip, UploadThenDownloadIsExact) {
  FLASHKV_SKIP_UNLESS_AVAILABLE(GetParam());
  std::vector<int32_t> host = {7, -1, 3, 1 << 30};
  BackendBuffer buffer(GetParam());
  FLASHKV_ASSERT_OK(UploadVector(host, &buffer));
  std::vector<int32_t> back(host.size(), 0);
  FLASHKV_ASSERT_OK(buffer.Download(back.data(), back.size() * sizeof(int32_t)));
  EXPECT_EQ(back, host);
  EXPECT_FALSE(buffer.Download(back.data(), 1024).ok()) << "reading past the buffer is refused";
}

INSTANTIATE_TEST_SUITE_P(Cpu, BufferRoundTrip, ::testing::Values(Backend::kCpu));
INSTANTIATE_TEST_SUITE_P(Cuda, BufferRoundTrip, ::testing::Values(Backend::kCuda));

}  // namespace
}  // namespace flashkv::testbed
