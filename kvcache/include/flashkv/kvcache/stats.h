#pragma once

// A snapshot of the cache's counters, for metrics export. Block counts exclude the null block, so
// blocks_free + blocks_cached + blocks_used == blocks_total always holds.

#include <cstdint>

namespace flashkv::kvcache {

struct CacheStats {
  // Blocks (one id = page_size tokens of K and V in every layer).
  int64_t blocks_total = 0;
  int64_t blocks_free = 0;    // ref count 0, nothing cached: handed out first
  int64_t blocks_cached = 0;  // ref count 0, still findable by a prefix lookup; reclaimed LRU
  int64_t blocks_used = 0;    // ref count >= 1
  int64_t block_bytes = 0;    // bytes of one block id across all layers' K and V pools

  // Sequences.
  int64_t sequences = 0;          // live (resident + swapped)
  int64_t sequences_swapped = 0;  // whose blocks are in host memory now

  // Prefix cache: prompt tokens looked up at CreateSequence and how many of them were found.
  int64_t prefix_lookup_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  double prefix_hit_rate = 0.0;  // hit / lookup, 0 before any lookup
  int64_t prefix_blocks_published = 0;
  int64_t prefix_blocks_evicted = 0;

  // Swap (counted per sequence moved; bytes are K and V of every layer).
  int64_t swap_outs = 0;
  int64_t swap_ins = 0;
  int64_t swap_out_bytes = 0;
  int64_t swap_in_bytes = 0;
  int64_t swap_slots_total = 0;  // blocks the swap budget holds
  int64_t swap_slots_used = 0;

  // Copy-on-write block copies after forks.
  int64_t cow_copies = 0;

  // Layer batches.
  int64_t batches_committed = 0;
  int64_t batches_aborted = 0;
  int64_t batches_in_flight = 0;
};

}  // namespace flashkv::kvcache
