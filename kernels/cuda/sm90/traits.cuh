#pragma once

// Compile-time facts of one sm90 instantiation (element type x head dim x K/V layout): tile sizes,
// the shared memory map, TMA transaction sizes and the wgmma operand addressing. Every tile is
// stored as 64-column chunks of 128-byte rows, 128-byte swizzled (16-byte unit u of row r sits at
// unit u ^ (r % 8)): the layout TMA's SWIZZLE_128B writes and wgmma's swizzle mode 1 reads.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "sm90/ptx.cuh"
#include "sm90/tile_shape.h"

namespace flashkv::cuda::sm90 {

// kPaged: K and V come from page pools, each tile as one box of block_n keys or up to kKvBoxes
// boxes of kPagedBoxRows keys (each inside one page); otherwise a tile is one box per 64-column
// chunk. kKind_: the tile table (tile_shape.h's TileKind), which sets block_m, block_n, the
// consumer warpgroups (64 rows each), the thread count and the register budgets.
template <typename Element_, int kHeadDim_, bool kPaged_ = false,
          TileKind kKind_ = TileKind::kStandard>
struct Traits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kPaged = kPaged_;
  static constexpr TileKind kKind = kKind_;
  static constexpr int kConsumerWarpgroups = ConsumerWarpgroupsOf(kKind);
  static constexpr int kConsumerWarps = 4 * kConsumerWarpgroups;
  static constexpr int kThreads = ThreadsFor(kConsumerWarpgroups);
  static constexpr int kProducerRegisters = ProducerRegisters(kConsumerWarpgroups);
  static constexpr int kConsumerRegisters = ConsumerRegisters(kConsumerWarpgroups);
  static constexpr TileShape kShape = ChooseTileShape(kHeadDim, kPaged, kKind);
  static constexpr int kBlockM = kShape.block_m;
  static constexpr int kBlockN = kShape.block_n;
  // Ring depths: K tiles and V tiles in shared memory. Equal in every kind but kPagedKStages3,
  // whose producer issues K one key tile ahead of V (kKLeadsV; sm90/producer.cuh).
  static constexpr int kKStages = KStagesOf(kShape);
  static constexpr int kVStages = VStagesOf(kShape);
  static constexpr bool kKLeadsV = kKStages > kVStages;
  static constexpr int kRowsPerConsumer = 64;  // wgmma M

  static_assert(std::is_same_v<Element, __half> || std::is_same_v<Element, __nv_bfloat16>,
                "the sm90 kernel computes 16-bit inputs");
  static_assert(HasTileShape(kHeadDim, kPaged, kKind),
                "head dim and K/V layout without this sm90 tile shape");
  static_assert(kConsumerWarpgroups >= 2 && kConsumerWarpgroups <= kMaxConsumerWarpgroups,
                "the turn barriers and named-barrier ids are laid out for 2..3 consumers");
  static_assert(kBlockM == kRowsPerConsumer * kConsumerWarpgroups, "64 rows per consumer");
  // The CTA's pool is the launch count (the 64K file over kThreads, in steps of 8, which ptxas
  // takes for kernels that use setmaxnreg) x its warpgroups; a larger sum would leave the
  // consumers' setmaxnreg.inc waiting forever.
  static_assert(kProducerRegisters + kConsumerWarpgroups * kConsumerRegisters <=
                        (1 + kConsumerWarpgroups) * (65536 / kThreads / 8 * 8) &&
                    kConsumerRegisters % 8 == 0 && kProducerRegisters % 8 == 0,
                "setmaxnreg budgets fit the register pool, in steps of 8");
  static_assert(kHeadDim % 64 == 0, "tiles are stored as 64-column (128-byte) swizzle chunks");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "P V steps over keys 16 at a time");
  static_assert(kBlockN % 8 == 0 && kBlockM % 8 == 0, "8-row swizzle atoms");
  // Either order of issue is deadlock-free for any depths (a release of K(j) waits on loads up
  // to V(j - 1), of V(j) on loads up to K(j + 1): both issued before K(j + depth) and
  // V(j + depth)); K runs ahead only where its ring is deeper, the one place it gains a tile.
  static_assert(kKStages >= kVStages && kVStages >= 2, "K's ring at least V's; two V stages");

  static constexpr int kChunks = kHeadDim / 64;     // 64-column chunks of a row
  static constexpr int kChunkRowBytes = 128;
  static constexpr int kQKSteps = kHeadDim / 16;    // k-steps of S = Q K^T
  static constexpr int kPVSteps = kBlockN / 16;     // k-steps of O += P V
  static constexpr int kSRegs = kBlockN / 2;        // S accumulator floats per thread
  static constexpr int kORegs = kHeadDim / 2;       // O accumulator floats per thread

  // Bytes of one chunk of a tile of `rows` rows, and of the whole tile.
  static constexpr int kQChunkBytes = kBlockM * kChunkRowBytes;
  static constexpr int kKvChunkBytes = kBlockN * kChunkRowBytes;
  static constexpr int kQBytes = kQChunkBytes * kChunks;  // = block_m * head_dim * 2
  static constexpr int kKvBytes = kKvChunkBytes * kChunks;
  static_assert(kQChunkBytes % 1024 == 0 && kKvChunkBytes % 1024 == 0,
                "every chunk starts on a swizzle atom");

  // Paged K/V boxes per chunk of a tile: at most kKvBoxes boxes of kPagedBoxRows keys, box j at
  // rows [j * box, (j + 1) * box) of every chunk; the launch picks the box (block_n or
  // kPagedBoxRows keys: host_setup.h's PagedBoxRows).
  // TileKind::kPagedKeys80 instead splits a tile at a page boundary into parts of
  // PagedPartRows boxes (kPagedSplit; sm90/producer.cuh's SplitKeyTile).
  static constexpr bool kPagedSplit = kPaged && kKind == TileKind::kPagedKeys80;
  static constexpr int kKvBoxes = kPaged && !kPagedSplit ? kBlockN / kPagedBoxRows : 1;
  static_assert(!kPaged || kPagedSplit || kBlockN % kPagedBoxRows == 0,
                "a paged tile is a whole number of boxes");
  static_assert(kPagedBoxRows * kChunkRowBytes % 1024 == 0, "every box starts on a swizzle atom");
  // Split tiles: parts are multiples of 16 keys (a tile starts on a multiple of 16 keys, pages
  // are multiples of 64), so every part box starts on a swizzle atom; a tile of at most 80 keys
  // over pages of at least 64 crosses at most one page boundary (it starts at most 48 keys into
  // a page: 48 + 80 <= 2 x 64).
  static_assert(!kPagedSplit || (kBlockN % 16 == 0 && kBlockN <= 80 &&
                                 (kLargestPagedPart >> (kPagedParts - 1)) == 16),
                "split paged tiles: parts of whole 16-key boxes, at most two pages");

  // Shared memory map (offsets from the 1024-aligned base): Q, K stages, V stages, O (when it
  // has its own buffer), barriers.
  static constexpr bool kSeparateO = SeparateO(kHeadDim, sizeof(Element), kPaged, kKind);
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQBytes;
  static constexpr int kVOffset = kKOffset + kKStages * kKvBytes;
  static constexpr int kOOffset = kSeparateO ? kVOffset + kVStages * kKvBytes : kQOffset;
  static constexpr int kBarrierOffset =
      kVOffset + kVStages * kKvBytes + (kSeparateO ? kQBytes : 0);
  static constexpr int kSmemBytes = SmemBytes(kHeadDim, sizeof(Element), kPaged, kKind);
  static_assert(kBarrierOffset + BarrierBytes(kKStages, kVStages) + 1024 <= kSmemBytes,
                "smem map");
  static_assert(kSmemBytes <= kMaxSmemBytes, "fits one Hopper CTA");

  // K-major descriptor (Q as A, K as B) of a tile whose 64-column chunks are kChunkBytes apart,
  // at its first k-step. Step kk (16 columns) is the step's 32 bytes inside the swizzled 128-byte
  // row of chunk kk / 4: KStep<kChunkBytes>(kk) added to the descriptor (the address field is in
  // 16-byte units and never carries: shared addresses stay below 2^18).
  __device__ __forceinline__ static uint64_t KMajorDescriptor(uint32_t tile) {
    return MatrixDescriptor(tile, 16, 1024);
  }
  template <int kChunkBytes>
  static constexpr uint64_t KStep(int kk) {
    return static_cast<uint64_t>(((kk / 4) * kChunkBytes + (kk % 4) * 32) >> 4);
  }

  // N-major descriptor of V (keys x head dim): the head dimension's 64-column chunks are
  // kKvChunkBytes apart, 8-key groups 1024 bytes. Step kk (keys 16 kk .. 16 kk + 15) starts
  // 16 rows further: VStep(kk) added to the descriptor.
  __device__ __forceinline__ static uint64_t VDescriptor(uint32_t v_tile) {
    return MatrixDescriptor(v_tile, kKvChunkBytes, 1024);
  }
  static constexpr uint64_t VStep(int kk) {
    return static_cast<uint64_t>((kk * 16 * kChunkRowBytes) >> 4);
  }

  // Byte offset of 16-byte unit `unit` (8 columns) of `row`.
  template <int kChunkBytes>
  __device__ __forceinline__ static uint32_t UnitOffset(int row, int unit) {
    return (unit / 8) * kChunkBytes + row * kChunkRowBytes + (((unit % 8) ^ (row % 8)) << 4);
  }
};

}  // namespace flashkv::cuda::sm90
