#pragma once

// The tile heuristic of the CPU attention kernel: every tile size is chosen here, once, and both
// the kernels (attention_kernel_impl.h, through AttentionTraits) and the task planner read it.

#include <cstdint>

#include "cpu/isa.h"

namespace flashkv::cpu {

struct TileShape {
  int vector_floats = 0;  // float lanes of one SIMD register
  int micro_rows = 0;     // rows of the register-blocked GEMM tile
  int micro_cols = 0;     // its columns, a multiple of vector_floats
  int block_n = 0;        // keys per K/V tile
  int max_rows = 0;       // query rows (heads × positions) per task, a multiple of micro_cols
  int dot_rows = 0;       // tasks with fewer rows compute scores as dot products (decode)
};

constexpr TileShape ChooseTileShape(Isa isa, int head_dim) {
  TileShape s;
  s.vector_floats = VectorBytes(isa) / 4;
  // Register-blocked GEMM tile: micro_rows × (micro_cols / vector_floats) accumulators, plus one
  // register per B vector and one broadcast. Every head dim (32..256, multiples of 32) and
  // block_n split evenly into micro_cols, so no column remainder exists.
  if (isa == Isa::kAvx512) {
    // 32 ZMM registers: 8 rows × 2 vectors = 16 accumulators, enough to hide a 4-cycle FMA
    // latency on two pipes; 8 rows divide the usual 64- and 32-row tiles exactly.
    s.micro_rows = 8;
    s.micro_cols = 2 * s.vector_floats;
  } else if (VectorRegisters(isa) >= 32) {
    // 32 NEON registers: 6 rows × 4 vectors = 24 accumulators + 4 B vectors + 1 broadcast.
    s.micro_rows = 6;
    s.micro_cols = 4 * s.vector_floats;
  } else {
    // 16 registers: 6 rows × 2 vectors = 12 accumulators + 2 B vectors + 1 broadcast (the classic
    // 6×16 AVX2 SGEMM tile; 6×8 with SSE2).
    s.micro_rows = 6;
    s.micro_cols = 2 * s.vector_floats;
  }
  // 64 keys per tile: the K and V tiles (2 × 64 × D floats, 64 KiB at D = 128) stay in L2 next
  // to the query and output tiles, and the per-tile online-softmax rescale of the output
  // (rows × D) stays under 2% of the tile's FLOPs.
  s.block_n = 64;
  // Query rows per task: 64 rows reuse each loaded K/V tile 64 times; beyond D = 128 the query
  // and output tiles (2 × rows × D floats) would outgrow a 256 KiB L2, so 32 rows.
  s.max_rows = head_dim <= 128 ? 64 : 32;
  // The score GEMM pads a task's rows to whole micro tiles (micro_cols); below half a tile
  // (decode: one position × the heads of a group) most of that work would be padding, so
  // per-row dot products over the head dim compute the scores instead.
  s.dot_rows = s.micro_cols / 2;
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

constexpr WorkspaceLayout MakeWorkspaceLayout(const TileShape& s, int head_dim) {
  WorkspaceLayout w;
  const int64_t rows = s.max_rows;  // padded never exceeds max_rows (a multiple of micro_cols)
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
