#pragma once

// The paged KV cache of one model shape on one device (or the host): block pools, sequences and
// their block tables, fork with copy-on-write, prefix caching, swap to host memory, and the
// per-layer batches the scheduler launches.
//
// Sequences. A sequence has a client-chosen id (an opaque string: the service namespaces ids per
// tenant before they get here), an optional tenant (prefix-cache isolation), a length per layer
// and one block table shared by all layers. Layer 0 leads: an append of n tokens at layer l > 0
// needs len[l] + n <= len[l-1] (FAILED_PRECONDITION otherwise, naming both lengths), so the block
// table always covers len[0] and only layer-0 appends allocate new blocks.
//
// The scheduler contract (one batch per layer, all-or-nothing):
//   1. PrepareLayerBatch(layer, entries) validates every entry, then reserves what the batch needs
//      — new blocks, copy-on-write copies of shared blocks it will write, swap-in of its swapped
//      sequences, swap-out of least recently used sequences outside the batch when blocks run
//      short — and writes the kernel metadata into the batch's host buffer. On error nothing
//      changed (RESOURCE_EXHAUSTED carries needed/free/swappable). An entry-specific error carries
//      the entry's index (FailedEntryIndex) so a scheduler merging several calls can drop the
//      offending call and prepare the rest again.
//   2. The caller copies the metadata to the device, runs the append and paged attention kernels
//      (RunLayerStep in step.h does both) and waits for them to finish.
//   3. Commit(batch) advances the lengths and publishes blocks that became full on every layer;
//      (PreparePass: one batch for every layer of a decode pass, committed once at the end.)
//      Abort(batch) releases every block the batch reserved and undoes its copy-on-write swaps, so
//      every sequence is as before Prepare. Destroying a pending batch aborts it.
// While pending, a batch holds its sequences: a second Prepare naming one of them fails with
// ABORTED (retry after this batch finishes; the same sequence may not be in two batches at once,
// whatever their layers), ForkSequence/SwapOut of one fails with ABORTED, FreeSequence/ExpireIdle
// of one takes effect at Commit/Abort. Commit and Abort must come after the batch's kernels have
// completed: from then on the cache may move or reuse the blocks they touched.
//
// Thread-safety: every method may be called from any thread. One mutex guards all metadata
// (tables, ref counts, prefix index, LRU lists); it is never held while the step kernels run,
// which happens between Prepare and Commit without the cache. It IS held while block data moves
// for copy-on-write (a few blocks, on the first write after a fork) and for swapping (only under
// memory pressure): doing those copies outside the lock would need a transfer-in-flight state for
// every block and sequence, and neither is on the path of an ordinary step.
//
// Ownership and lifetime: Create allocates every pool, the swap space and the first staging
// buffer; nothing is allocated per step once staging buffers reach their working size. The cache
// must outlive every LayerBatch it prepared.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "flashkv/kvcache/config.h"
#include "flashkv/kvcache/layer_batch.h"
#include "flashkv/kvcache/stats.h"

namespace flashkv::kvcache {

namespace internal {
class CacheState;
}  // namespace internal

struct SequenceOptions {
  // The prompt's token ids, matched against the prefix cache (and remembered: appends at these
  // positions need no token_ids). At most max_context.
  absl::Span<const int64_t> prompt_token_ids;
  // Tenants never share or see each other's cached blocks. Empty is a tenant like any other.
  absl::string_view tenant;
};

// A snapshot of one sequence, for tests, logs and the service's introspection.
struct SequenceInfo {
  std::string tenant;
  std::vector<int> layer_lengths;  // tokens present per layer
  std::vector<int32_t> blocks;     // the block table (ids), empty while swapped out
  int64_t known_token_ids = 0;     // leading positions whose token ids are known
  bool swapped = false;
  bool in_flight = false;  // in a pending LayerBatch
  absl::Time last_used;
};

class KvCache {
 public:
  // Validates the config, sizes and allocates the pools (one K and one V pool per layer) and the
  // swap space. RESOURCE_EXHAUSTED when the budget does not fit, INVALID_ARGUMENT for bad fields.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const CacheConfig& config);
  ~KvCache();

  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const CacheConfig& config() const { return config_; }
  int num_blocks() const;  // including the null block
  int max_context() const;
  int64_t block_bytes() const;  // one block id: K and V of every layer
  LayerPools layer_pools(int layer) const;

  // Creates a sequence at length 0 on every layer, or, when the prompt's leading full blocks are
  // cached for this tenant, at the length they cover. Returns that length: a multiple of
  // page_size, and at most prompt length - 1 so the runner always computes the prompt's last
  // position (whose output it needs). ALREADY_EXISTS for a live id.
  absl::StatusOr<int> CreateSequence(absl::string_view id, const SequenceOptions& options = {});
  // The child shares every block of the parent (copy-on-write: a shared block is copied on the
  // first write into it by either side), its lengths, token ids and tenant. NOT_FOUND,
  // ALREADY_EXISTS, ABORTED (parent in a pending batch), RESOURCE_EXHAUSTED (a swapped parent
  // could not be brought back).
  absl::Status ForkSequence(absl::string_view parent_id, absl::string_view child_id);
  // Releases the sequence's blocks (at Commit/Abort if it is in a pending batch). The id is free
  // for reuse at once. NOT_FOUND for an unknown id.
  absl::Status FreeSequence(absl::string_view id);
  // Frees every sequence last used at or before now - ttl (and not in a pending batch); returns
  // their ids, least recently used first.
  std::vector<std::string> ExpireIdle(absl::Time now, absl::Duration ttl);
  // Moves a resident sequence's blocks to host memory now. NOT_FOUND, ABORTED (pending batch),
  // FAILED_PRECONDITION (already swapped out), RESOURCE_EXHAUSTED (swap space full).
  absl::Status SwapOut(absl::string_view id);

  absl::StatusOr<SequenceInfo> GetSequence(absl::string_view id) const;

  // The two-phase batch (see the file comment). INVALID_ARGUMENT: layer out of range, no entries,
  // num_tokens < 1, token_ids of the wrong size or disagreeing with ids known for those
  // positions, a sequence twice, a length past max_context, batch totals past int32. NOT_FOUND:
  // unknown sequence. FAILED_PRECONDITION: a layer running ahead of the one before. ABORTED: a
  // sequence already in a pending batch. RESOURCE_EXHAUSTED: not enough blocks even after
  // reclaiming cached blocks and swapping out every other sequence that fits the swap space.
  absl::StatusOr<LayerBatch> PrepareLayerBatch(int layer, absl::Span<const BatchEntry> entries);
  // A decode pass: one batch over every layer (layer() 0, num_layers() all of them), prepared once
  // for a forward pass of the same new tokens through each layer — the blocks reserved and the
  // metadata written once, since block ids and so the slot mapping, cu_seqlens and block table are
  // the same on every layer. The caller runs each layer's append and attention with
  // MakeAppendArgs(layer, ...)/MakeAttentionArgs(layer, ...), in layer order; Commit advances every
  // layer's length (and publishes full blocks), Abort leaves every layer as it was (rows the
  // kernels wrote past the lengths are overwritten by the next append). While pending the pass
  // holds its sequences as a layer batch does. Errors as PrepareLayerBatch's, and
  // FAILED_PRECONDITION for a sequence whose layers are not all at the same length (naming it and
  // both lengths).
  absl::StatusOr<LayerBatch> PreparePass(absl::Span<const BatchEntry> entries);
  // Consumes a pending batch prepared by this cache (crashes otherwise: a programming error).
  void Commit(LayerBatch&& batch);
  void Abort(LayerBatch&& batch);

  CacheStats GetStats() const;
  // Recounts everything from scratch: free + cached + used == total; ref count 0 exactly for
  // blocks in the free lists; every ref count equals the number of block-table (and pending
  // copy-on-write) references, so a block is in two tables only with ref count >= 2; no table
  // holds the null block; swap slots partition; every prefix-index entry is consistent.
  // INTERNAL naming the first violation. O(blocks + table entries).
  absl::Status CheckConsistency() const;

 private:
  friend class LayerBatch;
  KvCache(const CacheConfig& config, std::unique_ptr<internal::CacheState> state);
  // Both prepares: a batch appending to layers [layer, layer + num_layers).
  absl::StatusOr<LayerBatch> Prepare(int layer, int num_layers,
                                     absl::Span<const BatchEntry> entries);
  void AbortRecord(std::unique_ptr<internal::BatchRecord> record);

  const CacheConfig config_;
  std::unique_ptr<internal::CacheState> state_;
};

// The index of the entry an error of PrepareLayerBatch is about, when it is about one entry.
std::optional<int> FailedEntryIndex(const absl::Status& status);

}  // namespace flashkv::kvcache
