#pragma once

// The prefix cache's index: full blocks published under a chained key, hash(parent key, the
// block's token ids, the tenant's salt), so a prompt is matched block by block from its start.
//
// A hash is only a hint. Every published block also records its token ids, its tenant and the
// publication id of its parent (publication ids are never reused, unlike block ids), and a match
// must agree on all three: by induction the whole prefix agrees, so a collision can never hand out
// another prompt's K/V and a tenant never sees another's blocks. When two different blocks hash
// alike, the first keeps the key and the second simply stays private.
//
// Which blocks are published is mirrored in the BlockAllocator's `cached` flag; the owner drops
// an entry (Forget) when the allocator reclaims its block.
//
// Thread-safety: none; the owner serialises access.

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "flashkv/kvcache/config.h"

namespace flashkv::kvcache::internal {

class PrefixIndex {
 public:
  PrefixIndex(int32_t num_blocks, int page_size, PrefixHashFn hash);

  uint64_t Key(uint64_t parent_key, absl::Span<const int64_t> tokens, uint64_t salt) const {
    return hash_(parent_key, tokens, salt);
  }

  struct Match {
    int32_t block = 0;  // kNullBlock: no match
    uint64_t publication = 0;
  };
  // The block published under `key` whose parent is `parent_publication` (0 at the start of a
  // sequence), of `tenant`, holding exactly `tokens`.
  Match Find(uint64_t key, uint64_t parent_publication, int32_t tenant,
             absl::Span<const int64_t> tokens) const;

  enum class PublishResult {
    kPublished,  // `block` now answers for its key
    kDuplicate,  // the same content is already published (by another block): *publication is it
    kCollision,  // another content holds the key: `block` stays private
  };
  PublishResult Publish(int32_t block, uint64_t key, uint64_t parent_publication, int32_t tenant,
                        absl::Span<const int64_t> tokens, uint64_t* publication);
  // The block is being reused: its entry goes.
  void Forget(int32_t block);

  bool is_published(int32_t block) const { return meta_[block].publication != 0; }
  uint64_t publication(int32_t block) const { return meta_[block].publication; }
  // The block published as `publication`, or kNullBlock when it is gone.
  int32_t BlockOf(uint64_t key, uint64_t publication) const;
  int64_t size() const { return static_cast<int64_t>(by_key_.size()); }

  // Every key maps to a published block under that key, and every published block is mapped.
  absl::Status CheckConsistency() const;

 private:
  struct BlockMeta {
    uint64_t key = 0;
    uint64_t publication = 0;  // 0: not published
    uint64_t parent_publication = 0;
    int32_t tenant = -1;
  };
  bool SameContent(int32_t block, uint64_t parent_publication, int32_t tenant,
                   absl::Span<const int64_t> tokens) const;

  const int page_size_;
  const PrefixHashFn hash_;
  absl::flat_hash_map<uint64_t, int32_t> by_key_;
  std::vector<BlockMeta> meta_;
  std::vector<int64_t> tokens_;  // [num_blocks, page_size]
  uint64_t next_publication_ = 1;
};

}  // namespace flashkv::kvcache::internal
