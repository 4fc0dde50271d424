// The scheduler-facing half of KvCache: PrepareLayerBatch and PreparePass (validate, make room,
// reserve, write the metadata buffer), Commit and Abort.

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cache_state.h"
#include "check.h"
#include "flashkv/kvcache/kv_cache.h"

namespace flashkv::kvcache {

using internal::BatchRecord;
using internal::CacheState;
using internal::CowRecord;
using internal::EntryRecord;
using internal::Sequence;

namespace {

constexpr char kEntryIndexUrl[] = "type.googleapis.com/flashkv.kvcache.EntryIndex";

absl::Status ForEntry(absl::Status status, int index) {
  status.SetPayload(kEntryIndexUrl, absl::Cord(absl::StrCat(index)));
  return status;
}

size_t Align64(size_t bytes) { return (bytes + 63) & ~size_t{63}; }

// Blocks a batch needs beyond what its sequences hold.
struct Needs {
  int64_t tail = 0;     // new blocks past the end of a table
  int64_t cow = 0;      // copies of shared blocks the batch writes into
  int64_t swap_in = 0;  // blocks of swapped sequences that must be loaded
  int64_t total() const { return tail + cow + swap_in; }
};

// Checks one entry against its sequence and records it in `record`; adds its needs.
// A pass (record->num_layers > 1) also needs the sequence level: the same length on every layer.
absl::Status CheckEntry(CacheState& st, int layer, const BatchEntry& entry, int index,
                        BatchRecord* record, Needs* needs) ABSL_EXCLUSIVE_LOCKS_REQUIRED(st.mu) {
  const int n = entry.num_tokens;
  if (n < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("entries[", index, "].num_tokens (", n, ") must be >= 1"));
  }
  if (!entry.token_ids.empty() && entry.token_ids.size() != static_cast<size_t>(n)) {
    return absl::InvalidArgumentError(
        absl::StrCat("entries[", index, "].token_ids has ", entry.token_ids.size(),
                     " ids; it must be empty or have num_tokens (", n, ")"));
  }
  Sequence* seq = st.Find(entry.sequence_id);
  if (seq == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("entries[", index, "]: sequence '", entry.sequence_id, "' not found"));
  }
  if (seq->mark == st.epoch) {
    return absl::InvalidArgumentError(absl::StrCat("entries[", index, "]: sequence '", seq->id,
                                                   "' appears more than once in the batch"));
  }
  seq->mark = st.epoch;
  if (seq->pending != nullptr) {
    return absl::AbortedError(absl::StrCat(
        "entries[", index, "]: sequence '", seq->id, "' is in ",
        seq->pending->num_layers > 1 ? "a decode pass"
                                     : absl::StrCat("a layer-", seq->pending->layer, " batch"),
        " still in flight; retry once that ", seq->pending->num_layers > 1 ? "pass" : "batch",
        " is done"));
  }
  const int len = seq->layer_len[layer];
  if (record->num_layers > 1 && seq->layer_len.back() != len) {
    return absl::FailedPreconditionError(absl::StrCat(
        "entries[", index, "]: sequence '", seq->id, "' has ", len, " tokens at layer 0 but ",
        seq->layer_len.back(), " at layer ", st.num_layers - 1,
        "; a decode pass needs every layer at the same length"));
  }
  if (static_cast<int64_t>(len) + n > st.max_context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "entries[", index, "]: sequence '", seq->id, "' would reach ",
        static_cast<int64_t>(len) + n, " tokens at layer ", layer, ", past max_context (",
        st.max_context, ")"));
  }
  if (layer > 0 && len + n > seq->layer_len[layer - 1]) {
    return absl::FailedPreconditionError(absl::StrCat(
        "entries[", index, "]: sequence '", seq->id, "' layer ", layer, " would reach ", len + n,
        " tokens but layer ", layer - 1, " has ", seq->layer_len[layer - 1],
        " (a layer may not run ahead of the layer before it)"));
  }
  EntryRecord e;
  e.seq = seq;
  e.num_tokens = n;
  e.old_len = len;
  e.old_num_blocks = seq->num_table_blocks();
  if (!entry.token_ids.empty()) {
    const int64_t known = static_cast<int64_t>(seq->token_ids.size());
    for (int j = 0; j < n && len + j < known; ++j) {
      if (entry.token_ids[j] != seq->token_ids[len + j]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "entries[", index, "].token_ids[", j, "] (", entry.token_ids[j],
            ") differs from the id already known for position ", len + j, " (",
            seq->token_ids[len + j], ")"));
      }
    }
    // Ids past the known ones are recorded at Commit when they continue them without a gap.
    if (len <= known && len + n > known) {
      e.tokens_begin = static_cast<int32_t>(record->token_ids.size());
      e.tokens_count = static_cast<int32_t>(len + n - known);
      record->token_ids.insert(record->token_ids.end(), entry.token_ids.end() - e.tokens_count,
                               entry.token_ids.end());
    }
  }
  const int page = st.page_size;
  const int32_t last = (len + n - 1) / page;
  const int32_t table = seq->num_table_blocks();
  needs->tail += std::max<int32_t>(0, last + 1 - table);
  if (seq->swapped) {
    needs->swap_in += st.SwapInNeed(*seq);
  } else {
    for (int32_t j = len / page; j <= last && j < table; ++j) {
      if (st.blocks.ref_count(seq->blocks[j]) >= 2) ++needs->cow;
    }
  }
  record->entries.push_back(e);
  record->total_q += n;
  record->total_kv += len + n;
  record->max_seqlen_q = std::max(record->max_seqlen_q, n);
  record->max_seqlen_kv = std::max(record->max_seqlen_kv, len + n);
  record->block_table_stride = std::max(record->block_table_stride, last + 1);
  return absl::OkStatus();
}

// Pins the batch's sequences and takes their blocks: swap-ins (cached blocks revived first for
// all, then the rest loaded), copy-on-write copies, new tail blocks. MakeRoom made sure they exist.
absl::Status Reserve(CacheState& st, BatchRecord* record, absl::Time now)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(st.mu) {
  for (EntryRecord& e : record->entries) {
    e.seq->pending = record;
    st.Touch(e.seq, now);
  }
  for (EntryRecord& e : record->entries) {
    if (e.seq->swapped) st.ReviveCached(e.seq);
  }
  for (EntryRecord& e : record->entries) {
    if (!e.seq->swapped) continue;
    if (absl::Status s = st.LoadSwapped(e.seq); !s.ok()) return s;
  }
  const int page = st.page_size;
  for (EntryRecord& e : record->entries) {
    Sequence* seq = e.seq;
    const int32_t last = (e.old_len + e.num_tokens - 1) / page;
    e.cow_begin = static_cast<int32_t>(record->cows.size());
    for (int32_t j = e.old_len / page; j <= last && j < e.old_num_blocks; ++j) {
      const int32_t old_block = seq->blocks[j];
      if (st.blocks.ref_count(old_block) < 2) continue;
      const int32_t new_block = st.AllocateBlock();
      FLASHKV_CHECK(new_block != kNullBlock);
      record->cows.push_back(CowRecord{j, old_block, new_block});
      record->copy_src.push_back(old_block);
      record->copy_dst.push_back(new_block);
      seq->blocks[j] = new_block;
    }
    e.cow_end = static_cast<int32_t>(record->cows.size());
    while (static_cast<int32_t>(seq->blocks.size()) <= last) {
      const int32_t b = st.AllocateBlock();
      FLASHKV_CHECK(b != kNullBlock);
      seq->blocks.push_back(b);
    }
  }
  if (!record->copy_src.empty()) {
    if (absl::Status s = st.store->CopyBlocks(record->copy_src, record->copy_dst); !s.ok()) {
      return s;
    }
    st.counters.cow_copies += static_cast<int64_t>(record->copy_src.size());
  }
  return absl::OkStatus();
}

void WriteMetadata(const CacheState& st, BatchRecord* record) {
  char* base = static_cast<char*>(record->buffer);
  auto* slots = reinterpret_cast<int64_t*>(base + record->layout.slot_mapping);
  auto* cu_q = reinterpret_cast<int32_t*>(base + record->layout.cu_seqlens_q);
  auto* cu_kv = reinterpret_cast<int32_t*>(base + record->layout.cu_seqlens_kv);
  auto* table = reinterpret_cast<int32_t*>(base + record->layout.block_table);
  const int64_t page = st.page_size;
  const int stride = record->block_table_stride;
  cu_q[0] = cu_kv[0] = 0;
  int64_t row = 0;
  for (size_t i = 0; i < record->entries.size(); ++i) {
    const EntryRecord& e = record->entries[i];
    const std::vector<int32_t>& blocks = e.seq->blocks;
    const int64_t end = e.old_len + e.num_tokens;
    for (int64_t t = e.old_len; t < end; ++t) slots[row++] = blocks[t / page] * page + t % page;
    cu_q[i + 1] = cu_q[i] + e.num_tokens;
    cu_kv[i + 1] = cu_kv[i] + static_cast<int32_t>(end);
    const int32_t used = static_cast<int32_t>((end + page - 1) / page);
    int32_t* out = table + i * static_cast<size_t>(stride);
    std::memcpy(out, blocks.data(), used * sizeof(int32_t));
    std::fill(out + used, out + stride, kNullBlock);
  }
}

}  // namespace

std::optional<int> FailedEntryIndex(const absl::Status& status) {
  absl::optional<absl::Cord> payload = status.GetPayload(kEntryIndexUrl);
  int index = 0;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &index)) return std::nullopt;
  return index;
}

absl::StatusOr<LayerBatch> KvCache::PrepareLayerBatch(int layer,
                                                      absl::Span<const BatchEntry> entries) {
  if (layer < 0 || layer >= state_->num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer (", layer, ") must be in [0, ", state_->num_layers, ")"));
  }
  return Prepare(layer, 1, entries);
}

absl::StatusOr<LayerBatch> KvCache::PreparePass(absl::Span<const BatchEntry> entries) {
  return Prepare(0, state_->num_layers, entries);
}

absl::StatusOr<LayerBatch> KvCache::Prepare(int layer, int num_layers,
                                            absl::Span<const BatchEntry> entries) {
  CacheState& st = *state_;
  if (entries.empty()) return absl::InvalidArgumentError("entries is empty");
  const absl::Time now = st.Now();
  MutexLock lock(&st.mu);
  std::unique_ptr<BatchRecord> record = st.TakeRecord();
  record->owner = this;
  record->layer = layer;
  record->num_layers = num_layers;
  record->total_q = record->total_kv = 0;
  record->max_seqlen_q = record->max_seqlen_kv = record->block_table_stride = 0;
  record->entries.reserve(entries.size());
  ++st.epoch;
  Needs needs;
  bool any_swapped = false;
  for (size_t i = 0; i < entries.size(); ++i) {
    absl::Status s = CheckEntry(st, layer, entries[i], static_cast<int>(i), record.get(), &needs);
    if (!s.ok()) {
      st.RecycleRecord(std::move(record));
      return ForEntry(std::move(s), static_cast<int>(i));
    }
    any_swapped |= record->entries.back().seq->swapped;
  }
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  if (record->total_q > kInt32Max || record->total_kv > kInt32Max) {
    const int64_t q = record->total_q, kv = record->total_kv;
    st.RecycleRecord(std::move(record));
    return absl::InvalidArgumentError(absl::StrCat("the batch has ", q, " new and ", kv,
                                                   " context tokens; each total must fit int32 (",
                                                   kInt32Max, ")"));
  }
  absl::flat_hash_set<int32_t> keep;
  if (any_swapped) {
    for (const EntryRecord& e : record->entries) {
      if (e.seq->swapped) st.SharedRevivable(*e.seq, &keep);
    }
  }
  const std::string what =
      needs.total() > st.blocks.num_available()
          ? absl::StrCat(num_layers > 1 ? "decode pass" : absl::StrCat("layer ", layer, " batch"),
                         " of ", entries.size(), " sequences (", needs.tail,
                         " new blocks, ", needs.cow, " copy-on-write, ", needs.swap_in,
                         " swap-in)")
          : std::string();
  if (absl::Status s = st.MakeRoom(needs.total(), st.epoch, keep, what); !s.ok()) {
    st.RecycleRecord(std::move(record));
    return s;
  }
  BatchLayout& layout = record->layout;
  const size_t num_seqs = record->entries.size();
  layout.slot_mapping = 0;
  layout.cu_seqlens_q = Align64(record->total_q * sizeof(int64_t));
  layout.cu_seqlens_kv = layout.cu_seqlens_q + Align64((num_seqs + 1) * sizeof(int32_t));
  layout.block_table = layout.cu_seqlens_kv + Align64((num_seqs + 1) * sizeof(int32_t));
  layout.size_bytes =
      layout.block_table + num_seqs * record->block_table_stride * sizeof(int32_t);
  st.pending_records.insert(record.get());
  absl::Status s = Reserve(st, record.get(), now);
  if (s.ok()) s = st.EnsureBuffer(record.get(), layout.size_bytes);
  if (!s.ok()) {
    st.Rollback(record.get());
    st.RecycleRecord(std::move(record));
    return s;
  }
  WriteMetadata(st, record.get());
  record->pools = st.store->layer_pools(layer);
  return LayerBatch(this, std::move(record));
}

void KvCache::Commit(LayerBatch&& batch) {
  FLASHKV_CHECK(batch.cache_ == this && batch.record_ != nullptr);
  std::unique_ptr<BatchRecord> record = std::move(batch.record_);
  batch.cache_ = nullptr;
  MutexLock lock(&state_->mu);
  FLASHKV_CHECK(record->owner == this && state_->pending_records.contains(record.get()));
  state_->Apply(record.get());
  ++state_->counters.batches_committed;
  state_->RecycleRecord(std::move(record));
}

void KvCache::Abort(LayerBatch&& batch) {
  FLASHKV_CHECK(batch.cache_ == this && batch.record_ != nullptr);
  batch.cache_ = nullptr;
  AbortRecord(std::move(batch.record_));
}

void KvCache::AbortRecord(std::unique_ptr<BatchRecord> record) {
  MutexLock lock(&state_->mu);
  FLASHKV_CHECK(record->owner == this && state_->pending_records.contains(record.get()));
  state_->Rollback(record.get());
  ++state_->counters.batches_aborted;
  state_->RecycleRecord(std::move(record));
}

}  // namespace flashkv::kvcache
