#pragma once

// Everything a KvCache knows, behind one mutex: block ids and ref counts, the prefix index, the
// swap-space slots, the sequences with their block tables and LRU order, pending batch records
// and counters. The KvCache methods (kv_cache.cc, prepare.cc) lock `mu` and call the helpers
// here, which all require it held.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "block_store.h"
#include "flashkv/base/mutex.h"
#include "flashkv/kvcache/block_allocator.h"
#include "flashkv/kvcache/config.h"
#include "flashkv/kvcache/layer_batch.h"
#include "flashkv/kvcache/stats.h"
#include "prefix_index.h"

namespace flashkv::kvcache::internal {

struct BatchRecord;

struct Sequence {
  std::string id;
  int32_t tenant = 0;
  uint64_t salt = 0;
  std::vector<int32_t> layer_len;  // non-increasing in the layer index
  // Resident: the block table, covering layer_len[0] (and a pending layer-0 batch's new tokens).
  std::vector<int32_t> blocks;
  // Swapped out: one swap slot per block the table had; `blocks` is empty.
  std::vector<int32_t> swap_slots;
  bool swapped = false;
  // Token ids of positions [0, token_ids.size()), when the client gave them.
  std::vector<int64_t> token_ids;
  // The prefix chain: for block i < chain_pub.size(), the key and publication that answer for the
  // block's content (this block's own, or an identical one published first).
  std::vector<uint64_t> chain_key;
  std::vector<uint64_t> chain_pub;
  bool chain_broken = false;  // a key collision: nothing after it can be published
  absl::Time last_used;
  // Intrusive LRU list of live sequences, least recently used first.
  Sequence* lru_prev = nullptr;
  Sequence* lru_next = nullptr;
  BatchRecord* pending = nullptr;  // the batch holding this sequence
  bool freed = false;              // freed while pending: destroyed at Commit/Abort
  uint64_t mark = 0;               // the Prepare that last looked at it (duplicate detection)

  int32_t num_table_blocks() const {
    return static_cast<int32_t>(swapped ? swap_slots.size() : blocks.size());
  }
};

struct EntryRecord {
  Sequence* seq = nullptr;
  int32_t num_tokens = 0;
  int32_t old_len = 0;         // layer length before the batch
  int32_t old_num_blocks = 0;  // table size before the batch's new blocks
  int32_t cow_begin = 0;       // [cow_begin, cow_end) in BatchRecord::cows
  int32_t cow_end = 0;
  int32_t tokens_begin = 0;    // new token ids to record, in BatchRecord::token_ids
  int32_t tokens_count = 0;
};

struct CowRecord {
  int32_t index = 0;      // position in the block table
  int32_t old_block = 0;  // still referenced by the batch until Commit (Abort puts it back)
  int32_t new_block = 0;
};

// The state of one pending LayerBatch. Recycled through CacheState::spare_records, so its vectors
// and staging buffer keep their capacity: a steady stream of batches allocates nothing.
struct BatchRecord {
  const void* owner = nullptr;  // the KvCache
  int layer = 0;
  // Layers [layer, layer + num_layers) the batch appends to: 1 for a layer batch, every layer for
  // a decode pass (KvCache::PreparePass), whose Commit advances them all.
  int num_layers = 1;
  std::vector<EntryRecord> entries;
  std::vector<CowRecord> cows;
  std::vector<int64_t> token_ids;
  std::vector<int32_t> copy_src;  // copy-on-write copies of this Prepare
  std::vector<int32_t> copy_dst;
  void* buffer = nullptr;  // staging buffer (pinned with CUDA)
  size_t capacity = 0;
  BatchLayout layout;
  int64_t total_q = 0;
  int64_t total_kv = 0;
  int max_seqlen_q = 0;
  int max_seqlen_kv = 0;
  int block_table_stride = 0;
  LayerPools pools;
};

class CacheState {
 public:
  CacheState(const CacheConfig& config, int32_t num_blocks, int32_t num_slots, int max_context,
             std::unique_ptr<BlockStore> store, std::shared_ptr<MemoryAllocator> staging);
  ~CacheState();

  flashkv::Mutex mu;

  const CacheConfig config;
  const int page_size;
  const int num_layers;
  const int max_context;
  const int64_t block_bytes;  // one id across every layer's K and V

  BlockAllocator blocks ABSL_GUARDED_BY(mu);
  PrefixIndex prefix ABSL_GUARDED_BY(mu);
  SlotAllocator slots ABSL_GUARDED_BY(mu);
  const std::unique_ptr<BlockStore> store;
  const std::shared_ptr<MemoryAllocator> staging;

  absl::flat_hash_map<std::string, std::unique_ptr<Sequence>> sequences ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<Sequence*, std::unique_ptr<Sequence>> zombies ABSL_GUARDED_BY(mu);
  Sequence lru ABSL_GUARDED_BY(mu);  // sentinel: lru.lru_next is the least recently used
  absl::flat_hash_map<std::string, int32_t> tenant_ids ABSL_GUARDED_BY(mu);
  absl::flat_hash_set<const BatchRecord*> pending_records ABSL_GUARDED_BY(mu);
  std::vector<std::unique_ptr<BatchRecord>> spare_records ABSL_GUARDED_BY(mu);
  uint64_t epoch ABSL_GUARDED_BY(mu) = 0;
  CacheStats counters ABSL_GUARDED_BY(mu);  // the cumulative fields only

  absl::Time Now() const { return config.clock ? config.clock() : absl::Now(); }

  // Sequences and the LRU list.
  Sequence* Find(absl::string_view id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void Touch(Sequence* seq, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void LruUnlink(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  int32_t TenantId(absl::string_view tenant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Gives back the sequence's blocks and swap slots, unlinks and deletes it (it must already be
  // out of `sequences`: `owner` holds it).
  void Destroy(std::unique_ptr<Sequence> owner) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void ReleaseTable(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // Blocks.
  // A block with ref count 1 (kNullBlock when none): drops the prefix entry of a reclaimed one.
  int32_t AllocateBlock() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Blocks `seq` takes from the available ones when swapped in (published blocks still cached
  // and in use elsewhere are shared again instead).
  int32_t SwapInNeed(const Sequence& seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  absl::Status SwapOutLocked(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Swap-in in two steps, so that a batch revives the cached blocks of all its swapped sequences
  // before it allocates anything (an allocation could otherwise reclaim a block another entry
  // counted on): ReviveCached sets `blocks` to the table with the still-cached published blocks
  // referenced again and kNullBlock elsewhere; LoadSwapped allocates and loads the rest.
  void ReviveCached(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  absl::Status LoadSwapped(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Both steps for one sequence; RESOURCE_EXHAUSTED (nothing changed) without the blocks.
  absl::Status SwapInLocked(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Blocks of swapped `seq` that SwapInNeed counted as free because others hold them.
  void SharedRevivable(const Sequence& seq, absl::flat_hash_set<int32_t>* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Makes `needed` blocks available, swapping out least recently used sequences that are
  // resident, not pending and not marked with `exclude_mark`, fitting the swap space. Releases
  // of `keep` blocks are not counted as freeing anything (a swap-in will share them again). On
  // failure nothing changed: RESOURCE_EXHAUSTED prefixed by `what` with needed, free, swappable.
  absl::Status MakeRoom(int64_t needed, uint64_t exclude_mark,
                        const absl::flat_hash_set<int32_t>& keep, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Publishes the sequence's blocks that are full on every layer and whose token ids are known.
  void Publish(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // Batch records.
  std::unique_ptr<BatchRecord> TakeRecord() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void RecycleRecord(std::unique_ptr<BatchRecord> record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  absl::Status EnsureBuffer(BatchRecord* record, size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Undoes a prepared (or partly prepared) record; Commit applies it.
  void Rollback(BatchRecord* record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  void Apply(BatchRecord* record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Ends a sequence's part in a finished batch: destroys it if it was freed meanwhile.
  void Unpin(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
};

}  // namespace flashkv::kvcache::internal
