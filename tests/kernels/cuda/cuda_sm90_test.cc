// GPU tests of the sm90 (Hopper) kernels: every compiled (dtype, head dim) of the sm90 path, fixed
// and varlen, causal or not, against the float64 reference on fresh random inputs with poisoned
// outputs. Each case first checks that the public call takes the sm90 kernel (kernel_path.h), so
// a heuristic change cannot silently move these tests to sm80. They skip without a compute
// capability 9.0 device or without sm90 kernels in the build (FLASHKV_ENABLE_SM90 and 90a).
//
// Shapes exercise what the sm90 kernel adds: partial M and key tiles (TMA zero fill and clipped
// stores), rows that see no key, GQA groups 1..8, more tiles than SMs (persistent CTAs running
// several tiles, so the pipeline and Q-buffer phases carry across tiles), [B, H, S, D] strides,
// varlen rows that end inside a consumer's 64 (plain stores) or fill it (TMA stores), empty
// sequences, negative and zero softmax scales.
//
// Every case runs under each variant of the kernel (sm90::Sm90Variant, set process-wide for the
// case): the dynamic tile schedule changes which CTA runs which tile of the causal launches, so
// the many-tile causal cases are the ones that exercise its tile ring across several uses. The
// lazy rescale moves a row's softmax reference only when a key tile's maximum passes it by more
// than sm90::kLazyRescaleLog2: on N(0, 1) inputs rows settle after their first key tile, so
// RowMaximaGrowAcrossKeyTiles makes them grow, taking both the stale and the moving branch.
// three_consumers runs head dim 64 on 192-row tiles (other head dims: the default kernels): the
// shapes above then also cover a third consumer's rows (128..191) partly filled, ending inside
// its 64 (varlen 130, 257, 300) and tiles past 192 rows (200, 257, 300). keys160 and keys176 run
// head dim 128's launches without a causal mask on 160- and 176-key tiles (the rest: the default
// kernels): key counts 130..700 end inside their first, second and later key tiles. stream_k
// divides the keys of the last tiles of fixed-length launches without a causal mask among the
// CTAs (FixedStreamKTail has the shape that does it on an H100).

#include <string>
#include <tuple>
#include <vector>

#include "cuda_test_runs.h"
#include "cuda_test_util.h"
#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"
#include "gtest/gtest.h"
#include "kernel_path.h"
#include "sm90/host_setup.h"

namespace flashkv::cuda::test {
namespace {

using Variant = sm90::Sm90Variant;

class CudaSm90Test : public ::testing::TestWithParam<Sm90Case> {
 protected:
  void SetUp() override {
    dtype_ = std::get<0>(GetParam());
    head_dim_ = std::get<1>(GetParam());
    if (const char* why = Sm90SkipReason(dtype_, head_dim_, /*paged=*/false)) GTEST_SKIP() << why;
    sm90::testing::SetVariant(std::get<2>(GetParam()));
  }
  void TearDown() override { sm90::testing::SetVariant(Variant::kAuto); }

  // Runs and checks one problem, after checking that it takes the sm90 kernel.
  void Check(const Problem& p, bool varlen, const std::string& what, bool heads_outer = false) {
    KernelPath path = KernelPath::kSimt;
    RunOptions opt;
    opt.path = &path;
    opt.heads_outer = heads_outer;
    const Result r = varlen ? RunVarlen(p, opt) : RunFixed(p, opt);
    ASSERT_EQ(path, KernelPath::kSm90) << what << " took " << KernelPathName(path);
    CheckAgainstReference(p, r, what);
  }

  DType dtype_ = DType::kFloat16;
  int head_dim_ = 128;
};

TEST_P(CudaSm90Test, FixedPartialTiles) {
  for (bool causal : {false, true}) {
    const std::string name = causal ? "causal" : "full";
    // Sq != Skv, partial last M tile and key tile, GQA group 2.
    Check(MakeProblem(dtype_, 4, 2, head_dim_, {200, 200}, {333, 333}, causal, 21), false,
          name + " 200x333");
    // Sq > Skv: under causal the first 170 rows see no key (O = 0, LSE = -inf).
    Check(MakeProblem(dtype_, 2, 1, head_dim_, {300}, {130}, causal, 22), false, name + " sq>skv");
    // Several key tiles per row and a diagonal crossing tiles; GQA group 8.
    Check(MakeProblem(dtype_, 8, 1, head_dim_, {520}, {700}, causal, 23), false, name + " 520x700");
  }
}

TEST_P(CudaSm90Test, FixedMoreTilesThanSms) {
  // 8 x 32 heads x 1 M tile = 256 tiles: every CTA of the persistent grid runs two or more.
  for (bool causal : {false, true}) {
    Check(MakeProblem(dtype_, 32, 8, head_dim_, std::vector<int>(8, 128), std::vector<int>(8, 160),
                      causal, 24),
          false, causal ? "causal many tiles" : "full many tiles");
  }
}

TEST_P(CudaSm90Test, FixedStreamKTail) {
  // 8 x 32 heads x 2 M tiles (1 of 192 rows) = 512 (256) tiles over 3-5 key tiles of 400 keys
  // (the last partial): on a 132-SM H100 not a whole number of rounds, so under stream_k the
  // keys of the last round and the remainder are divided among the CTAs, and tiles that two CTAs
  // share are merged by the second to finish. GQA group 2. (Sizes keep the float64 reference to
  // seconds: the suite runs its cases side by side.)
  for (bool causal : {false, true}) {
    Check(MakeProblem(dtype_, 32, 16, head_dim_, std::vector<int>(8, 130),
                      std::vector<int>(8, 400), causal, 30),
          false, causal ? "causal stream-K shape" : "full stream-K tail");
  }
  if (head_dim_ == 128) {
    // 136 tiles over 2100 keys: 160-key tiles (kAuto's from 2048 keys; with the tail from 4096),
    // 14 key tiles each, under stream_k divided from the 133rd tile on. GQA group 8.
    Check(MakeProblem(dtype_, 136, 17, head_dim_, {64}, {2100}, false, 31), false,
          "stream-K 160-key tiles");
  }
}

TEST_P(CudaSm90Test, CausalManyUnevenTiles) {
  // 8 x 32 heads x 3 M tiles of 1..3 key tiles = 768 tiles: 5-6 per CTA, so the dynamic
  // schedule's two-slot ring is reused several times and CTAs end up with different tile counts.
  Check(MakeProblem(dtype_, 32, 8, head_dim_, std::vector<int>(8, 300), std::vector<int>(8, 300),
                    true, 28),
        false, "causal 768 uneven tiles");
  // Varlen: sequences of 1..4 M tiles over contexts longer than their queries.
  Check(MakeProblem(dtype_, 16, 4, head_dim_, {500, 64, 300, 129, 400, 200, 20, 384},
                    {900, 64, 700, 129, 400, 600, 500, 384}, true, 29),
        true, "varlen causal many tiles");
}

TEST_P(CudaSm90Test, FixedHeadsOuterLayout) {
  // [B, H, S, D] (as PyTorch's SDPA takes it): the TMA walks rows with the smaller stride.
  Check(MakeProblem(dtype_, 4, 4, head_dim_, {150, 150}, {260, 260}, true, 25), false,
        "heads outer", /*heads_outer=*/true);
}

TEST_P(CudaSm90Test, VarlenMixedLengths) {
  for (bool causal : {false, true}) {
    // An empty sequence, one without keys (O = 0, LSE = -inf), rows ending inside a consumer's
    // 64 and rows filling it, a context much longer than its queries.
    Problem p = MakeProblem(dtype_, 8, 2, head_dim_, {130, 0, 257, 64, 300, 192},
                            {200, 5, 257, 0, 700, 1000}, causal, 26);
    Check(p, true, causal ? "varlen causal" : "varlen");
  }
}

// Scales key j of each sequence by 1 + 4 (kv_len - 1 - j) / kv_len. The kernel visits key tiles
// last first, so every row's maximum grows as it goes: about 3.7 log2 units per 128 keys (the
// maximum of a row's 128 scores ~ 2.6 sigma, sigma = log2(e) x the key's scale) over a 700-key
// context. Under lazy_rescale some tiles then stay on a stale reference (P up to 2^8) and others
// move it (the O rescale after the first tile); the other variants rescale on every tile.
void GrowKeysTowardTheStart(Problem* p) {
  const int64_t row = int64_t{p->heads_kv} * p->head_dim;
  for (size_t b = 0; b < p->kv_lens.size(); ++b) {
    const int n = p->kv_lens[b];
    for (int j = 0; j < n; ++j) {
      const float g = 1.f + 4.f * static_cast<float>(n - 1 - j) / static_cast<float>(n);
      float* key = p->k.data() + (p->cu_kv[b] + j) * row;
      for (int64_t e = 0; e < row; ++e) key[e] *= g;
    }
  }
  (void)Encode(p->dtype, p->k);  // rounds to the dtype again
}

TEST_P(CudaSm90Test, RowMaximaGrowAcrossKeyTiles) {
  for (bool causal : {false, true}) {
    const std::string name = causal ? "causal" : "full";
    // Fixed: 6 key tiles per row (4 causal at the first rows); GQA group 2.
    Problem fixed = MakeProblem(dtype_, 4, 2, head_dim_, {200, 200}, {700, 700}, causal, 31);
    GrowKeysTowardTheStart(&fixed);
    Check(fixed, false, name + " growing maxima");
    // Varlen: a row with no key under causal (O = 0, LSE = -inf), a one-key context, a long one.
    Problem varlen =
        MakeProblem(dtype_, 4, 4, head_dim_, {300, 1, 129, 64}, {1000, 1, 129, 20}, causal, 32);
    GrowKeysTowardTheStart(&varlen);
    Check(varlen, true, name + " varlen growing maxima");
  }
}

TEST_P(CudaSm90Test, NegativeAndZeroScale) {
  for (float scale : {-0.3f, 0.f}) {
    Problem p = MakeProblem(dtype_, 2, 2, head_dim_, {150}, {150}, true, 27);
    p.default_scale = false;
    p.scale = scale;
    Check(p, false, "scale " + std::to_string(scale));
  }
}

INSTANTIATE_TEST_SUITE_P(Sm90Instantiations, CudaSm90Test,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                                            ::testing::Values(64, 128, 256),
                                            ::testing::Values(Variant::kBaseline,
                                                              Variant::kDynamicSchedule,
                                                              Variant::kAuto, Variant::kLazyRescale,
                                                              Variant::kThreeConsumers,
                                                              Variant::kKeys160,
                                                              Variant::kKeys176,
                                                              Variant::kStreamK)),
                         Sm90CaseName);

}  // namespace
}  // namespace flashkv::cuda::test
