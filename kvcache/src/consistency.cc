// KvCache::CheckConsistency: recounts every reference from the tables and pending batches and
// compares with what the allocators and indexes say. Tests call it after every operation.

#include <vector>

#include "absl/strings/str_cat.h"
#include "cache_state.h"
#include "flashkv/kvcache/kv_cache.h"

namespace flashkv::kvcache {

using internal::BatchRecord;
using internal::CacheState;
using internal::Sequence;

namespace {

absl::Status Broken(std::string message) { return absl::InternalError(std::move(message)); }

// One sequence's own invariants; adds its references to `refs` and its slots to `slot_owner`.
absl::Status CheckSequence(const CacheState& st, const Sequence& seq, std::vector<int32_t>* refs,
                           std::vector<uint8_t>* slot_used) ABSL_EXCLUSIVE_LOCKS_REQUIRED(st.mu) {
  const std::string who = absl::StrCat("sequence '", seq.id, "': ");
  for (int l = 1; l < st.num_layers; ++l) {
    if (seq.layer_len[l] > seq.layer_len[l - 1]) {
      return Broken(absl::StrCat(who, "layer ", l, " has ", seq.layer_len[l], " tokens, layer ",
                                 l - 1, " only ", seq.layer_len[l - 1]));
    }
  }
  const int64_t needed = (static_cast<int64_t>(seq.layer_len[0]) + st.page_size - 1) / st.page_size;
  if (seq.swapped) {
    if (!seq.blocks.empty() || static_cast<int64_t>(seq.swap_slots.size()) != needed) {
      return Broken(absl::StrCat(who, "swapped with ", seq.blocks.size(), " blocks and ",
                                 seq.swap_slots.size(), " slots for ", needed, " blocks of tokens"));
    }
    for (int32_t slot : seq.swap_slots) {
      if (slot < 0 || slot >= st.slots.num_slots() || (*slot_used)[slot]) {
        return Broken(absl::StrCat(who, "swap slot ", slot, " is invalid or shared"));
      }
      (*slot_used)[slot] = 1;
    }
  } else {
    // A pending layer-0 batch may have added blocks for its new tokens.
    const bool exact = seq.pending == nullptr || seq.pending->layer != 0;
    const int64_t have = static_cast<int64_t>(seq.blocks.size());
    if (!seq.swap_slots.empty() || have < needed || (exact && have != needed)) {
      return Broken(absl::StrCat(who, have, " blocks for ", needed, " blocks of tokens"));
    }
  }
  for (int32_t b : seq.blocks) {
    if (b <= kNullBlock || b >= st.blocks.num_blocks()) {
      return Broken(absl::StrCat(who, "table holds block id ", b));
    }
    ++(*refs)[b];
  }
  if (seq.chain_key.size() != seq.chain_pub.size() ||
      static_cast<int64_t>(seq.chain_pub.size()) * st.page_size >
          std::min<int64_t>(seq.layer_len[st.num_layers - 1], seq.token_ids.size())) {
    return Broken(absl::StrCat(who, "prefix chain of ", seq.chain_pub.size(),
                               " blocks is longer than its full, known blocks"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status KvCache::CheckConsistency() const {
  const CacheState& st = *state_;
  MutexLock lock(&state_->mu);
  if (absl::Status s = st.blocks.CheckConsistency(); !s.ok()) return s;
  if (absl::Status s = st.prefix.CheckConsistency(); !s.ok()) return s;
  const int32_t n = st.blocks.num_blocks();
  std::vector<int32_t> refs(n, 0);
  std::vector<uint8_t> slot_used(st.slots.num_slots(), 0);
  int64_t listed = 0, swapped = 0;
  for (const Sequence* seq = st.lru.lru_next; seq != &st.lru; seq = seq->lru_next) {
    if (++listed > static_cast<int64_t>(st.sequences.size())) break;
    auto it = st.sequences.find(seq->id);
    if (it == st.sequences.end() || it->second.get() != seq) {
      return Broken(absl::StrCat("LRU list holds '", seq->id, "', which is not live"));
    }
  }
  if (listed != static_cast<int64_t>(st.sequences.size())) {
    return Broken(absl::StrCat("LRU list has ", listed, " sequences, the map ",
                               st.sequences.size()));
  }
  for (const auto& [id, seq] : st.sequences) {
    if (seq->freed) return Broken(absl::StrCat("live sequence '", id, "' is marked freed"));
    if (absl::Status s = CheckSequence(st, *seq, &refs, &slot_used); !s.ok()) return s;
    swapped += seq->swapped ? 1 : 0;
  }
  for (const auto& [raw, seq] : st.zombies) {
    if (!seq->freed || seq->pending == nullptr) {
      return Broken(absl::StrCat("freed sequence '", seq->id, "' outlives its batch"));
    }
    if (absl::Status s = CheckSequence(st, *seq, &refs, &slot_used); !s.ok()) return s;
  }
  if (swapped != st.counters.sequences_swapped) {
    return Broken(absl::StrCat(swapped, " sequences are swapped, the counter says ",
                               st.counters.sequences_swapped));
  }
  for (const BatchRecord* record : st.pending_records) {
    for (const internal::CowRecord& cow : record->cows) ++refs[cow.old_block];
  }
  for (int32_t b = 1; b < n; ++b) {
    if (refs[b] != st.blocks.ref_count(b)) {
      return Broken(absl::StrCat("block ", b, " has ref count ", st.blocks.ref_count(b), " but ",
                                 refs[b], " references"));
    }
    if (st.prefix.is_published(b) != st.blocks.is_cached(b)) {
      return Broken(absl::StrCat("block ", b, " is ", st.prefix.is_published(b) ? "" : "not ",
                                 "published but ", st.blocks.is_cached(b) ? "" : "not ",
                                 "marked cached"));
    }
  }
  int64_t used_slots = 0;
  for (uint8_t u : slot_used) used_slots += u;
  if (used_slots + st.slots.num_free() != st.slots.num_slots()) {
    return Broken(absl::StrCat(used_slots, " swap slots used + ", st.slots.num_free(),
                               " free != ", st.slots.num_slots()));
  }
  for (int32_t slot : st.slots.free_slots()) {
    if (slot_used[slot]) return Broken(absl::StrCat("swap slot ", slot, " is free and used"));
  }
  return absl::OkStatus();
}

}  // namespace flashkv::kvcache
