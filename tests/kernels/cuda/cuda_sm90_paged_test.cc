// GPU tests of the sm90 paged kernels (FLASHKV_ENABLE_SM90_PAGED): paged launches whose page size
// is a multiple of the 64-key TMA box, against the float64 reference on fresh random inputs with
// poisoned outputs, for every compiled (dtype, head dim). Each case first checks that the public
// call takes the sm90 kernel (kernel_path.h). They skip without a compute capability 9.0 device
// or without the paged sm90 kernels in the build.
//
// The pools come from RunPaged (cuda_test_runs.h): shuffled blocks written through AppendKv, and
// NaN (all bits set) in every slot no sequence owns, so a V row past a sequence's last key that
// reached P V would turn its rows to NaN. Shapes: page sizes 64/128/192/256 (pages holding whole
// K/V tiles load one box per tile, the others boxes of 64 keys; tiles spanning pages at 64 and
// 192; both box shapes on the same pages through sm90::testing::ForcePagedBoxRows), contexts
// ending anywhere in a page and
// shorter than one box, GQA groups 1..8, causal and not, prefills mixed with decodes and with
// queries over an empty context, and more tiles than SMs. Where the paged tile equals the
// contiguous one (head dims 64, 128) the paged kernel must match the varlen kernel on the same
// K/V bit for bit.
//
// Every case runs under the variants that change the paged kernel (sm90::Sm90Variant, set
// process-wide for the case; the others change contiguous launches only): baseline, auto (the
// default; its dynamic schedule takes MoreTilesThanSms' causal launch), lazy_rescale (the
// conditional O rescale, which the paged kernel shares with the contiguous one) and three_consumers
// (192-row tiles at head dim 64 whatever the length; auto takes them from 1024 queries, 2048
// causal, longer than these cases) and paged_keys80 (head dim 256 on the contiguous kernel's
// 80-key tiles, split into 64/32/16-key boxes at page boundaries: SameAsContiguousKernel then
// holds it bit for bit to the contiguous kernel) and paged_k3 (head dim 256 on 64-key tiles with
// three K stages, the producer issuing K one key tile ahead of V: every page size; the K and V
// rings then wrap at different tiles, which MoreTilesThanSms carries across work tiles;
// KStages3SameAsTwoStages holds it bit for bit to the two-stage 64-key kernel) and
// paged_keys80_lanes (paged_keys80's split tiles at every page size, each chunk's loads issued by
// its own producer thread: SameAsContiguousKernel and Keys80LanesSameAsContiguousKernel, the
// latter over the dynamic schedule too, hold it bit for bit to the contiguous kernel; auto takes
// these kernels since the sixth session) and paged_keys64 (head dim 256 on 64-key tiles of one
// box at every page size, auto's choice at 64-key pages before).

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_test_runs.h"
#include "cuda_test_util.h"
#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"
#include "gtest/gtest.h"
#include "kernel_path.h"
#include "sm90/host_setup.h"
#include "sm90/tile_shape.h"

namespace flashkv::cuda::test {
namespace {

using Variant = sm90::Sm90Variant;

class CudaSm90PagedTest : public ::testing::TestWithParam<Sm90Case> {
 protected:
  void SetUp() override {
    dtype_ = std::get<0>(GetParam());
    head_dim_ = std::get<1>(GetParam());
    if (const char* why = Sm90SkipReason(dtype_, head_dim_, /*paged=*/true)) GTEST_SKIP() << why;
    sm90::testing::SetVariant(std::get<2>(GetParam()));
  }
  void TearDown() override { sm90::testing::SetVariant(Variant::kAuto); }

  // Runs one paged problem after checking that it takes the sm90 kernel.
  Result RunOnSm90(const Problem& p, int page_size, const std::string& what) {
    KernelPath path = KernelPath::kSimt;
    RunOptions opt;
    opt.path = &path;
    Result r = RunPaged(p, page_size, opt);
    EXPECT_EQ(path, KernelPath::kSm90) << what << " took " << KernelPathName(path);
    return r;
  }

  void Check(const Problem& p, int page_size, const std::string& what) {
    CheckAgainstReference(p, RunOnSm90(p, page_size, what), what);
  }

  DType dtype_ = DType::kFloat16;
  int head_dim_ = 128;
};

std::string Name(const char* what, int page_size, bool causal) {
  return std::string(what) + " page " + std::to_string(page_size) + (causal ? " causal" : "");
}

// One launch of two sequences (two tiles), both ending inside a box and one inside the second box
// of a key tile: the case the device script runs under compute-sanitizer (racecheck, memcheck).
// Page 64: 64-key boxes (two per tile at head dims 64, 128); page 128: one box per tile, loaded
// whole past the sequence's end.
TEST_P(CudaSm90PagedTest, SmallTailCase) {
  Problem p = MakeProblem(dtype_, 4, 2, head_dim_, {100, 128}, {200, 150}, false, 30);
  for (int page_size : {64, 128}) Check(p, page_size, Name("small tail case", page_size, false));
}

TEST_P(CudaSm90PagedTest, PageSizesMatchReference) {
  for (int page_size : {64, 128, 192, 256}) {
    for (bool causal : {false, true}) {
      // Contexts ending inside a box, on a box edge, inside the second box of a 128-key tile,
      // and one shorter than a box; q_len != kv_len; GQA group 4.
      Problem p = MakeProblem(dtype_, 8, 2, head_dim_, {200, 130, 64, 300, 100},
                              {333, 128, 700, 300, 40}, causal, 40 + page_size);
      Check(p, page_size, Name("lengths", page_size, causal));
    }
  }
}

TEST_P(CudaSm90PagedTest, MixedPrefillAndDecode) {
  for (int page_size : {64, 128}) {
    for (bool causal : {false, true}) {
      // Prefill chunks over longer contexts, decodes (one row of a 128-row tile, stored row by
      // row), queries over an empty context (O = 0, LSE = -inf) and over a one-key context;
      // GQA group 8 and 1.
      Problem p = MakeProblem(dtype_, 8, 1, head_dim_, {384, 1, 256, 1, 128, 1, 200},
                              {500, 2000, 256, 70, 0, 1, 700}, causal, 50 + page_size);
      Check(p, page_size, Name("mixed", page_size, causal));
      Problem mha = MakeProblem(dtype_, 4, 4, head_dim_, {257, 1, 190}, {1100, 513, 190}, causal,
                                60 + page_size);
      Check(mha, page_size, Name("mixed mha", page_size, causal));
    }
  }
}

TEST_P(CudaSm90PagedTest, MoreTilesThanSms) {
  // 8 sequences x 2 m-blocks x 32 heads = 512 tiles: every persistent CTA runs several, so the
  // K/V ring, the table look-ahead and the Q buffer carry across tiles of different sequences.
  // Checked against the SIMT kernel on the same pool (the float64 reference would take a minute).
  std::vector<int> q_lens(8, 256), kv_lens;
  for (int b = 0; b < 8; ++b) kv_lens.push_back(300 + 97 * b);
  for (bool causal : {false, true}) {
    Problem p = MakeProblem(dtype_, 32, 8, head_dim_, q_lens, kv_lens, causal, 70);
    for (int page_size : {64, 128}) {
      const Result sm90 = RunOnSm90(p, page_size, Name("many tiles", page_size, causal));
      ExpectSameAsSimt(p, sm90, RunPaged(p, page_size, SimtReference()));
    }
  }
}

TEST_P(CudaSm90PagedTest, SameAsContiguousKernel) {
  // The keys per tile the active variant gives this problem's launches (page_size 0: the varlen
  // one on contiguous K/V); pages whose tile differs from the contiguous one are not compared.
  const auto block_n = [&](int page_size) {
    const bool paged = page_size > 0;
    return sm90::ChooseTileShape(head_dim_, paged,
                                 sm90::ChooseTileKind(head_dim_, paged, /*varlen=*/true,
                                                      /*causal=*/true, 300, 700, page_size))
        .block_n;
  };
  // Pages 128 and 256 run twice: with their default one box per tile and forced to 64-key boxes.
  const std::vector<std::pair<int, int>> pages_boxes = {
      {64, 0}, {128, 0}, {128, 64}, {256, 0}, {256, 64}};
  int compared = 0;
  for (const auto& [page_size, box] : pages_boxes) {
    if (block_n(page_size) != block_n(0)) continue;
    ++compared;
    for (bool causal : {false, true}) {
      const std::string what = Name("paged vs varlen", page_size, causal) +
                               (box > 0 ? " box " + std::to_string(box) : std::string());
      Problem p = MakeProblem(dtype_, 8, 2, head_dim_, {300, 1, 129}, {450, 700, 129}, causal,
                              80 + page_size);
      sm90::testing::ForcePagedBoxRows(box);
      const Result paged = RunOnSm90(p, page_size, what);
      sm90::testing::ForcePagedBoxRows(0);
      KernelPath path = KernelPath::kSimt;
      RunOptions opt;
      opt.path = &path;
      const Result varlen = RunVarlen(p, opt);
      ASSERT_EQ(path, KernelPath::kSm90) << what << ": varlen took " << KernelPathName(path);
      // Same tiles, same instructions, same order: only where the K/V rows come from differs.
      ExpectBitIdentical(paged, varlen, what);
      CheckAgainstReference(p, paged, what);
    }
  }
  if (compared == 0) GTEST_SKIP() << "the paged tiles differ from the contiguous one here";
}

// paged_k3 against the two-stage 64-key kernel (paged_keys64's): the same tiles and the same
// consumer instructions, only K's ring depth and the producer's order of issue differ, so O and
// LSE must match bit for bit, at page sizes whose kAuto kernel differs too, and over a launch
// where every CTA runs several tiles (the K and V rings wrap at different key tiles and carry
// across work tiles; causal: the dynamic schedule's claims between the loads).
TEST_P(CudaSm90PagedTest, KStages3SameAsTwoStages) {
  if (std::get<2>(GetParam()) != Variant::kPagedKStages3 ||
      !sm90::HasPagedKStages3Shape(head_dim_, /*paged=*/true)) {
    GTEST_SKIP() << "paged_k3 changes paged head dim 256 alone";
  }
  std::vector<int> q_lens(8, 256), kv_lens;
  for (int b = 0; b < 8; ++b) kv_lens.push_back(300 + 97 * b);
  for (bool causal : {false, true}) {
    const std::vector<Problem> problems = {
        MakeProblem(dtype_, 8, 2, head_dim_, {300, 1, 129}, {450, 700, 129}, causal, 90),
        MakeProblem(dtype_, 32, 8, head_dim_, q_lens, kv_lens, causal, 91)};
    for (const Problem& p : problems) {
      sm90::testing::SetVariant(Variant::kPagedKeys64);
      ASSERT_EQ(sm90::ChooseTileKind(head_dim_, true, true, causal, 256, 1000, 64),
                sm90::TileKind::kStandard);
      const Result two = RunOnSm90(p, 64, Name("two K stages", 64, causal));
      sm90::testing::SetVariant(Variant::kPagedKStages3);
      for (int page_size : {64, 128}) {
        const std::string what = Name("three K stages", page_size, causal) + ", " +
                                 std::to_string(p.q_lens.size()) + " sequences";
        ASSERT_EQ(sm90::ChooseTileKind(head_dim_, true, true, causal, 256, 1000, page_size),
                  sm90::TileKind::kPagedKStages3);
        ExpectBitIdentical(RunOnSm90(p, page_size, what), two, what);
      }
    }
  }
}

// paged_keys80_lanes against the contiguous 80-key kernel (the varlen launch on the same K/V, under
// the same variant: kAuto's kernel there, with the same lazy rescale and schedule): the same
// tiles and consumer instructions, only who issues the loads and where the rows come from
// differ, so O and LSE must match bit for bit, at pages of 64 (every tile split), 128 and 256
// keys, causal and not, and over a launch where every CTA runs several tiles (512 tiles: causal
// takes the dynamic schedule, whose tile numbers a consumer thread claims and every issuer reads
// from the tile ring).
TEST_P(CudaSm90PagedTest, Keys80LanesSameAsContiguousKernel) {
  if (std::get<2>(GetParam()) != Variant::kPagedKeys80Lanes ||
      !sm90::HasPagedKeys80Shape(head_dim_, /*paged=*/true)) {
    GTEST_SKIP() << "paged_keys80_lanes changes paged head dim 256 alone";
  }
  std::vector<int> q_lens(8, 256), kv_lens;
  for (int b = 0; b < 8; ++b) kv_lens.push_back(300 + 97 * b);
  for (bool causal : {false, true}) {
    const std::vector<Problem> problems = {
        MakeProblem(dtype_, 8, 2, head_dim_, {300, 1, 129}, {450, 700, 129}, causal, 92),
        MakeProblem(dtype_, 32, 8, head_dim_, q_lens, kv_lens, causal, 93)};
    for (const Problem& p : problems) {
      const std::string seqs = std::to_string(p.q_lens.size()) + " sequences";
      KernelPath path = KernelPath::kSimt;
      RunOptions opt;
      opt.path = &path;
      const Result varlen = RunVarlen(p, opt);
      ASSERT_EQ(path, KernelPath::kSm90) << seqs << ": varlen took " << KernelPathName(path);
      ASSERT_EQ(sm90::ChooseTileShape(head_dim_, false,
                                      sm90::ChooseTileKind(head_dim_, false, true, causal, 256,
                                                           1000))
                    .block_n,
                80);
      for (int page_size : {64, 128, 256}) {
        const std::string what = Name("keys80 lanes", page_size, causal) + ", " + seqs;
        ASSERT_EQ(sm90::ChooseTileKind(head_dim_, true, true, causal, 256, 1000, page_size),
                  sm90::TileKind::kPagedKeys80Lanes);
        ExpectBitIdentical(RunOnSm90(p, page_size, what), varlen, what);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Sm90Paged, CudaSm90PagedTest,
    ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16),
                       ::testing::Values(64, 128, 256),
                       ::testing::Values(Variant::kBaseline, Variant::kAuto, Variant::kLazyRescale,
                                         Variant::kThreeConsumers, Variant::kPagedKeys80,
                                         Variant::kPagedKStages3,
                                         Variant::kPagedKeys80Lanes, Variant::kPagedKeys64)),
    Sm90CaseName);

}  // namespace
}  // namespace flashkv::cuda::test
