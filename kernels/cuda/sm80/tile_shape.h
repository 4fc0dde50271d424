#pragma once

// Every tile choice of the sm80 tensor-core attention kernel, in one place, with the reason for
// each. Host code (launch heuristics) and device code (Traits) read the same table.
//
// Budgets that drive the choices (per SM on sm80/sm90 with mma.sync): 64K 32-bit registers,
// 227 KB shared memory per block (163 KB on A100), ~1 ldmatrix'd byte of shared memory per
// 8 tensor-core FLOPs before shared memory rather than the MMA pipe becomes the limit.
//   - Each warp owns 16 * mma_m query rows of the M tile ("wide" path). A K/V fragment loaded from
//     shared memory is reused for mma_m row tiles, so mma_m = 2 halves shared-memory traffic per
//     FLOP against mma_m = 1; but the output accumulator costs mma_m * head_dim / 2 registers a
//     thread, so head dims above 128 must drop to mma_m = 1.
//   - The score tile costs mma_m * block_n / 2 registers a thread.
//   - Q stays in registers (mma_m * head_dim / 4 registers a thread) only where that fits beside
//     the two accumulators without spilling; otherwise it is re-read with ldmatrix every K/V tile
//     (a small cost: Q is 1/2..1/4 of the K bytes a warp reads per tile).
//   - K and V tiles are double-buffered (cp.async, `stages` deep) so the next tile's load overlaps
//     this tile's two GEMMs; a deeper pipeline would cost the second resident CTA per SM, which
//     hides the softmax of one CTA behind the MMAs of the other.

namespace flashkv::cuda::sm80 {

struct TileShape {
  int block_m;  // query rows (or packed (token, head) rows) per CTA
  int block_n;  // keys per K/V tile
  int warps;    // warps per CTA; the wide path splits block_m among them
  int stages;   // K/V tiles in flight (cp.async pipeline depth)
  bool q_in_registers;
};

constexpr TileShape ChooseTileShape(int head_dim) {
  switch (head_dim) {
    case 32:
      // Tiny rows: accumulator 32 + scores 128 + Q 16 registers; a 128-key tile halves the
      // per-tile overhead (barrier, row max) that dominates at this head dim. Smem 48 KB.
      return TileShape{128, 128, 4, 2, true};
    case 64:
      // Accumulator 64 + Q 32 registers; a 128-key tile would add 128 score registers and spill,
      // so 64 keys. Smem 48 KB: two CTAs per SM are bounded by registers, not shared memory.
      return TileShape{128, 64, 4, 2, true};
    case 96:
      // Accumulator 96 + scores 64 registers leave no room for Q (48 more). Smem 72 KB.
      return TileShape{128, 64, 4, 2, false};
    case 128:
      // FlashAttention-2's shape: accumulator 128 + scores 64 registers (mma_m = 2); Q re-read
      // from shared memory. Smem 96 KB, so two CTAs (8 warps) per SM on sm90 (one on A100).
      return TileShape{128, 64, 4, 2, false};
    case 192:
      // mma_m = 2 would need 192 accumulator registers: 8 warps of 16 rows instead, so the M tile
      // stays 128 (K/V bytes per FLOP as for 128). Smem 144 KB, one CTA per SM.
      return TileShape{128, 64, 8, 2, false};
    case 256:
      // As 192: accumulator 128 registers at mma_m = 1. Smem 192 KB, one CTA per SM.
      return TileShape{128, 64, 8, 2, false};
    default:
      return TileShape{0, 0, 0, 0, false};
  }
}

// The "narrow" path of the same kernel serves CTAs whose packed query rows fit one 16-row MMA
// tile (one-token decodes, short chunks with the GQA group packed into M): instead of idling all
// but one warp, the warps split each K/V tile along N, keep their own softmax state and merge it
// once at the end through shared memory. Each warp needs at least one 16-key MMA step.
constexpr int kNarrowRows = 16;
constexpr int NarrowWarps(const TileShape& s) {
  return s.warps < s.block_n / 16 ? s.warps : s.block_n / 16;
}

}  // namespace flashkv::cuda::sm80
