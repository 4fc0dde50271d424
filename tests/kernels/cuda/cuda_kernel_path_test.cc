// The kernel-path decision (kernel_path.h) as host arithmetic: which launches the sm90 kernel
// takes and why the others stay on sm80 or SIMT. No GPU needed (label `cpu`): the device is
// described by a DeviceProps value and "compiled" is passed in.

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

#include "attention_params.h"
#include "device_state.h"
#include "gtest/gtest.h"
#include "kernel_path.h"
#include "launch.h"
#include "sm90/host_setup.h"

namespace flashkv::cuda {
namespace {

DeviceProps H100() {
  DeviceProps props;
  props.major = 9;
  props.minor = 0;
  props.multiprocessors = 132;
  props.l2_bytes = 50 << 20;
  return props;
}

// Dense [B, S, H, D] fixed-length parameters.
AttentionParams Fixed(int batch, int sq, int skv, int hq, int hkv, int d) {
  AttentionParams p;
  p.num_seqs = batch;
  p.seqlen_q = p.max_seqlen_q = sq;
  p.seqlen_kv = p.max_seqlen_kv = skv;
  p.num_heads_q = hq;
  p.num_heads_kv = hkv;
  p.group = hq / hkv;
  p.head_dim = d;
  p.total_q = static_cast<int64_t>(batch) * sq;
  p.q_row_stride = p.out_row_stride = static_cast<int64_t>(hq) * d;
  p.q_head_stride = p.out_head_stride = d;
  p.q_batch_stride = p.out_batch_stride = static_cast<int64_t>(sq) * hq * d;
  p.k_row_stride = p.v_row_stride = static_cast<int64_t>(hkv) * d;
  p.k_head_stride = p.v_head_stride = d;
  p.k_batch_stride = p.v_batch_stride = static_cast<int64_t>(skv) * hkv * d;
  return p;
}

// Makes p varlen over the offsets cu_q / cu_kv, with the same vectors as info's host copies (the
// host side reads those; the device pointers only mark the launch varlen).
void MakeVarlen(const std::vector<int32_t>& cu_q, const std::vector<int32_t>& cu_kv,
                AttentionParams* p, LaunchInfo* info) {
  p->cu_seqlens_q = cu_q.data();
  p->cu_seqlens_kv = cu_kv.data();
  info->host_cu_seqlens_q = cu_q.data();
  info->host_cu_seqlens_kv = cu_kv.data();
}

const char* Reject(const AttentionParams& p, const LaunchInfo& info = {},
                   const DeviceProps& props = H100(), bool paged = false) {
  return Sm90Rejection(DType::kFloat16, p.head_dim, paged, /*sm90_compiled=*/true, p, info, props);
}

TEST(KernelPathTest, PrefillOnHopperTakesSm90) {
  EXPECT_EQ(Reject(Fixed(2, 4096, 4096, 32, 32, 128)), nullptr);
  EXPECT_EQ(Reject(Fixed(1, 77, 200, 4, 2, 64)), nullptr);  // 77 of 128 rows hold queries
}

TEST(KernelPathTest, OtherDevicesAndBuildsStayOnSm80) {
  const AttentionParams p = Fixed(2, 4096, 4096, 32, 32, 128);
  DeviceProps a100 = H100();
  a100.major = 8;
  EXPECT_NE(Reject(p, {}, a100), nullptr);
  DeviceProps sm100 = H100();
  sm100.major = 10;  // sm_90a code does not run on later architectures
  EXPECT_NE(Reject(p, {}, sm100), nullptr);
  EXPECT_NE(Sm90Rejection(DType::kFloat16, 128, false, /*sm90_compiled=*/false, p, {}, H100()),
            nullptr);
  EXPECT_NE(Reject(p, {}, H100(), /*paged=*/true), nullptr);
}

TEST(KernelPathTest, ShortQueriesAndFewLongTilesStayOnSm80) {
  // Decode-like: one query row per 128-row tile.
  EXPECT_NE(Reject(Fixed(64, 1, 4096, 32, 8, 128)), nullptr);
  // 40 of 128 rows.
  EXPECT_NE(Reject(Fixed(1, 40, 90, 2, 2, 128)), nullptr);
  // 8 tiles over 32k keys: sm80 splits the keys across the SMs.
  EXPECT_NE(Reject(Fixed(1, 256, 32768, 4, 4, 128)), nullptr);
  // The same tiles over short keys have nothing to split.
  EXPECT_EQ(Reject(Fixed(1, 256, 1024, 4, 4, 128)), nullptr);
}

TEST(KernelPathTest, StridesTheTmaCannotDescribe) {
  AttentionParams p = Fixed(2, 512, 512, 8, 8, 128);
  p.k_head_stride = 0;  // a broadcast K head: not a TMA tensor
  EXPECT_NE(Reject(p), nullptr);
  AttentionParams one_head = Fixed(2, 512, 512, 1, 1, 128);
  one_head.k_head_stride = 0;  // extent 1: the stride is never applied
  EXPECT_EQ(Reject(one_head), nullptr);
  LaunchInfo unaligned;
  unaligned.aligned16 = false;
  EXPECT_NE(Reject(p, unaligned), nullptr);
}

TEST(KernelPathTest, VarlenNeedsHostLengthsAndAFittingTable) {
  std::vector<int32_t> cu_q = {0, 300, 300, 812}, cu_kv = {0, 400, 410, 1500};
  AttentionParams p = Fixed(3, 512, 1090, 8, 2, 128);
  p.cu_seqlens_q = cu_q.data();  // any non-null pointer marks varlen; the host copies are read
  p.cu_seqlens_kv = cu_kv.data();
  p.total_q = 812;
  LaunchInfo info;
  EXPECT_NE(Reject(p, info), nullptr);
  info.host_cu_seqlens_q = cu_q.data();
  info.host_cu_seqlens_kv = cu_kv.data();
  EXPECT_EQ(Reject(p, info), nullptr);
  EXPECT_EQ(sm90::CountTiles(p, info, 128), (3 + 0 + 4) * 8);
  p.num_seqs = sm90::kMaxVarlenSequences + 1;
  std::vector<int32_t> many(p.num_seqs + 1);
  for (int b = 0; b <= p.num_seqs; ++b) many[b] = 128 * b;
  info.host_cu_seqlens_q = info.host_cu_seqlens_kv = many.data();
  EXPECT_NE(Reject(p, info), nullptr);
}

// A paged prefill: varlen queries over [blocks, Hkv, page, D] pools.
AttentionParams Paged(const std::vector<int32_t>& cu_q, const std::vector<int32_t>& cu_kv,
                      int page_size, int hq, int hkv, int d) {
  const int batch = static_cast<int>(cu_q.size()) - 1;
  AttentionParams p = Fixed(batch, 0, 0, hq, hkv, d);
  p.cu_seqlens_q = cu_q.data();  // any non-null pointer marks varlen; the host copies are read
  p.cu_seqlens_kv = cu_kv.data();
  p.block_table = cu_kv.data();  // likewise for paged
  p.page_size = page_size;
  p.total_q = cu_q.back();
  for (int b = 0; b < batch; ++b) {
    p.max_seqlen_q = std::max(p.max_seqlen_q, cu_q[b + 1] - cu_q[b]);
    p.max_seqlen_kv = std::max(p.max_seqlen_kv, cu_kv[b + 1] - cu_kv[b]);
  }
  p.k_row_stride = p.v_row_stride = d;
  p.k_head_stride = p.v_head_stride = static_cast<int64_t>(page_size) * d;
  p.k_batch_stride = p.v_batch_stride = static_cast<int64_t>(hkv) * page_size * d;
  return p;
}

TEST(KernelPathTest, PagedPrefillTakesSm90WithPagesOfWholeBoxes) {
  const std::vector<int32_t> cu_q = {0, 300, 301, 812}, cu_kv = {0, 400, 1400, 2000};
  LaunchInfo info;
  info.host_cu_seqlens_q = cu_q.data();
  info.host_cu_seqlens_kv = cu_kv.data();
  info.num_blocks = 64;
  for (int page : {64, 128, 192, 256, 1024}) {
    EXPECT_EQ(Reject(Paged(cu_q, cu_kv, page, 8, 2, 128), info, H100(), /*paged=*/true), nullptr)
        << "page " << page;
  }
  // A box of 64 keys would cross a page: sm80 gathers rows.
  for (int page : {1, 16, 32, 96, 100}) {
    EXPECT_NE(Reject(Paged(cu_q, cu_kv, page, 8, 2, 128), info, H100(), /*paged=*/true), nullptr)
        << "page " << page;
  }
  // Without the paged kernels in the build (FLASHKV_ENABLE_SM90_PAGED off).
  EXPECT_NE(Sm90Rejection(DType::kFloat16, 128, /*paged=*/true, /*sm90_compiled=*/false,
                          Paged(cu_q, cu_kv, 64, 8, 2, 128), info, H100()),
            nullptr);
  // Decodes fill one row of a 128-row tile: sm80's packed decode path serves them.
  const std::vector<int32_t> dq = {0, 1, 2, 3, 4}, dkv = {0, 500, 1000, 1500, 2000};
  LaunchInfo decode = info;
  decode.host_cu_seqlens_q = dq.data();
  decode.host_cu_seqlens_kv = dkv.data();
  EXPECT_NE(Reject(Paged(dq, dkv, 64, 8, 2, 128), decode, H100(), /*paged=*/true), nullptr);
}

TEST(KernelPathTest, PagedBoxesAreWholeTilesWherePagesHoldThem) {
  // Head dims 64 and 128 (block_n 128), and 256's paged tile (block_n 64).
  EXPECT_EQ(sm90::PagedBoxRows(64, 128), 64);
  EXPECT_EQ(sm90::PagedBoxRows(128, 128), 128);
  EXPECT_EQ(sm90::PagedBoxRows(192, 128), 64);
  EXPECT_EQ(sm90::PagedBoxRows(256, 128), 128);
  EXPECT_EQ(sm90::PagedBoxRows(64, 64), 64);
  EXPECT_EQ(sm90::PagedBoxRows(192, 64), 64);
  sm90::testing::ForcePagedBoxRows(64);
  EXPECT_EQ(sm90::PagedBoxRows(256, 128), 64);
  sm90::testing::ForcePagedBoxRows(128);
  EXPECT_EQ(sm90::PagedBoxRows(192, 128), 64) << "a forced box must lie inside one page";
  EXPECT_EQ(sm90::PagedBoxRows(128, 64), 64) << "a forced box must be a whole number per tile";
  sm90::testing::ForcePagedBoxRows(0);
  EXPECT_EQ(sm90::PagedBoxRows(256, 128), 128);
}

TEST(KernelPathTest, PagedPoolStridesTheTmaCannotDescribe) {
  const std::vector<int32_t> cu_q = {0, 300}, cu_kv = {0, 400};
  LaunchInfo info;
  info.host_cu_seqlens_q = cu_q.data();
  info.host_cu_seqlens_kv = cu_kv.data();
  info.num_blocks = 16;
  AttentionParams p = Paged(cu_q, cu_kv, 64, 8, 2, 128);
  EXPECT_TRUE(sm90::TmaCanDescribe(p, info, 2));
  p.k_batch_stride += 4;  // blocks 8 bytes apart from a multiple of 16
  EXPECT_FALSE(sm90::TmaCanDescribe(p, info, 2));
}

TEST(KernelPathTest, ScheduleOrdersSequencesLongestContextFirst) {
  std::vector<int32_t> cu_q = {0, 100, 100, 400, 528}, cu_kv = {0, 50, 60, 160, 4000};
  AttentionParams p = Fixed(4, 300, 3840, 4, 4, 128);
  LaunchInfo info;
  MakeVarlen(cu_q, cu_kv, &p, &info);
  sm90::Schedule s;
  ASSERT_TRUE(sm90::BuildSchedule(p, info, 128, 2, H100(), &s).ok());
  // Sequence 1 has no queries; 3 (3840 keys), 2 (100), 0 (50).
  ASSERT_EQ(s.count, 3);
  EXPECT_EQ(s.order[0], 3);
  EXPECT_EQ(s.order[1], 2);
  EXPECT_EQ(s.order[2], 0);
  EXPECT_EQ(s.unit_start[0], 0);
  EXPECT_EQ(s.unit_start[1], 1);  // 128 queries: one m-block
  EXPECT_EQ(s.unit_start[2], 4);  // 300 queries: three
  EXPECT_EQ(s.unit_start[3], 5);
  EXPECT_EQ(s.num_tiles, 5 * 4);
}

// Sm90Variant::kThreeConsumers: the schedule takes 192-row m-blocks at head dim 64 (and the
// launch's kernel has them); head dims without that shape are refused, not divided by zero.
TEST(KernelPathTest, ThreeConsumerScheduleTakes192RowTiles) {
  constexpr sm90::TileKind kThree = sm90::TileKind::kThreeConsumers;
  sm90::Schedule s;
  ASSERT_TRUE(
      sm90::BuildSchedule(Fixed(2, 4096, 4096, 32, 32, 64), {}, 64, 2, H100(), &s, kThree).ok());
  EXPECT_EQ(s.m_blocks, 22);  // 4096 / 192 = 21.3
  EXPECT_EQ(s.num_tiles, 22 * 64);
  std::vector<int32_t> cu_q = {0, 100, 100, 400}, cu_kv = {0, 50, 60, 160};
  AttentionParams p = Fixed(3, 300, 100, 4, 4, 64);
  LaunchInfo info;
  MakeVarlen(cu_q, cu_kv, &p, &info);
  ASSERT_TRUE(sm90::BuildSchedule(p, info, 64, 2, H100(), &s, kThree).ok());
  EXPECT_EQ(s.unit_start[s.count], 1 + 2);  // 100 queries: one m-block; 300: two
  EXPECT_EQ(s.num_tiles, 3 * 4);
  EXPECT_FALSE(
      sm90::BuildSchedule(Fixed(2, 4096, 4096, 32, 32, 128), {}, 128, 2, H100(), &s, kThree).ok());
}

// kAuto takes three consumer warpgroups (192-row tiles) at head dim 64 on contiguous K/V, except
// launches with queries shorter than kThreeConsumerCausalMinSeqlen (causal) or
// kThreeConsumerMinSeqlen (not), and 160-key tiles at
// head dim 128 on contiguous K/V without a causal mask from kWideKeysMinSeqlenKv keys on; the
// variants under measurement keep their own choice, and no wide key tile takes a causal or paged
// launch. Arguments: head dim, paged, varlen, causal, longest query, longest context.
TEST(KernelPathTest, TileKindByVariantHeadDimLayoutAndLength) {
  using sm90::TileKind;
  ASSERT_EQ(sm90::ActiveVariant(), sm90::Sm90Variant::kAuto);
  const int kMin = sm90::kThreeConsumerCausalMinSeqlen;
  const int kWide = sm90::kWideKeysMinSeqlenKv;
  EXPECT_EQ(sm90::ChooseTileKind(64, false, false, false, 1024, 1024), TileKind::kThreeConsumers);
  EXPECT_EQ(sm90::ChooseTileKind(64, false, false, false, sm90::kThreeConsumerMinSeqlen - 1, 8192),
            TileKind::kStandard);
  EXPECT_EQ(sm90::ChooseTileKind(64, false, false, true, kMin, kMin), TileKind::kThreeConsumers);
  EXPECT_EQ(sm90::ChooseTileKind(64, false, false, true, kMin - 1, 8192), TileKind::kStandard);
  EXPECT_EQ(sm90::ChooseTileKind(64, true, false, false, 8192, 8192), TileKind::kThreeConsumers);
  EXPECT_EQ(sm90::ChooseTileKind(128, false, false, false, 128, kWide), TileKind::kKeys160);
  EXPECT_EQ(sm90::ChooseTileKind(128, false, /*varlen=*/true, false, 8192, 8192),
            TileKind::kStandard);
  EXPECT_EQ(sm90::ChooseTileKind(128, false, false, false, 8192, kWide - 1), TileKind::kStandard);
  EXPECT_EQ(sm90::ChooseTileKind(128, false, false, true, 8192, 8192), TileKind::kStandard);
  EXPECT_EQ(sm90::ChooseTileKind(128, true, false, false, 8192, 8192), TileKind::kStandard);
  EXPECT_EQ(sm90::ChooseTileKind(256, false, false, false, 8192, 8192), TileKind::kStandard);
  // Paged head dim 256: 80-key split tiles issued by chunk, at every page size.
  for (int page : {64, 128, 256}) {
    EXPECT_EQ(sm90::ChooseTileKind(256, true, true, true, 8192, 8192, page),
              TileKind::kPagedKeys80Lanes);
    EXPECT_EQ(sm90::ChooseTileKind(256, true, true, false, 1024, 1024, page),
              TileKind::kPagedKeys80Lanes);
  }
  EXPECT_EQ(sm90::ChooseTileKind(128, true, true, true, 8192, 8192, 256), TileKind::kStandard);
  // paged_keys80 and paged_keys64: the other two paged shapes at every page size.
  for (const auto& [variant, kind] :
       {std::pair{sm90::Sm90Variant::kPagedKeys80, TileKind::kPagedKeys80},
        std::pair{sm90::Sm90Variant::kPagedKeys64, TileKind::kStandard}}) {
    sm90::testing::SetVariant(variant);
    for (int page : {64, 128, 256}) {
      EXPECT_EQ(sm90::ChooseTileKind(256, true, true, true, 8192, 8192, page), kind);
    }
    EXPECT_EQ(sm90::ChooseTileKind(128, false, false, false, 1024, kWide), TileKind::kKeys160);
    EXPECT_EQ(sm90::ChooseTileKind(64, true, true, false, 8192, 8192, 64),
              TileKind::kThreeConsumers);
    EXPECT_TRUE(sm90::UseLazyRescale(256));
  }
  // paged_k3 (64-key tiles, a third K stage) and paged_keys80_lanes (kAuto's split tiles issued
  // by chunk): paged head dim 256 at every page size; everything else as under kAuto.
  for (const auto& [variant, kind] :
       {std::pair{sm90::Sm90Variant::kPagedKStages3, TileKind::kPagedKStages3},
        std::pair{sm90::Sm90Variant::kPagedKeys80Lanes, TileKind::kPagedKeys80Lanes}}) {
    sm90::testing::SetVariant(variant);
    for (int page : {64, 128, 256}) {
      EXPECT_EQ(sm90::ChooseTileKind(256, true, true, true, 8192, 8192, page), kind);
      EXPECT_EQ(sm90::ChooseTileKind(256, true, true, false, 8192, 8192, page), kind);
    }
    EXPECT_EQ(sm90::ChooseTileKind(256, false, false, true, 8192, 8192), TileKind::kStandard);
    EXPECT_EQ(sm90::ChooseTileKind(128, true, true, true, 8192, 8192, 64), TileKind::kStandard);
    EXPECT_EQ(sm90::ChooseTileKind(64, true, true, false, 8192, 8192, 64),
              TileKind::kThreeConsumers);
    EXPECT_EQ(sm90::ChooseTileKind(128, false, false, false, 1024, kWide), TileKind::kKeys160);
  }
  EXPECT_TRUE(sm90::UseDynamicSchedule(true, 512, 132));
  EXPECT_TRUE(sm90::UseLazyRescale(256));
  sm90::testing::SetVariant(sm90::Sm90Variant::kBaseline);
  EXPECT_EQ(sm90::ChooseTileKind(256, true, true, true, 8192, 8192, 256), TileKind::kStandard);
  sm90::testing::SetVariant(sm90::Sm90Variant::kThreeConsumers);
  EXPECT_EQ(sm90::ChooseTileKind(64, false, false, true, 1024, 1024), TileKind::kThreeConsumers);
  // kAuto's kernels wherever the variant changes nothing: paged head dim 256 as under kAuto.
  EXPECT_EQ(sm90::ChooseTileKind(256, true, true, true, 8192, 8192, 128),
            TileKind::kPagedKeys80Lanes);
  EXPECT_EQ(sm90::ChooseTileKind(128, false, false, false, 8192, 8192), TileKind::kStandard);
  for (const auto& [variant, kind] : {std::pair{sm90::Sm90Variant::kKeys160, TileKind::kKeys160},
                                      std::pair{sm90::Sm90Variant::kKeys176, TileKind::kKeys176}}) {
    sm90::testing::SetVariant(variant);
    EXPECT_EQ(sm90::ChooseTileKind(128, false, false, false, 1024, 1024), kind);
    EXPECT_EQ(sm90::ChooseTileKind(128, false, false, true, 8192, 8192), TileKind::kStandard);
    EXPECT_EQ(sm90::ChooseTileKind(128, true, false, false, 8192, 8192), TileKind::kStandard);
    EXPECT_EQ(sm90::ChooseTileKind(64, false, false, false, 8192, 8192), TileKind::kStandard);
    EXPECT_EQ(sm90::ChooseTileKind(256, false, false, false, 8192, 8192), TileKind::kStandard);
  }
  sm90::testing::SetVariant(sm90::Sm90Variant::kBaseline);
  EXPECT_EQ(sm90::ChooseTileKind(64, false, false, false, 8192, 8192), TileKind::kStandard);
  EXPECT_EQ(sm90::ChooseTileKind(128, false, false, false, 8192, 8192), TileKind::kStandard);
  sm90::testing::SetVariant(sm90::Sm90Variant::kAuto);
}

// kPagedKStages3: the standard paged 64-key tile with a third K stage. Q 64 KB + 3 x 32 KB K +
// 2 x 32 KB V + barriers + the 1 KB alignment slack within a CTA's 227 KB; O in Q's space.
TEST(KernelPathTest, PagedKStages3FitsSharedMemory) {
  using sm90::TileKind;
  constexpr TileKind kK3 = TileKind::kPagedKStages3;
  const sm90::TileShape shape = sm90::ChooseTileShape(256, true, kK3);
  EXPECT_EQ(shape.block_m, 128);
  EXPECT_EQ(shape.block_n, sm90::ChooseTileShape(256, true).block_n);
  EXPECT_EQ(sm90::KStagesOf(shape), 3);
  EXPECT_EQ(sm90::VStagesOf(shape), 2);
  EXPECT_FALSE(sm90::HasTileShape(256, /*paged=*/false, kK3));
  EXPECT_FALSE(sm90::HasTileShape(128, /*paged=*/true, kK3));
  EXPECT_FALSE(sm90::SeparateO(256, 2, true, kK3));
  EXPECT_EQ(sm90::BarrierBytes(3, 2), 8 * (2 + 6 + 4 + 4) + 8 + 12);
  EXPECT_EQ(sm90::SmemBytes(256, 2, true, kK3), (64 + 5 * 32) * 1024 + 148 + 1024);
  EXPECT_LE(sm90::SmemBytes(256, 2, true, kK3), sm90::kMaxSmemBytes);
  // The kinds with one ring depth keep their maps: K and V of `stages` each.
  EXPECT_EQ(sm90::SmemBytes(256, 2, true), (64 + 4 * 32) * 1024 + sm90::BarrierBytes(2, 2) + 1024);
}

// kPagedKeys80Lanes: kPagedKeys80's tile and shared memory map (only who issues the loads
// differs), on paged head dim 256 alone.
TEST(KernelPathTest, PagedKeys80LanesIsTheSplitTile) {
  using sm90::TileKind;
  constexpr TileKind kLanes = TileKind::kPagedKeys80Lanes;
  EXPECT_TRUE(sm90::IsPagedSplitKind(kLanes));
  EXPECT_TRUE(sm90::IsPagedSplitKind(TileKind::kPagedKeys80));
  EXPECT_FALSE(sm90::IsPagedSplitKind(TileKind::kPagedKStages3));
  EXPECT_FALSE(sm90::IsPagedSplitKind(TileKind::kStandard));
  const sm90::TileShape lanes = sm90::ChooseTileShape(256, true, kLanes);
  const sm90::TileShape keys80 = sm90::ChooseTileShape(256, true, TileKind::kPagedKeys80);
  EXPECT_EQ(lanes.block_m, keys80.block_m);
  EXPECT_EQ(lanes.block_n, keys80.block_n);
  EXPECT_EQ(sm90::KStagesOf(lanes), sm90::KStagesOf(keys80));
  EXPECT_EQ(sm90::VStagesOf(lanes), sm90::VStagesOf(keys80));
  EXPECT_EQ(sm90::SmemBytes(256, 2, true, kLanes),
            sm90::SmemBytes(256, 2, true, TileKind::kPagedKeys80));
  EXPECT_FALSE(sm90::HasTileShape(256, /*paged=*/false, kLanes));
  EXPECT_FALSE(sm90::HasTileShape(128, /*paged=*/true, kLanes));
  EXPECT_STREQ(sm90::Sm90VariantName(sm90::Sm90Variant::kPagedKeys80Lanes), "paged_keys80_lanes");
  EXPECT_STREQ(sm90::Sm90VariantName(sm90::Sm90Variant::kPagedKeys64), "paged_keys64");
}

// The wide key tiles: 128-row m-blocks as the standard tile (the keys change only the kernel's
// loop), and shared memory within a CTA's: 160 keys keep O's own buffer, 176 stage O in Q's space.
TEST(KernelPathTest, WideKeyTilesFitSharedMemory) {
  using sm90::TileKind;
  EXPECT_EQ(sm90::ChooseTileShape(128, false, TileKind::kKeys160).block_n, 160);
  EXPECT_EQ(sm90::ChooseTileShape(128, false, TileKind::kKeys176).block_n, 176);
  EXPECT_FALSE(sm90::HasTileShape(128, /*paged=*/true, TileKind::kKeys160));
  EXPECT_FALSE(sm90::HasTileShape(64, false, TileKind::kKeys176));
  EXPECT_TRUE(sm90::SeparateO(128, 2, false, TileKind::kKeys160));
  EXPECT_FALSE(sm90::SeparateO(128, 2, false, TileKind::kKeys176));
  EXPECT_LE(sm90::SmemBytes(128, 2, false, TileKind::kKeys160), sm90::kMaxSmemBytes);
  EXPECT_LE(sm90::SmemBytes(128, 2, false, TileKind::kKeys176), sm90::kMaxSmemBytes);
  sm90::Schedule s;
  ASSERT_TRUE(sm90::BuildSchedule(Fixed(2, 4096, 4096, 32, 32, 128), {}, 128, 2, H100(), &s,
                                  TileKind::kKeys176)
                  .ok());
  EXPECT_EQ(s.m_blocks, 32);
  EXPECT_FALSE(sm90::BuildSchedule(Fixed(2, 4096, 4096, 32, 32, 64), {}, 64, 2, H100(), &s,
                                   TileKind::kKeys160)
                   .ok());
}

// The stream-K tail: the last full round and the remainder are divided by key tiles, so that
// every CTA's share is at least one tile's keys; whole rounds, less than a round and one key tile
// per tile keep the round-robin.
TEST(KernelPathTest, StreamKPlansTheLastRoundAndTheRemainder) {
  sm90::Schedule s;
  s.num_tiles = 2048;  // 15.5 rounds of 132
  ASSERT_TRUE(sm90::PlanStreamK(&s, 132, 26));
  EXPECT_EQ(s.dp_tiles, 14 * 132);
  EXPECT_EQ(s.sk_key_tiles, 26);
  EXPECT_GE((s.num_tiles - s.dp_tiles) * s.sk_key_tiles / 132, s.sk_key_tiles);
  for (const auto& [tiles, grid, key_tiles] :
       {std::tuple{264, 132, 8}, std::tuple{100, 132, 8}, std::tuple{300, 132, 1}}) {
    s.num_tiles = tiles;
    EXPECT_FALSE(sm90::PlanStreamK(&s, grid, key_tiles)) << tiles << " " << key_tiles;
    EXPECT_EQ(s.dp_tiles, tiles);
  }
  s.num_tiles = 133;  // one round and one tile: no full round left to the round-robin
  ASSERT_TRUE(sm90::PlanStreamK(&s, 132, 2));
  EXPECT_EQ(s.dp_tiles, 0);
}

// kAuto takes the stream-K tail for 160-key tiles from kStreamKMinSeqlenKv keys on; the
// stream_k variant wherever a launch reaches it; the other variants never.
TEST(KernelPathTest, StreamKByVariantKindAndLength) {
  using sm90::TileKind;
  ASSERT_EQ(sm90::ActiveVariant(), sm90::Sm90Variant::kAuto);
  const int kMin = sm90::kStreamKMinSeqlenKv;
  EXPECT_TRUE(sm90::UseStreamK(TileKind::kKeys160, kMin));
  EXPECT_FALSE(sm90::UseStreamK(TileKind::kKeys160, kMin - 1));
  EXPECT_FALSE(sm90::UseStreamK(TileKind::kThreeConsumers, 16384));
  EXPECT_FALSE(sm90::UseStreamK(TileKind::kStandard, 16384));
  sm90::testing::SetVariant(sm90::Sm90Variant::kStreamK);
  EXPECT_TRUE(sm90::UseStreamK(TileKind::kThreeConsumers, 1024));
  EXPECT_TRUE(sm90::UseStreamK(TileKind::kStandard, 1024));
  sm90::testing::SetVariant(sm90::Sm90Variant::kKeys160);
  EXPECT_FALSE(sm90::UseStreamK(TileKind::kKeys160, 16384));
  sm90::testing::SetVariant(sm90::Sm90Variant::kAuto);
}

TEST(KernelPathTest, FixedScheduleSectionsFitHalfTheL2) {
  sm90::Schedule s;
  // K + V of one head at 4096 x 128 fp16: 2 MiB; half of 50 MiB holds 12 heads.
  ASSERT_TRUE(sm90::BuildSchedule(Fixed(2, 4096, 4096, 32, 32, 128), {}, 128, 2, H100(), &s).ok());
  EXPECT_EQ(s.m_blocks, 32);
  EXPECT_EQ(s.num_tiles, 32 * 64);
  EXPECT_EQ(s.section_heads, 12);
  // GQA group 4: query heads sharing a K/V head share its bytes.
  ASSERT_TRUE(sm90::BuildSchedule(Fixed(2, 4096, 4096, 32, 8, 128), {}, 128, 2, H100(), &s).ok());
  EXPECT_EQ(s.section_heads, 48);
}

}  // namespace
}  // namespace flashkv::cuda
