#pragma once

// Block ids and their reference counts. Every operation is O(1).
//
// A block is in exactly one of three states:
//   used         ref count >= 1 (held by block tables, or by a batch in flight)
//   cached-free  ref count 0, but its K/V is published in the prefix cache and still findable;
//                kept in least-recently-released order and reclaimed oldest first
//   free         ref count 0, nothing worth keeping
// Allocation takes a free block when there is one (so cached prefixes live as long as possible),
// else reclaims the least recently released cached-free block and says so, so that the caller
// drops its prefix-cache entry before the block is overwritten.
//
// Block 0 is the null block: never handed out, never counted. It pads block tables.
//
// Thread-safety: none; the owner (KvCache) serialises access under its mutex.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace flashkv::kvcache {

inline constexpr int32_t kNullBlock = 0;

class BlockAllocator {
 public:
  // Ids 1 .. num_blocks - 1 are usable; num_blocks >= 2.
  explicit BlockAllocator(int32_t num_blocks);

  BlockAllocator(const BlockAllocator&) = delete;
  BlockAllocator& operator=(const BlockAllocator&) = delete;

  int32_t num_blocks() const { return static_cast<int32_t>(ref_.size()); }
  int32_t num_usable() const { return num_blocks() - 1; }
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t num_cached() const { return num_cached_free_; }
  int32_t num_available() const { return num_free() + num_cached(); }
  int32_t num_used() const { return num_usable() - num_available(); }

  // A block with ref count 1, or kNullBlock when every block is used. `*evicted` is set when the
  // block was cached-free: its prefix-cache entry is stale from now on.
  int32_t Allocate(bool* evicted);
  // One more reference to a used or cached-free block (a prefix hit revives a cached-free one).
  void Ref(int32_t block);
  // One reference fewer. At zero the block becomes cached-free (most recently released end) if it
  // is marked cached, else free.
  void Release(int32_t block);
  // Marks a used block's content as published (or no longer published) in the prefix cache.
  void SetCached(int32_t block, bool cached);

  int32_t ref_count(int32_t block) const { return ref_[block]; }
  bool is_cached(int32_t block) const { return cached_[block] != 0; }
  bool is_free(int32_t block) const { return ref_[block] == 0 && !is_cached(block); }
  bool is_cached_free(int32_t block) const { return ref_[block] == 0 && is_cached(block); }

  // Cached-free blocks, least recently released first (the order Allocate reclaims them in).
  std::vector<int32_t> CachedFreeInLruOrder() const;
  // Walks every list and count: states partition the ids, ref count 0 exactly in the free lists.
  absl::Status CheckConsistency() const;

 private:
  void LinkAtMru(int32_t block);
  void Unlink(int32_t block);

  std::vector<int32_t> ref_;
  std::vector<uint8_t> cached_;
  std::vector<int32_t> free_;  // stack of free (uncached) ids
  // Doubly linked, circular list of cached-free blocks through prev_/next_, with the null block
  // as its sentinel: next_[0] is the least recently released, prev_[0] the most recent.
  std::vector<int32_t> prev_;
  std::vector<int32_t> next_;
  int32_t num_cached_free_ = 0;
};

}  // namespace flashkv::kvcache
