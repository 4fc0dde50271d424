// Self-tests of the float64 reference: hand-computed cases, the causal mask on small examples, an
// independent softmax formula on random inputs (GQA and a custom scale included), agreement of the
// fixed, varlen and paged readers, and the naive same-dtype reference's error being what it should.

#include "kernels/reference_attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/testbed.h"

namespace flashkv::testbed {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Reads a dense [tokens, heads, dim] array.
ElementReader Dense(const std::vector<double>& data, int heads, int dim) {
  return [&data, heads, dim](int64_t t, int h, int d) { return data[(t * heads + h) * dim + d]; };
}

ReferenceProblem OneSequence(int hq, int hkv, int dim, double scale, bool causal, int64_t sq,
                             int64_t skv, const std::vector<double>& q,
                             const std::vector<double>& k, const std::vector<double>& v) {
  ReferenceProblem p;
  p.num_heads_q = hq;
  p.num_heads_kv = hkv;
  p.head_dim = dim;
  p.softmax_scale = scale;
  p.causal = causal;
  p.out_outer = 1;
  p.out_rows = sq;
  SequenceView s;
  s.seqlen_q = sq;
  s.seqlen_kv = skv;
  s.q = Dense(q, hq, dim);
  s.k = Dense(k, hkv, dim);
  s.v = Dense(v, hkv, dim);
  p.sequences.push_back(s);
  return p;
}

TEST(ReferenceAttention, TwoKeysByHand) {
  // q = (1, 0); keys (1, 0) and (0, 1) give scores 1 and 0; softmax weights e/(e+1), 1/(e+1).
  const std::vector<double> q = {1, 0};
  const std::vector<double> k = {1, 0, 0, 1};
  const std::vector<double> v = {1, 2, 3, 4};
  const ReferenceOutput r =
      ComputeReference(OneSequence(1, 1, 2, 1.0, false, 1, 2, q, k, v), Precision::kFloat64);
  const double e = std::exp(1.0);
  const double p0 = e / (e + 1);
  const double p1 = 1 / (e + 1);
  EXPECT_NEAR(r.out[0], p0 * 1 + p1 * 3, 1e-15);
  EXPECT_NEAR(r.out[1], p0 * 2 + p1 * 4, 1e-15);
  EXPECT_NEAR(r.lse[0], std::log(e + 1), 1e-15);
}

TEST(ReferenceAttention, ScaleMultipliesScores) {
  // Scale 2 turns scores (1, 0) into (2, 0).
  const std::vector<double> q = {1, 0};
  const std::vector<double> k = {1, 0, 0, 1};
  const std::vector<double> v = {1, 0, 0, 1};
  const ReferenceOutput r =
      ComputeReference(OneSequence(1, 1, 2, 2.0, false, 1, 2, q, k, v), Precision::kFloat64);
  const double e2 = std::exp(2.0);
  EXPECT_NEAR(r.out[0], e2 / (e2 + 1), 1e-15);
  EXPECT_NEAR(r.out[1], 1 / (e2 + 1), 1e-15);
  EXPECT_NEAR(r.lse[0], std::log(e2 + 1), 1e-15);
}

TEST(ReferenceAttention, VisibleKeysBottomRight) {
  // Sq = 2, Skv = 3: query 0 sees keys 0..1, query 1 sees 0..2.
  EXPECT_EQ(VisibleKeys(0, 2, 3, true), 2);
  EXPECT_EQ(VisibleKeys(1, 2, 3, true), 3);
  // Sq = 3, Skv = 2: query 0 sees nothing, query 1 key 0, query 2 keys 0..1.
  EXPECT_EQ(VisibleKeys(0, 3, 2, true), 0);
  EXPECT_EQ(VisibleKeys(1, 3, 2, true), 1);
  EXPECT_EQ(VisibleKeys(2, 3, 2, true), 2);
  // A decode sees its whole context; no key means nothing to see.
  EXPECT_EQ(VisibleKeys(0, 1, 100, true), 100);
  EXPECT_EQ(VisibleKeys(0, 4, 0, true), 0);
  EXPECT_EQ(VisibleKeys(3, 4, 0, false), 0);
  // Not causal: everything.
  EXPECT_EQ(VisibleKeys(0, 3, 2, false), 2);
}

TEST(ReferenceAttention, CausalRowsByHand) {
  // Sq = 3 queries over Skv = 2 keys, causal, D = 1: row 0 sees no key, row 1 only key 0 (so its
  // output is v0 exactly and its LSE the single score), row 2 both keys.
  const std::vector<double> q = {0.5, -1.0, 2.0};
  const std::vector<double> k = {1.5, -0.25};
  const std::vector<double> v = {3.0, 7.0};
  const ReferenceOutput r =
      ComputeReference(OneSequence(1, 1, 1, 1.0, true, 3, 2, q, k, v), Precision::kFloat64);
  EXPECT_EQ(r.out[0], 0.0);
  EXPECT_EQ(r.lse[0], -kInf);
  EXPECT_DOUBLE_EQ(r.out[1], 3.0);
  EXPECT_DOUBLE_EQ(r.lse[1], -1.0 * 1.5);
  const double s0 = 2.0 * 1.5;
  const double s1 = 2.0 * -0.25;
  const double w0 = std::exp(s0) / (std::exp(s0) + std::exp(s1));
  EXPECT_NEAR(r.out[2], w0 * 3.0 + (1 - w0) * 7.0, 1e-14);
  EXPECT_NEAR(r.lse[2], std::log(std::exp(s0) + std::exp(s1)), 1e-14);
}

TEST(ReferenceAttention, NoKeysGivesZeroAndMinusInfinity) {
  const std::vector<double> q = {1, 2, 3, 4};
  const std::vector<double> none;
  const ReferenceOutput r =
      ComputeReference(OneSequence(2, 1, 2, 1.0, false, 1, 0, q, none, none), Precision::kFloat64);
  for (double o : r.out) EXPECT_EQ(o, 0.0);
  for (double l : r.lse) EXPECT_EQ(l, -kInf);
}

// softmax(scale * q k^T + mask) v with the whole score matrix formed first, exp without the max
// shift, and the KV head of query head h computed as h * Hkv / Hq: a different route to the same
// numbers.
void DirectFormula(int hq, int hkv, int dim, double scale, bool causal, int64_t sq, int64_t skv,
                   const std::vector<double>& q, const std::vector<double>& k,
                   const std::vector<double>& v, std::vector<double>* out,
                   std::vector<double>* lse) {
  out->assign(static_cast<size_t>(sq * hq * dim), 0.0);
  lse->assign(static_cast<size_t>(hq * sq), -kInf);
  for (int h = 0; h < hq; ++h) {
    const int g = h * hkv / hq;
    for (int64_t i = 0; i < sq; ++i) {
      std::vector<double> e(static_cast<size_t>(skv), 0.0);
      double total = 0;
      for (int64_t j = 0; j < skv; ++j) {
        if (causal && j > i + skv - sq) continue;
        double s = 0;
        for (int d = 0; d < dim; ++d) s += q[(i * hq + h) * dim + d] * k[(j * hkv + g) * dim + d];
        e[j] = std::exp(scale * s);
        total += e[j];
      }
      if (total == 0) continue;
      (*lse)[h * sq + i] = std::log(total);
      for (int d = 0; d < dim; ++d) {
        double o = 0;
        for (int64_t j = 0; j < skv; ++j) o += e[j] / total * v[(j * hkv + g) * dim + d];
        (*out)[(i * hq + h) * dim + d] = o;
      }
    }
  }
}

struct SmallCase {
  int hq, hkv, dim;
  int64_t sq, skv;
  double scale;
  bool causal;
};

void PrintTo(const SmallCase& c, std::ostream* os) {
  *os << "Hq" << c.hq << "/Hkv" << c.hkv << " D" << c.dim << " Sq" << c.sq << " Skv" << c.skv
      << " scale " << c.scale << (c.causal ? " causal" : "");
}

class ReferenceVsDirectFormula : public ::testing::TestWithParam<SmallCase> {};

TEST_P(ReferenceVsDirectFormula, Agrees) {
  const SmallCase c = GetParam();
  SeededRng seeded;
  std::normal_distribution<double> normal;
  auto random = [&](int64_t n) {
    std::vector<double> x(static_cast<size_t>(n));
    for (double& e : x) e = normal(seeded.rng());
    return x;
  };
  const std::vector<double> q = random(c.sq * c.hq * c.dim);
  const std::vector<double> k = random(c.skv * c.hkv * c.dim);
  const std::vector<double> v = random(c.skv * c.hkv * c.dim);
  const ReferenceOutput r =
      ComputeReference(OneSequence(c.hq, c.hkv, c.dim, c.scale, c.causal, c.sq, c.skv, q, k, v),
                       Precision::kFloat64);
  std::vector<double> out, lse;
  DirectFormula(c.hq, c.hkv, c.dim, c.scale, c.causal, c.sq, c.skv, q, k, v, &out, &lse);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(r.out[i], out[i], 1e-12) << "out " << i;
  // The reference stores LSE [heads, rows] (outer 1), as DirectFormula does.
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(lse[i])) {
      ASSERT_EQ(r.lse[i], lse[i]) << "lse " << i;
    } else {
      ASSERT_NEAR(r.lse[i], lse[i], 1e-12) << "lse " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Small, ReferenceVsDirectFormula,
    ::testing::Values(SmallCase{1, 1, 4, 1, 1, 0.5, false}, SmallCase{2, 2, 8, 5, 7, 0.35, false},
                      SmallCase{4, 2, 8, 5, 7, 0.35, true}, SmallCase{4, 1, 16, 9, 4, 0.25, true},
                      SmallCase{8, 2, 4, 1, 13, 0.5, true}, SmallCase{6, 3, 3, 6, 6, 0.7, true}));

// The three API shapes read the same logical data the same way, so their references are equal.
TEST(ReferenceReaders, FixedEqualsVarlenOfTheSameBatch) {
  SeededRng seeded;
  AttentionConfig config;
  config.dtype = DType::kBFloat16;
  config.head_dim = 32;
  config.num_heads_q = 4;
  config.num_heads_kv = 2;
  config.causal = true;
  config.q_layout = Layout::kPadded;
  config.kv_layout = Layout::kHeadMajor;
  const FixedProblem fixed = FixedProblem::Random(config, 3, 5, 9, seeded.rng());
  const VarlenProblem varlen = VarlenProblem::FromFixed(fixed);
  const ReferenceOutput a = Reference(fixed);
  const ReferenceOutput b = Reference(varlen);
  ASSERT_EQ(a.out.size(), b.out.size());
  for (size_t i = 0; i < a.out.size(); ++i) ASSERT_EQ(a.out[i], b.out[i]) << i;
  for (int bi = 0; bi < 3; ++bi) {
    for (int h = 0; h < 4; ++h) {
      for (int i = 0; i < 5; ++i)
        ASSERT_EQ(a.lse[a.LseIndex(bi, i, h)], b.lse[b.LseIndex(0, bi * 5 + i, h)]);
    }
  }
}

TEST(ReferenceReaders, PagedThroughShuffledTableEqualsVarlen) {
  SeededRng seeded;
  AttentionConfig config;
  config.dtype = DType::kFloat16;
  config.head_dim = 64;
  config.num_heads_q = 6;
  config.num_heads_kv = 3;
  config.causal = true;
  config.kv_layout = Layout::kPadded;
  PagedCacheOptions cache;
  cache.page_size = 3;
  cache.shared_prefix_pages = 1;
  const PagedProblem paged =
      PagedProblem::Random(config, {1, 4, 0, 2}, {7, 9, 0, 3}, cache, seeded.rng());
  const ReferenceOutput a = Reference(paged);
  const ReferenceOutput b = Reference(paged.AsVarlen());
  ASSERT_EQ(a.out.size(), b.out.size());
  for (size_t i = 0; i < a.out.size(); ++i) ASSERT_EQ(a.out[i], b.out[i]) << i;
  for (size_t i = 0; i < a.lse.size(); ++i) ASSERT_EQ(a.lse[i], b.lse[i]) << i;
}

// The naive same-dtype reference is the yardstick for fp16/bf16: it must be off from float64 (or
// the bound is meaningless) but only by rounding, and exact to fp32 accuracy in fp32.
TEST(NaiveReference, ErrorMatchesTheDtype) {
  SeededRng seeded;
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    AttentionConfig config;
    config.dtype = dtype;
    config.head_dim = 64;
    config.num_heads_q = 2;
    config.num_heads_kv = 1;
    const FixedProblem p = FixedProblem::Random(config, 1, 16, 40, seeded.rng());
    const ReferenceOutput exact = Reference(p, Precision::kFloat64);
    const ReferenceOutput naive = Reference(p, Precision::kNaiveStorage);
    double max_error = 0;
    for (size_t i = 0; i < exact.out.size(); ++i) {
      max_error = std::max(max_error, std::fabs(exact.out[i] - naive.out[i]));
    }
    SCOPED_TRACE(DTypeName(dtype));
    switch (dtype) {
      case DType::kFloat32:
        EXPECT_LT(max_error, 1e-5);
        break;
      case DType::kFloat16:
        EXPECT_GT(max_error, 1e-5);
        EXPECT_LT(max_error, 1e-2);
        break;
      case DType::kBFloat16:
        EXPECT_GT(max_error, 1e-4);
        EXPECT_LT(max_error, 8e-2);
        break;
    }
  }
}

}  // namespace
}  // namespace flashkv::testbed
