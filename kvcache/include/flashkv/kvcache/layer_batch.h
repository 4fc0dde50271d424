#pragma once

// One layer's batch of appends, prepared by KvCache::PrepareLayerBatch: the blocks are reserved
// and the kernel metadata is written to one contiguous host buffer, ready for a single copy to the
// device. See kv_cache.h for the two-phase contract (Prepare, run the kernels, Commit or Abort).

#include <cstddef>
#include <cstdint>
#include <memory>
#include "absl/strings/string_view.h"

#include "absl/types/span.h"
#include "flashkv/attention.h"

namespace flashkv::kvcache {

class KvCache;
namespace internal {
struct BatchRecord;
}  // namespace internal

// One sequence's part of a layer batch: `num_tokens` (>= 1) new tokens whose K/V rows the batch
// appends at the sequence's current length in that layer, and whose queries then attend to the
// whole context. `token_ids` is empty or holds the ids of exactly those new tokens (they make the
// sequence's blocks publishable to the prefix cache). Views only: read during Prepare.
struct BatchEntry {
  absl::string_view sequence_id;
  int num_tokens = 0;
  absl::Span<const int64_t> token_ids;
};

// One layer's K and V pools, where the backend computes (device memory with CUDA). Layout
// [num_blocks, num_kv_heads, page_size, head_dim], dense; `strides` = {block, slot, head}.
struct LayerPools {
  int layer = 0;
  DType dtype = DType::kFloat16;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 0;
  int num_blocks = 0;  // including the null block 0
  void* k = nullptr;
  void* v = nullptr;
  Strides strides;
};

// Byte offsets of the metadata arrays inside the batch buffer (each 64-byte aligned).
struct BatchLayout {
  size_t slot_mapping = 0;   // int64 [total_q]: block * page_size + offset of each new row
  size_t cu_seqlens_q = 0;   // int32 [num_seqs + 1]: new tokens, prefix sums
  size_t cu_seqlens_kv = 0;  // int32 [num_seqs + 1]: whole context incl. new tokens, prefix sums
  size_t block_table = 0;    // int32 [num_seqs, block_table_stride], padded with block 0
  size_t size_bytes = 0;     // bytes to copy: everything above
};

// Move-only. A pending batch holds its sequences (no other batch may include them, they are never
// swapped out, and freeing one is deferred) and the blocks it reserved, until KvCache::Commit or
// KvCache::Abort consumes it; destroying a pending batch aborts it. The KvCache must outlive it.
// Thread-safety: the const accessors may be called from any thread; Commit/Abort from one.
class LayerBatch {
 public:
  LayerBatch() = default;  // empty, not pending
  LayerBatch(LayerBatch&& other) noexcept;
  LayerBatch& operator=(LayerBatch&& other) noexcept;
  LayerBatch(const LayerBatch&) = delete;
  LayerBatch& operator=(const LayerBatch&) = delete;
  ~LayerBatch();

  // True from Prepare until Commit or Abort.
  bool pending() const { return record_ != nullptr; }

  int layer() const;       // the first layer it appends to
  int num_layers() const;  // 1, or every layer for a decode pass (KvCache::PreparePass)
  int num_seqs() const;      // entries, in the order given to Prepare
  int64_t total_q() const;   // new tokens over all entries (rows of packed q/k/v/out)
  int64_t total_kv() const;  // context tokens over all entries
  int max_seqlen_q() const;
  int max_seqlen_kv() const;
  int block_table_stride() const;  // max blocks of any entry's context
  const LayerPools& pools() const;  // layer()'s
  // The pools of `layer`, one of [layer(), layer() + num_layers()).
  LayerPools pools(int layer) const;

  // The contiguous metadata buffer (pinned host memory with CUDA) and its layout.
  const void* data() const;
  size_t size_bytes() const;
  const BatchLayout& layout() const;
  // Typed views into data(). Entry i's rows in packed q/k/v/out: [cu_seqlens_q[i], [i+1]).
  absl::Span<const int64_t> slot_mapping() const;
  absl::Span<const int32_t> cu_seqlens_q() const;
  absl::Span<const int32_t> cu_seqlens_kv() const;
  absl::Span<const int32_t> block_table() const;

  // Kernel arguments for this batch. `metadata` is where a copy of [data(), data() + size_bytes())
  // lives on the backend (data() itself on the CPU backend); the host_* fields point into data().
  // k and v are packed [total_q, num_kv_heads, head_dim], q and out [total_q, num_heads_q,
  // head_dim], dense, in backend memory; lse is optional [num_heads_q, total_q].
  KvAppendArgs MakeAppendArgs(const void* metadata, const void* k, const void* v) const;
  PagedAttentionArgs MakeAttentionArgs(const void* metadata, int num_heads_q, const void* q,
                                       void* out, float* lse,
                                       const AttentionOptions& options) const;
  // The same for one layer of a decode pass (any layer the batch spans): only the pools differ.
  KvAppendArgs MakeAppendArgs(int layer, const void* metadata, const void* k, const void* v) const;
  PagedAttentionArgs MakeAttentionArgs(int layer, const void* metadata, int num_heads_q,
                                       const void* q, void* out, float* lse,
                                       const AttentionOptions& options) const;

 private:
  friend class KvCache;
  LayerBatch(KvCache* cache, std::unique_ptr<internal::BatchRecord> record);
  const internal::BatchRecord& record() const;

  KvCache* cache_ = nullptr;
  std::unique_ptr<internal::BatchRecord> record_;
};

}  // namespace flashkv::kvcache
