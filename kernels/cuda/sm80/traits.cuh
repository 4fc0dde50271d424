#pragma once

// Compile-time description of one sm80 attention kernel: element type, head dim, the tile shape
// chosen by tile_shape.h, the shared-memory layout, and the checks that keep them consistent.

#include <cstdint>

#include "sm80/tile_shape.h"

namespace flashkv::cuda::sm80 {

// Shared-memory tiles are [rows, head_dim] of 16-bit elements stored as column blocks of
// kBlockCols elements (128 or 64 bytes a row), 16-byte chunks XOR-swizzled within a block so that
// the 8 row addresses of an ldmatrix phase, and the 8 chunks a cp.async phase writes, fall in
// distinct banks.
template <int kRows, int kHeadDim>
struct SmemTile {
  static constexpr int kBlockCols = kHeadDim % 64 == 0 ? 64 : 32;
  static constexpr int kChunksPerBlockRow = kBlockCols / 8;  // 16-byte chunks
  static constexpr int kBytes = kRows * kHeadDim * 2;
  static_assert(kHeadDim % kBlockCols == 0, "head dim must be a multiple of the swizzle block");
  static_assert(kRows % 8 == 0, "swizzle repeats every 8 rows");

  __device__ __forceinline__ static int Swizzle(int row, int within) {
    if constexpr (kBlockCols == 64) {
      return within ^ (row % 8);
    } else {
      return within ^ ((row / 2) % 4);  // two 64-byte rows share each 128-byte bank line
    }
  }

  // Byte offset of 16-byte chunk `chunk` (head-dim columns 8*chunk..8*chunk+7) of row `row`.
  __device__ __forceinline__ static uint32_t Offset(int row, int chunk) {
    const int block = chunk / kChunksPerBlockRow;
    const int within = chunk % kChunksPerBlockRow;
    return static_cast<uint32_t>(block * (kRows * kBlockCols * 2) + row * (kBlockCols * 2) +
                                 Swizzle(row, within) * 16);
  }

  // ldmatrix loops address rows row + 8i and chunks 2s + half (half in {0, 1}) for unrolled i and
  // s. Within a swizzle block, ((2s mod B) | half) ^ sw(row) = (2s mod B) ^ (half ^ sw(row)), and
  // row * rowbytes has no bits where the chunk index sits, so every such address is
  //   (base ^ ((2s mod B) * 16)) + compile-time constant,  base = row * rowbytes + (half ^ sw(row)) * 16:
  // one register per operand and thread, one XOR per ldmatrix (ldmatrix takes the constant as its
  // immediate). Keeping one register per (i, s), or per s, spilled the wide path's accumulators.
  struct LdsmOffsets {
    uint32_t base;
  };
  __device__ __forceinline__ static LdsmOffsets PrepareLdsm(int row, int half) {
    return LdsmOffsets{static_cast<uint32_t>(row * (kBlockCols * 2) + Swizzle(row, half) * 16)};
  }
  // Offset of (row + row_add, chunk 2 * step + half); row_add a multiple of 8. Call it with
  // row_add and step fixed by unrolled loops, so that the XOR mask and the addition fold.
  __device__ __forceinline__ static uint32_t Ldsm(const LdsmOffsets& o, int row_add, int step) {
    const int block = (2 * step) / kChunksPerBlockRow;
    const uint32_t mask = static_cast<uint32_t>(((2 * step) % kChunksPerBlockRow) * 16);
    return (o.base ^ mask) +
           static_cast<uint32_t>(block * (kRows * kBlockCols * 2) + row_add * (kBlockCols * 2));
  }
};

template <typename Element_, int kHeadDim_>
struct Traits {
  using Element = Element_;
  static constexpr TileShape kShape = ChooseTileShape(kHeadDim_);

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kShape.block_m;
  static constexpr int kBlockN = kShape.block_n;
  static constexpr int kWarps = kShape.warps;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStages = kShape.stages;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row

  // Wide path: warp w owns rows [w * kWideRows, (w + 1) * kWideRows) and every key of a tile.
  static constexpr int kWideRows = kBlockM / kWarps;
  static constexpr int kWideMmaM = kWideRows / 16;
  static constexpr bool kWideQInRegisters = kShape.q_in_registers;
  // Narrow path: 16 rows; warp w < kNarrowWarps owns keys [w * kNarrowCols, (w+1) * kNarrowCols).
  static constexpr int kNarrowWarps = NarrowWarps(kShape);
  static constexpr int kNarrowCols = kBlockN / kNarrowWarps;
  static constexpr bool kNarrowQInRegisters = kHeadDim <= 128;  // 32 registers at most

  using QTile = SmemTile<kBlockM, kHeadDim>;
  using KvTile = SmemTile<kBlockN, kHeadDim>;

  // Layout: Q (reused to stage O) | stages x (K, V) | paged row offsets (a ring of one kBlockN
  // int64 slot per stage).
  static constexpr int kSmemQ = QTile::kBytes;
  static constexpr int kSmemStage = 2 * KvTile::kBytes;
  static constexpr int kSmemKv = kStages * kSmemStage;
  static constexpr int kSmemRowOffsets = kStages * kBlockN * 8;
  static constexpr int kSmemBytes = kSmemQ + kSmemKv + kSmemRowOffsets;

  // Narrow-path merge scratch, laid over the K/V stages once the main loop is done: each warp's
  // 16 x head_dim float32 output (rows padded by 8 floats against bank conflicts) and row stats.
  static constexpr int kMergeRowFloats = kHeadDim + 8;
  static constexpr int kSmemMergeO = kNarrowWarps * 16 * kMergeRowFloats * 4;
  static constexpr int kSmemMergeStats = 2 * kNarrowWarps * 16 * 4;

  static_assert(kShape.block_m > 0, "no tile shape for this head dim");
  static_assert(kHeadDim % 32 == 0, "head dim must be a multiple of 32");
  static_assert(kBlockM % (16 * kWarps) == 0, "each warp needs whole 16-row MMA tiles");
  static_assert(kWideMmaM >= 1 && kWideMmaM <= 2, "accumulators sized for 1 or 2 row tiles");
  static_assert(kBlockN % 16 == 0 && kNarrowCols % 16 == 0, "keys come in 16-wide MMA steps");
  static_assert(kStages >= 2, "the pipeline overlaps one tile's load with the previous compute");
  static_assert(kThreads >= kBlockN, "one thread stages each paged row offset of a tile");
  static_assert(kSmemMergeO + kSmemMergeStats <= kSmemKv, "merge scratch must fit the K/V stages");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory exceeds the sm90 per-block limit");
};

}  // namespace flashkv::cuda::sm80
