#pragma once

// The sm90 kernel's parameter struct: the common AttentionParams, the four TMA descriptors built
// on the host (sm90/tensor_maps.h), and the persistent tile schedule. Passed by value as one
// __grid_constant__ argument, so the tensor maps live in parameter space (TMA requires that or
// global memory) and the varlen order table costs no device allocation, stays valid under CUDA
// graph capture and needs no copy.
//
// Host code includes this without nvcc: <cuda.h> only declares CUtensorMap.

#include <cuda.h>

#include <cstdint>

#include "attention_params.h"
#include "sm90/tile_shape.h"

namespace flashkv::cuda::sm90 {

// Which tiles a CTA computes. Tiles are numbered in the order they should start (longest
// first); CTA c of G takes tiles c, c + G, c + 2G, ... (a static round-robin: no global counter
// to reset between launches).
struct Schedule {
  int num_tiles = 0;
  // Fixed length: tile -> (head section, m-block, batch x head). Sections of `section_heads`
  // consecutive (batch, head) pairs keep the K/V of the heads in flight within L2; inside a
  // section the m-blocks run heaviest first under causal (the last query rows see the most keys).
  int m_blocks = 0;
  int section_heads = 1;
  // Varlen: tile = unit * num_heads_q + head, units = the m-blocks of the sequences in `order`
  // (longest context first), unit_start[k] = first unit of order[k]; unit_start[count] = units.
  int count = 0;
  int32_t order[kMaxVarlenSequences];
  int32_t unit_start[kMaxVarlenSequences + 1];
  // Stream-K tail (fixed length without a causal mask, Sm90Variant::kStreamK; see
  // sm90/tile_scheduler.cuh): tiles [0, dp_tiles) round-robin as above, a whole number of rounds
  // of the grid; the key tiles of tiles [dp_tiles, num_tiles) (sk_key_tiles each) divided evenly
  // among the grid's CTAs. dp_tiles = num_tiles without it.
  int dp_tiles = 0;
  int sk_key_tiles = 0;
};

struct Sm90Params {
  AttentionParams p;
  CUtensorMap q_map;  // box (64 dims, block_m rows)
  // K and V: box (64 dims, block_n rows); paged, maps over the pools [block, K/V head, slot, dim]
  // with box (64 dims, kv_box_rows slots).
  CUtensorMap k_map;
  CUtensorMap v_map;
  CUtensorMap o_map;    // box (64 dims, 64 rows): one consumer warpgroup's rows
  int kv_box_rows = 0;  // keys per K/V box: block_n, or kPagedBoxRows (paged, page % block_n != 0)
  // TileKind::kPagedKeys80 only: the pools again with boxes of PagedPartRows(i) slots, for key
  // tiles split at a page boundary (sm90/producer.cuh).
  CUtensorMap k_part_maps[kPagedParts];
  CUtensorMap v_part_maps[kPagedParts];
  // Dynamic schedule only: the next unclaimed tile minus gridDim.x, zeroed before the launch
  // (stream-ordered workspace); CTA c starts with tile c.
  int* tile_counter = nullptr;
  // Stream-K only (stream-ordered workspace): partial O and row states of the tiles whose keys
  // two CTAs share, and one arrival counter per (shared tile, consumer warpgroup), zeroed before
  // the launch. Indexed by the CTA boundary inside the tile (sm90/tile_scheduler.cuh).
  float* sk_partials = nullptr;
  int* sk_arrivals = nullptr;
  Schedule schedule;
};

}  // namespace flashkv::cuda::sm90
