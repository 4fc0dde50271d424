// LayerBatch: a handle on a pending batch record (cache_state.h), its views and kernel arguments.

#include "flashkv/kvcache/layer_batch.h"

#include "cache_state.h"
#include "check.h"
#include "flashkv/kvcache/kv_cache.h"

namespace flashkv::kvcache {

using internal::BatchRecord;

LayerBatch::LayerBatch(KvCache* cache, std::unique_ptr<BatchRecord> record)
    : cache_(cache), record_(std::move(record)) {}

LayerBatch::LayerBatch(LayerBatch&& other) noexcept
    : cache_(other.cache_), record_(std::move(other.record_)) {
  other.cache_ = nullptr;
}

LayerBatch& LayerBatch::operator=(LayerBatch&& other) noexcept {
  if (this != &other) {
    if (record_ != nullptr) cache_->AbortRecord(std::move(record_));
    cache_ = other.cache_;
    record_ = std::move(other.record_);
    other.cache_ = nullptr;
  }
  return *this;
}

LayerBatch::~LayerBatch() {
  if (record_ != nullptr) cache_->AbortRecord(std::move(record_));
}

const BatchRecord& LayerBatch::record() const {
  FLASHKV_CHECK(record_ != nullptr);  // used after Commit/Abort or moved from
  return *record_;
}

int LayerBatch::layer() const { return record().layer; }
int LayerBatch::num_layers() const { return record().num_layers; }
int LayerBatch::num_seqs() const { return static_cast<int>(record().entries.size()); }
int64_t LayerBatch::total_q() const { return record().total_q; }
int64_t LayerBatch::total_kv() const { return record().total_kv; }
int LayerBatch::max_seqlen_q() const { return record().max_seqlen_q; }
int LayerBatch::max_seqlen_kv() const { return record().max_seqlen_kv; }
int LayerBatch::block_table_stride() const { return record().block_table_stride; }
const LayerPools& LayerBatch::pools() const { return record().pools; }

LayerPools LayerBatch::pools(int layer) const {
  const BatchRecord& r = record();
  FLASHKV_CHECK(layer >= r.layer && layer < r.layer + r.num_layers);
  return layer == r.layer ? r.pools : cache_->layer_pools(layer);
}
const void* LayerBatch::data() const { return record().buffer; }
size_t LayerBatch::size_bytes() const { return record().layout.size_bytes; }
const BatchLayout& LayerBatch::layout() const { return record().layout; }

namespace {

template <typename T>
const T* At(const void* base, size_t offset) {
  return reinterpret_cast<const T*>(static_cast<const char*>(base) + offset);
}

}  // namespace

absl::Span<const int64_t> LayerBatch::slot_mapping() const {
  return {At<int64_t>(data(), layout().slot_mapping), static_cast<size_t>(total_q())};
}
absl::Span<const int32_t> LayerBatch::cu_seqlens_q() const {
  return {At<int32_t>(data(), layout().cu_seqlens_q), static_cast<size_t>(num_seqs()) + 1};
}
absl::Span<const int32_t> LayerBatch::cu_seqlens_kv() const {
  return {At<int32_t>(data(), layout().cu_seqlens_kv), static_cast<size_t>(num_seqs()) + 1};
}
absl::Span<const int32_t> LayerBatch::block_table() const {
  return {At<int32_t>(data(), layout().block_table),
          static_cast<size_t>(num_seqs()) * block_table_stride()};
}

KvAppendArgs LayerBatch::MakeAppendArgs(const void* metadata, const void* k, const void* v) const {
  return MakeAppendArgs(layer(), metadata, k, v);
}

PagedAttentionArgs LayerBatch::MakeAttentionArgs(const void* metadata, int num_heads_q,
                                                 const void* q, void* out, float* lse,
                                                 const AttentionOptions& options) const {
  return MakeAttentionArgs(layer(), metadata, num_heads_q, q, out, lse, options);
}

KvAppendArgs LayerBatch::MakeAppendArgs(int layer, const void* metadata, const void* k,
                                        const void* v) const {
  const BatchRecord& r = record();
  const LayerPools p = pools(layer);
  KvAppendArgs a;
  a.dtype = p.dtype;
  a.num_tokens = r.total_q;
  a.num_heads_kv = p.num_kv_heads;
  a.head_dim = p.head_dim;
  a.k = k;
  a.k_strides = DenseStrides(r.total_q, p.num_kv_heads, p.head_dim);
  a.v = v;
  a.v_strides = a.k_strides;
  a.k_cache = p.k;
  a.v_cache = p.v;
  a.cache_strides = p.strides;
  a.num_blocks = p.num_blocks;
  a.page_size = p.page_size;
  a.slot_mapping = At<int64_t>(metadata, r.layout.slot_mapping);
  a.host_slot_mapping = At<int64_t>(r.buffer, r.layout.slot_mapping);
  return a;
}

PagedAttentionArgs LayerBatch::MakeAttentionArgs(int layer, const void* metadata, int num_heads_q,
                                                 const void* q, void* out, float* lse,
                                                 const AttentionOptions& options) const {
  const BatchRecord& r = record();
  const LayerPools p = pools(layer);
  PagedAttentionArgs a;
  a.dtype = p.dtype;
  a.num_seqs = static_cast<int>(r.entries.size());
  a.num_heads_q = num_heads_q;
  a.num_heads_kv = p.num_kv_heads;
  a.head_dim = p.head_dim;
  a.total_q = r.total_q;
  a.max_seqlen_q = r.max_seqlen_q;
  a.max_seqlen_kv = r.max_seqlen_kv;
  a.q = q;
  a.q_strides = DenseStrides(r.total_q, num_heads_q, p.head_dim);
  a.out = out;
  a.out_strides = a.q_strides;
  a.lse = lse;
  a.k_cache = p.k;
  a.v_cache = p.v;
  a.cache_strides = p.strides;
  a.num_blocks = p.num_blocks;
  a.page_size = p.page_size;
  a.block_table = At<int32_t>(metadata, r.layout.block_table);
  a.block_table_stride = r.block_table_stride;
  a.cu_seqlens_q = At<int32_t>(metadata, r.layout.cu_seqlens_q);
  a.cu_seqlens_kv = At<int32_t>(metadata, r.layout.cu_seqlens_kv);
  a.host_block_table = At<int32_t>(r.buffer, r.layout.block_table);
  a.host_cu_seqlens_q = At<int32_t>(r.buffer, r.layout.cu_seqlens_q);
  a.host_cu_seqlens_kv = At<int32_t>(r.buffer, r.layout.cu_seqlens_kv);
  a.options = options;
  return a;
}

}  // namespace flashkv::kvcache
