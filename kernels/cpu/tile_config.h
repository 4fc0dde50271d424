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
  int max_rows = 0;       // query rows (heads × positions) per task
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
  // 64 keys per tile: the transposed K tile and the V tile (2 × 64 × D floats, 64 KiB at D = 128)
  // stay in L2 next to the query and output tiles, and the per-tile online-softmax rescale of the
  // output (rows × D) stays under 2% of the tile's FLOPs.
  s.block_n = 64;
  // Query rows per task: 64 rows reuse each loaded K/V tile 64 times; beyond D = 128 the query
  // and output tiles (2 × rows × D floats) would outgrow a 256 KiB L2, so 32 rows.
  s.max_rows = head_dim <= 128 ? 64 : 32;
  return s;
}

// Offsets (in floats, 64-byte aligned) of the per-thread workspace a task needs.
struct WorkspaceLayout {
  int64_t q = 0;          // (max_rows, D) queries, float32, pre-scaled by scale · log2(e)
  int64_t o = 0;          // (max_rows, D) output accumulator
  int64_t s = 0;          // (max_rows, block_n) scores, then probabilities
  int64_t kt = 0;         // (D, block_n) keys, transposed
  int64_t v = 0;          // (block_n, D) values
  int64_t row_max = 0;    // (max_rows) running max, log2 domain
  int64_t row_sum = 0;    // (max_rows) running sum of exponentials
  int64_t row_scale = 0;  // (max_rows) rescale factor of the output for the current tile
  int64_t total = 0;
};

constexpr int64_t AlignFloats(int64_t n) { return (n + 15) / 16 * 16; }

constexpr WorkspaceLayout MakeWorkspaceLayout(const TileShape& s, int head_dim) {
  WorkspaceLayout w;
  const int64_t rows = s.max_rows;
  w.q = 0;
  w.o = w.q + AlignFloats(rows * head_dim);
  w.s = w.o + AlignFloats(rows * head_dim);
  w.kt = w.s + AlignFloats(rows * s.block_n);
  w.v = w.kt + AlignFloats(int64_t{head_dim} * s.block_n);
  w.row_max = w.v + AlignFloats(int64_t{s.block_n} * head_dim);
  w.row_sum = w.row_max + AlignFloats(rows);
  w.row_scale = w.row_sum + AlignFloats(rows);
  w.total = w.row_scale + AlignFloats(rows);
  return w;
}

}  // namespace flashkv::cpu
