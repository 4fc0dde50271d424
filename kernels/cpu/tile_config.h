#pragma once

// The tile heuristic of the CPU attention kernel: every tile size is chosen here, once, and both
// the kernels (attention_kernel_impl.h, through AttentionTraits) and the task planner read it.

#include <cstdint>

#include "cpu/isa.h"

namespace flashkv::cpu {

// A register-blocked GEMM tile of C: rows × cols floats held in (rows × cols / lanes) registers.
struct MicroTile {
  int rows = 0;
  int cols = 0;  // a multiple of the vector width
};

struct TileShape {
  int vector_floats = 0;  // float lanes of one SIMD register
  MicroTile score;        // Sᵀ = K · Qᵀ: rows are keys, cols are query rows (padded to cols)
  MicroTile pv;           // O += P · V: rows are query rows, cols are head-dim columns
  int block_n = 0;        // keys per K/V tile
  int max_rows = 0;       // query rows (heads × positions) per task, a multiple of score.cols
  int dot_rows = 0;       // tasks with fewer rows compute scores as dot products (decode)
};

// Register tiles measured fastest for the k lengths of the attention tile (64..256) on the
// development machine (AMD Zen 4), by GFLOP/s of the micro-kernel alone:
//   AVX-512  4 × 64 (16 accumulators, 4 loads + 4 broadcasts per 16 FMAs): 98% of peak;
//            6 × 32 where 64 columns do not divide: 90%; 8 × 32 and 12 × 32: 88-90%.
//   AVX2     3 × 32 (12 accumulators; B comes from memory operands of the FMAs): 81%;
//            6 × 16, the classic SGEMM tile: 69% (the P·V product, with strided A, only 45%).
//   SSE2     3 × 16: 30% of the FMA peak (no FMA: separate multiply and add); 6 × 8: 24%.
//   NEON     not measured; 6 × 16 fills 24 of the 32 registers like the AVX-512 tile.
constexpr MicroTile ChooseMicroTile(Isa isa, bool cols_may_be_64) {
  switch (isa) {
    case Isa::kAvx512:
      return cols_may_be_64 ? MicroTile{4, 64} : MicroTile{6, 32};
    case Isa::kAvx2:
      return MicroTile{3, 32};
    case Isa::kGeneric:
      break;
  }
  return kTargetIsAarch64 ? MicroTile{6, 16} : MicroTile{3, 16};
}

constexpr TileShape ChooseTileShape(Isa isa, int head_dim) {
  TileShape s;
  s.vector_floats = VectorBytes(isa) / 4;
  // Query rows per task: 64 rows reuse each loaded K/V tile 64 times. Beyond D = 128 the query and
  // output tiles (2 × rows × D floats) would outgrow a 256 KiB L2, so 32 rows, except on AVX-512
  // CPUs, all of which have at least 1 MiB of L2.
  s.max_rows = head_dim <= 128 || isa == Isa::kAvx512 ? 64 : 32;
  s.score = ChooseMicroTile(isa, s.max_rows % 64 == 0);
  s.pv = ChooseMicroTile(isa, head_dim % 64 == 0);
  // 64 keys per tile: the K and V tiles (2 × 64 × D floats, 64 KiB at D = 128) stay in L2 next
  // to the query and output tiles, and the per-tile online-softmax rescale of the output
  // (rows × D) stays under 2% of the tile's FLOPs.
  s.block_n = 64;
  // The score GEMM pads a task's rows to whole micro tiles; under a quarter of a tile (decode: one
  // position × the heads of a group) the padding wastes more than per-row dot products over the
  // head dim lose to horizontal sums, so those compute the scores instead.
  s.dot_rows = s.score.cols / 4;
  return s;
}

// Offsets (in floats, 64-byte aligned) of the per-thread workspace a task needs. `padded` below is
// the task's row count rounded up to whole vectors (dot-product scores) or micro tiles (GEMM).
struct WorkspaceLayout {
  int64_t q = 0;          // queries, float32, pre-scaled by scale · log2(e): (D, padded)
                          // transposed for the score GEMM, (rows, D) for dot-product scores
  int64_t o = 0;          // (max_rows, D) output accumulator
  int64_t st = 0;         // (block_n, padded) scores transposed, then probabilities
  int64_t k = 0;          // (block_n, D) keys as float32 (unless read in place)
  int64_t v = 0;          // (block_n, D) values as float32 (unless read in place)
  int64_t row_max = 0;    // (padded) running max, log2 domain
  int64_t row_sum = 0;    // (padded) running sum of exponentials
  int64_t row_scale = 0;  // (padded) rescale factor of the output for the current tile
  int64_t row_limit = 0;  // (padded) last key each row sees in the current tile (causal)
  int64_t total = 0;
};

constexpr int64_t AlignFloats(int64_t n) { return (n + 15) / 16 * 16; }

// Floats of one split-KV partial slot: output (max_rows, D), running max and sum (max_rows each).
constexpr int64_t PartialSlotFloats(const TileShape& s, int head_dim) {
  return AlignFloats(int64_t{s.max_rows} * (head_dim + 2));
}

constexpr WorkspaceLayout MakeWorkspaceLayout(const TileShape& s, int head_dim) {
  WorkspaceLayout w;
  const int64_t rows = s.max_rows;  // padded never exceeds max_rows (a multiple of score.cols)
  w.q = 0;
  w.o = w.q + AlignFloats(rows * head_dim);
  w.st = w.o + AlignFloats(rows * head_dim);
  w.k = w.st + AlignFloats(rows * s.block_n);
  w.v = w.k + AlignFloats(int64_t{s.block_n} * head_dim);
  w.row_max = w.v + AlignFloats(int64_t{s.block_n} * head_dim);
  w.row_sum = w.row_max + AlignFloats(rows);
  w.row_scale = w.row_sum + AlignFloats(rows);
  w.row_limit = w.row_scale + AlignFloats(rows);
  w.total = w.row_limit + AlignFloats(rows);
  return w;
}

}  // namespace flashkv::cpu
