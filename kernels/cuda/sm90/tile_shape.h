#pragma once

// Every tile choice of the sm90 (Hopper: wgmma + TMA, warp-specialised) attention kernel, with the
// reason for each. Host code (launch, path choice) and device code (Traits) read the same table.
//
// Fixed by the design, for every head dim:
//   - 3 warpgroups per CTA: one producer (one thread issues every TMA load) and two consumers.
//     Each consumer owns 64 query rows (wgmma's M), so block_m = 128 and both consumers read the
//     same K/V stage: a K/V byte feeds 128 rows, as in FlashAttention-2's 128-row tile.
//     (TileKind: at head dim 64, three consumers and 192-row tiles; at head dim 128 without a
//     causal mask, 160- or 176-key tiles.)
//   - One CTA per SM (setmaxnreg moves the producer's registers to the consumers: 24 + 2 x 240
//     per thread-slot = the 168 x 384 a 384-thread CTA starts with), persistent over the tiles.
//   - Shared memory: Q (block_m x head_dim), then `stages` K tiles and `stages` V tiles of
//     block_n x head_dim, every operand in 128-byte-swizzled 64-column chunks (TMA writes them,
//     wgmma reads them). O is staged for its TMA store in its own buffer where that fits
//     (SeparateO), else in Q's space, which the last S = Q K^T of a tile frees.
// Budgets: 227 KB of shared memory per block; 240 registers a consumer thread hold O (head_dim / 2
// floats), S (block_n / 2 floats), P (block_n / 4 16-bit pairs) and addressing.
//
// Paged K/V (`paged`, FLASHKV_ENABLE_SM90_PAGED): the same kernel, with each K/V tile loaded as
// boxes of kPagedBoxRows keys, each box from the page the block table names. The tile must be a
// whole number of boxes, which changes head dim 256 only.

#include <cstdint>

namespace flashkv::cuda::sm90 {

struct TileShape {
  int block_m;  // query rows per CTA tile (64 per consumer warpgroup)
  int block_n;  // keys per K/V tile (the N of S = Q K^T, the K of O += P V)
  int stages;   // K/V tiles in flight (TMA pipeline depth): V's ring, and K's unless k_stages
  // K's ring where it is deeper than V's (TileKind::kPagedKStages3), else 0: `stages` K tiles.
  int k_stages = 0;
};

// The depth of each ring of a shape: K tiles and V tiles in shared memory.
constexpr int KStagesOf(const TileShape& s) { return s.k_stages > 0 ? s.k_stages : s.stages; }
constexpr int VStagesOf(const TileShape& s) { return s.stages; }

// The kernel shapes: which tile table a launch's kernel has (a template parameter of Traits; host
// code picks it per launch with host_setup.h's ChooseTileKind, so the schedule, the TMA boxes and
// the kernel agree).
enum class TileKind : int {
  kStandard = 0,        // two consumers; ChooseTileShape's table per head dim (every launch)
  kThreeConsumers = 1,  // head dim 64, contiguous: 192 x 128 over three consumers
  kKeys160 = 2,         // head dim 128, contiguous, not causal: 128 x 160, O in its own buffer
  kKeys176 = 3,         // head dim 128, contiguous, not causal: 128 x 176, O staged in Q's space
  kPagedKeys80 = 4,     // head dim 256, paged: 128 x 80 as on contiguous K/V, boxes split at pages
  kPagedKStages3 = 5,   // head dim 256, paged: 128 x 64, three K stages and two V stages
  kPagedKeys80Lanes = 6,  // kPagedKeys80's tiles, their loads issued by one thread per chunk
};

// The kinds whose paged tiles are split at page boundaries (80-key tiles: HasPagedKeys80Shape).
constexpr bool IsPagedSplitKind(TileKind kind) {
  return kind == TileKind::kPagedKeys80 || kind == TileKind::kPagedKeys80Lanes;
}

// Consumer warpgroups of the standard kernels; TileKind::kThreeConsumers has
// kMaxConsumerWarpgroups.
inline constexpr int kConsumerWarpgroups = 2;
inline constexpr int kMaxConsumerWarpgroups = 3;

constexpr int ConsumerWarpgroupsOf(TileKind kind) {
  return kind == TileKind::kThreeConsumers ? kMaxConsumerWarpgroups : kConsumerWarpgroups;
}

constexpr int ThreadsFor(int consumer_warpgroups) { return 128 * (1 + consumer_warpgroups); }

// setmaxnreg budgets per thread. The 64K-register file is shared by every thread-slot of the CTA,
// and the counts are multiples of 8: two consumers, 24 + 2 x 240 = 504 of the 512 per warpgroup
// lane; three, 32 + 3 x 160 = 512 (FlashAttention-3's split; 24 would free nothing, as a consumer
// cannot take 8 more registers without the others).
constexpr int ProducerRegisters(int consumer_warpgroups) {
  return consumer_warpgroups == 2 ? 24 : 32;
}
constexpr int ConsumerRegisters(int consumer_warpgroups) {
  return consumer_warpgroups == 2 ? 240 : 160;
}

// Keys per TMA box of a paged K/V tile where pages do not hold whole tiles (pages that do are
// loaded one tile per box, as contiguous K/V: host_setup.h's PagedBoxRows): every box lies inside
// one page when page_size is a multiple of it, so paged launches with such pages take the sm90
// kernel (sm80 gathers rows for the others: a 16-key page would cost 8 boxes x chunks of TMA issue
// per tile). 64 divides every paged block_n below and keeps boxes of whole 8-row swizzle atoms on
// 8 KB boundaries.
inline constexpr int kPagedBoxRows = 64;

// The three-consumer tile (Sm90Variant::kThreeConsumers), at head dim 64, contiguous or paged:
// 192 query rows x 128 keys. Each consumer holds O 32 + S 64 + P 32 registers within 160
// (a 192-key tile would need S 96 + P 48 and spill; FlashAttention-3 then stages P in shared
// memory). Q 24 KB + 4 x 32 KB stages + O 24 KB = 176 KB: the baseline's 4 stages, each K/V byte
// now feeding 192 rows. Head dims 128 and 256 need O 64 / 128 registers: not within 160 beside S.
// Paged launches take it too (its 128-key tile is one or two 64-key boxes, as the standard
// tile's), so that paged prefill keeps up with contiguous prefill at head dim 64.
constexpr bool HasThreeConsumerShape(int head_dim, bool /*paged*/) { return head_dim == 64; }

// The wide key tiles (Sm90Variants kKeys160, kKeys176), at head dim 128 on contiguous K/V for
// launches without a causal mask. The standard tile's registers are O 64 + S 64 + P 32 = 160 of a
// consumer's 240, so a key tile of 160 (S 80 + P 40: 184) or 176 (S 88 + P 44: 196, the tile
// FlashAttention-3 takes here) still fits, and every per-key-tile cost that does not grow with the
// keys (the O rescale's 64 multiplies, the row maxima's shuffles, barrier waits and turn
// hand-overs, the gap between one GEMM batch and the next) is paid once per 160 or 176 keys
// instead of 128. Against it: a sequence that is not a multiple of the tile computes a partly
// masked last tile (S 4096: 4160 keys' work at 160, 4224 at 176). Shared memory: 160 keeps O's own
// buffer (Q 32 KB + 2 x 80 KB + O 32 KB = 224 KB), 176 does not (Q 32 + 2 x 88 = 208 KB; O then
// waits in Q's space and the next tile's Q loads after the epilogue). Causal launches keep 128:
// wider tiles on the diagonal mask more.
constexpr bool HasWideKeyShape(int head_dim, bool paged) { return head_dim == 128 && !paged; }
// Paged head dim 256 on the contiguous kernel's 80-key tiles (TileKind::kPagedKeys80, and
// kPagedKeys80Lanes, kAuto's, whose loads four producer threads issue by chunk). 80 is
// not a whole number of 64-key boxes, and one box per 16 keys (the only size dividing both) cost
// 40 TMA issues per K and V tile: 1.18-1.34x contiguous, TMA-bound. Here a tile lies in at most
// two pages (pages are multiples of 64 keys and a tile starts on a multiple of 16, so it crosses
// at most one page boundary), and each page's part is loaded as 64-, 32- and 16-key boxes (a
// part of 16 k keys takes one box per bit of k: at most 2 per part, 2-3 per tile and chunk
// instead of 5), or as one 80-key box when the tile lies inside one page. Shared memory as on
// contiguous K/V: Q 64 KB + 2 x 80 KB stages.
constexpr bool HasPagedKeys80Shape(int head_dim, bool paged) { return head_dim == 256 && paged; }
// Paged head dim 256 on the 64-key tiles with a third K stage (Sm90Variant::kPagedKStages3).
// Hypothesis: at 64 keys the paged kernel's K loads are latency-bound (paged / contiguous
// 1.09-1.11 at page 64, S 8192, causal, H100). K and V share one ring depth, and the producer
// issues K(n) then V(n), so K can run at most two key tiles ahead, bounded by V's ring, although
// the consumers need K(n + 1) (its S = Q K^T) before V(n) (P V, issued beside it). A third K
// stage, with the producer issuing K one key tile ahead of V (sm90/producer.cuh), lets K run a
// tile further. Shared memory: Q 64 KB + 3 x 32 KB K + 2 x 32 KB V = 224 KB; with the barriers
// (148 bytes) and the 1 KB alignment slack 225.1 KB, under the 227 KB. O stays in Q's space.
constexpr bool HasPagedKStages3Shape(int head_dim, bool paged) {
  return head_dim == 256 && paged;
}
// The part boxes of kPagedKeys80, largest first: box i has PagedPartRows(i) keys (64, 32, 16), and
// a part of r keys (a multiple of 16 below 128) takes the boxes whose sizes make up r.
inline constexpr int kPagedParts = 3;
inline constexpr int kLargestPagedPart = 64;
constexpr int PagedPartRows(int i) { return kLargestPagedPart >> i; }

constexpr TileShape ChooseTileShape(int head_dim, bool paged = false,
                                    TileKind kind = TileKind::kStandard) {
  switch (kind) {
    case TileKind::kStandard:
      break;
    case TileKind::kThreeConsumers:
      return HasThreeConsumerShape(head_dim, paged) ? TileShape{192, 128, 4} : TileShape{0, 0, 0};
    case TileKind::kKeys160:
      return HasWideKeyShape(head_dim, paged) ? TileShape{128, 160, 2} : TileShape{0, 0, 0};
    case TileKind::kKeys176:
      return HasWideKeyShape(head_dim, paged) ? TileShape{128, 176, 2} : TileShape{0, 0, 0};
    case TileKind::kPagedKeys80:
    case TileKind::kPagedKeys80Lanes:
      return HasPagedKeys80Shape(head_dim, paged) ? TileShape{128, 80, 2} : TileShape{0, 0, 0};
    case TileKind::kPagedKStages3:
      return HasPagedKStages3Shape(head_dim, paged) ? TileShape{128, 64, 2, 3}
                                                    : TileShape{0, 0, 0};
  }
  switch (head_dim) {
    case 64:
      // Registers: O 32 + S 64 + P 32 leave room; smem is small (Q 16 KB, 32 KB per stage), so
      // 4 stages keep 3 K/V tiles in flight behind the short (K = 64) GEMMs. 144 KB.
      return TileShape{128, 128, 4};
    case 128:
      // O 64 + S 64 + P 32 registers. Q 32 KB + 2 x 64 KB stages = 160 KB; a third stage would
      // fit (224 KB) but the two GEMMs of a tile already outlast one tile's load at 3 TB/s.
      return TileShape{128, 128, 2};
    case 256:
      // O alone is 128 registers, so S is kept to 40 (80 keys, FlashAttention-3's choice):
      // Q 64 KB + 2 x 80 KB stages = 224 KB, the most that fits beside the barriers. Paged: 80 is
      // not a whole number of 64-key boxes, so the standard paged tile has 64 keys (S 32
      // registers; 192 KB; a third stage of both K and V would need 256 KB, of K alone 224 KB:
      // kPagedKStages3); kAuto takes the split 80-key tiles instead (HasPagedKeys80Shape).
      return paged ? TileShape{128, 64, 2} : TileShape{128, 80, 2};
    default:
      // 32 and 96 stay on sm80: they are not multiples of the 64-column chunk a 128-byte-swizzled
      // TMA box holds (32 would need the 64-byte swizzle mode, 96 a mixed chunk layout). 192
      // would fit (block_n 96: Q 48 KB + 2 x 72 KB stages; 128 keys would need 240 KB) but is not
      // a target shape yet and each head dim costs four kernels of build time.
      return TileShape{0, 0, 0};
  }
}

constexpr bool HasTileShape(int head_dim, bool paged = false, TileKind kind = TileKind::kStandard) {
  return ChooseTileShape(head_dim, paged, kind).block_m != 0;
}

inline constexpr int kMaxSmemBytes = 227 * 1024;

// The dynamic schedule's ring of tile numbers from the producer to the consumers (sm90/smem.cuh):
// two slots, so the producer can publish tile u + 1 while the consumers still read tile u.
inline constexpr int kTileRingSlots = 2;

// Barrier area: q_full, q_free, 2 per K stage and 2 per V stage (full/empty), 2 per ring slot
// (full/empty), then the ring's int slots and one int per consumer warpgroup (the stream-K arrival
// order it broadcasts). Reserved in every kernel so that one smem map serves every schedule.
constexpr int BarrierBytes(int k_stages, int v_stages) {
  return 8 * (2 + 2 * k_stages + 2 * v_stages + 2 * kTileRingSlots) + 4 * kTileRingSlots +
         4 * kMaxConsumerWarpgroups;
}

// Bytes of dynamic shared memory without a separate O buffer: operands, barriers, and 1 KB of
// slack to align the base to the 1024-byte swizzle atom.
constexpr int SmemBytesSharingQ(int head_dim, int element_bytes, bool paged = false,
                                TileKind kind = TileKind::kStandard) {
  const TileShape s = ChooseTileShape(head_dim, paged, kind);
  const int q = s.block_m * head_dim * element_bytes;
  const int kv = (KStagesOf(s) + VStagesOf(s)) * s.block_n * head_dim * element_bytes;
  return q + kv + BarrierBytes(KStagesOf(s), VStagesOf(s)) + 1024;
}

// O gets its own buffer where it fits (head dims 64, 128): the next tile's Q then loads while
// this tile's O is stored, instead of after it (FlashAttention-3 does the same). At 256 it does
// not fit, and O is staged in Q's space.
constexpr bool SeparateO(int head_dim, int element_bytes, bool paged = false,
                         TileKind kind = TileKind::kStandard) {
  return SmemBytesSharingQ(head_dim, element_bytes, paged, kind) +
             ChooseTileShape(head_dim, paged, kind).block_m * head_dim * element_bytes <=
         kMaxSmemBytes;
}

constexpr int SmemBytes(int head_dim, int element_bytes, bool paged = false,
                        TileKind kind = TileKind::kStandard) {
  return SmemBytesSharingQ(head_dim, element_bytes, paged, kind) +
         (SeparateO(head_dim, element_bytes, paged, kind)
              ? ChooseTileShape(head_dim, paged, kind).block_m * head_dim * element_bytes
              : 0);
}

// Varlen and paged launches carry their longest-first sequence order in the kernel parameters
// (see sm90/params.h); larger batches take the sm80 path.
inline constexpr int kMaxVarlenSequences = 512;

// Tile numbers are int, and a CTA's next tile is its current one + gridDim.x (or the dynamic
// counter + gridDim.x): staying below 2^30 keeps that sum from overflowing.
inline constexpr int64_t kMaxTiles = int64_t{1} << 30;

// Variants of the contiguous kernel under measurement, chosen at run time (process-wide:
// host_setup.h's testing::SetVariant) so that one process can time them against each other and
// against cuDNN on the same tensors. kernels/cuda/NOTES.md has each one's prediction.
enum class Sm90Variant : int {
  kBaseline = 0,
  // Causal launches (fixed and varlen, not paged): tiles handed out by an atomic counter in
  // longest-first order instead of the static round-robin, so a CTA that finishes early takes
  // the next tile (FlashAttention-3's scheduler). Non-causal tiles are equal: static is already
  // balanced there, so they keep it.
  kDynamicSchedule = 1,
  // The default: the dynamic schedule for causal launches with more than two tiles per SM, the
  // static order otherwise. Measured on an H100 (docs/performance.md, "Causal tile scheduling"):
  // the counter gained 4-10% on causal launches of 512+ tiles and lost 10% on one of 256 tiles
  // (D 256, S 1024), where a CTA holds at most two tiles, longest-first pairing already balances
  // them, and the counter's memset and atomics are pure cost. At head dim 64 on contiguous K/V it
  // also takes kThreeConsumers' 192-row tiles, except for launches with queries shorter than
  // kThreeConsumerCausalMinSeqlen (causal) or kThreeConsumerMinSeqlen (not), and at head dim
  // 128 without a causal mask kKeys160's tiles from kWideKeysMinSeqlenKv keys on, with kStreamK's
  // tail for fixed-length launches from kStreamKMinSeqlenKv keys on, and at head dim 256
  // (kLazyRescaleHeadDim) kLazyRescale's conditional O rescale on both schedules (host_setup.h
  // has the measurements behind each).
  kAuto = 2,
  // Every launch (fixed, varlen, paged; causal or not) with the conditional O rescale of
  // FlashAttention-4 (sm90/consumer_mainloop.cuh, LazyRowUpdate): a row's softmax reference
  // moves only when a key tile's maximum exceeds it by more than kLazyRescaleLog2, and a warp
  // skips the O multiply when none of its rows moved. Tiles keep the baseline's static schedule,
  // so an A/B against kBaseline isolates the rescale.
  kLazyRescale = 3,
  // Head dim 64 (fixed, varlen and paged): 192-row tiles over three consumer warpgroups at 160
  // registers each (HasThreeConsumerShape), so a third group's softmax is in flight beside the
  // other two's (FlashAttention-3's head-dim-64 shape); tiles scheduled as under kAuto. Other
  // head dims take kAuto's (the default) kernels unchanged.
  kThreeConsumers = 4,
  // Head dim 128, contiguous launches (fixed and varlen) without a causal mask: 160-key
  // (kKeys160) or 176-key (kKeys176) tiles at every length (HasWideKeyShape has the budgets);
  // tiles scheduled as under kAuto. Every other launch takes kAuto's kernels unchanged.
  kKeys160 = 5,
  kKeys176 = 6,
  // kAuto's kernels, with a stream-K tail for fixed-length launches without a causal mask whose
  // tiles are not a whole number of rounds of the grid (sm90/tile_scheduler.cuh): the last
  // round's idle SMs take a share of its keys. Other launches take kAuto's kernels unchanged.
  kStreamK = 7,
  // kAuto's kernels, but paged launches at head dim 256 on 80-key tiles loaded in boxes split at
  // page boundaries, all issued by one producer thread (TileKind::kPagedKeys80; kAuto issues them
  // by chunk, kPagedKeys80Lanes), at every page size. Other launches take kAuto's kernels
  // unchanged.
  kPagedKeys80 = 8,
  // kAuto's kernels, but paged launches at head dim 256 on 64-key tiles (every sm90 page size is
  // a multiple of 64, so each tile is one box in one page) with three K stages and two V stages,
  // the producer issuing K one key tile ahead of V (TileKind::kPagedKStages3,
  // HasPagedKStages3Shape has the hypothesis). Other launches take kAuto's kernels unchanged.
  kPagedKStages3 = 9,
  // kPagedKeys80's kernels (paged head dim 256 on 80-key tiles split at page boundaries, at every
  // page size), but each split tile's TMA loads issued by four producer threads, one per 64-column
  // chunk, one in each warp of the producer warpgroup, instead of all by one thread
  // (TileKind::kPagedKeys80Lanes; sm90/producer.cuh's ProduceByChunk has the hypothesis). Since
  // the sixth session's H100 measurement kAuto takes these kernels too (host_setup.h,
  // ChooseTileKind); the variant stays so that old device scripts keep their meaning.
  kPagedKeys80Lanes = 10,
  // kAuto's kernels, but paged launches at head dim 256 on 64-key tiles of one box (TileKind::
  // kStandard), kAuto's choice at pages of 64 keys before the split tiles were issued by chunk:
  // the reference for A/B runs against kAuto, and paged_k3's two-stage twin.
  kPagedKeys64 = 11,
};
inline constexpr int kNumSm90Variants = 12;

// Sm90Variant::kLazyRescale's threshold, in the log2 units of the scaled scores: probabilities
// are taken against a reference at most this far below the row's true maximum, so they stay
// <= 2^8 = 256 (fp16's largest is 65504; bf16 has fp32's range), and the fp32 row sum and O
// accumulators grow by at most 2^8 over an exact reference. Large enough that random and real
// score rows settle after their first key tile; small enough to keep the 16-bit P exact in range.
inline constexpr float kLazyRescaleLog2 = 8.f;

constexpr const char* Sm90VariantName(Sm90Variant v) {
  switch (v) {
    case Sm90Variant::kBaseline:
      return "baseline";
    case Sm90Variant::kDynamicSchedule:
      return "dynamic_schedule";
    case Sm90Variant::kAuto:
      return "auto";
    case Sm90Variant::kLazyRescale:
      return "lazy_rescale";
    case Sm90Variant::kThreeConsumers:
      return "three_consumers";
    case Sm90Variant::kKeys160:
      return "keys160";
    case Sm90Variant::kKeys176:
      return "keys176";
    case Sm90Variant::kStreamK:
      return "stream_k";
    case Sm90Variant::kPagedKeys80:
      return "paged_keys80";
    case Sm90Variant::kPagedKStages3:
      return "paged_k3";
    case Sm90Variant::kPagedKeys80Lanes:
      return "paged_keys80_lanes";
    case Sm90Variant::kPagedKeys64:
      return "paged_keys64";
  }
  return "unknown";
}

}  // namespace flashkv::cuda::sm90
