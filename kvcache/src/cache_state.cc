// CacheState's helpers: the sequence LRU list, block allocation with prefix eviction, swapping,
// victim choice, publication to the prefix cache, and batch-record recycling.

#include "cache_state.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "check.h"

namespace flashkv::kvcache::internal {

CacheState::CacheState(const CacheConfig& config_in, int32_t num_blocks, int32_t num_slots,
                       int max_context_in, std::unique_ptr<BlockStore> store_in,
                       std::shared_ptr<MemoryAllocator> staging_in)
    : config(config_in),
      page_size(config_in.page_size),
      num_layers(config_in.num_layers),
      max_context(max_context_in),
      block_bytes(BlockBytes(config_in)),
      blocks(num_blocks),
      prefix(num_blocks, config_in.page_size, config_in.prefix_hash),
      slots(num_slots),
      store(std::move(store_in)),
      staging(std::move(staging_in)) {
  lru.lru_prev = lru.lru_next = &lru;
}

CacheState::~CacheState() {
  for (auto& record : spare_records) {
    if (record->buffer != nullptr) staging->Deallocate(record->buffer, record->capacity);
  }
}

Sequence* CacheState::Find(absl::string_view id) {
  auto it = sequences.find(id);
  return it == sequences.end() ? nullptr : it->second.get();
}

void CacheState::LruUnlink(Sequence* seq) {
  if (seq->lru_next == nullptr) return;
  seq->lru_prev->lru_next = seq->lru_next;
  seq->lru_next->lru_prev = seq->lru_prev;
  seq->lru_prev = seq->lru_next = nullptr;
}

void CacheState::Touch(Sequence* seq, absl::Time now) {
  seq->last_used = now;
  LruUnlink(seq);
  seq->lru_prev = lru.lru_prev;
  seq->lru_next = &lru;
  lru.lru_prev->lru_next = seq;
  lru.lru_prev = seq;
}

int32_t CacheState::TenantId(absl::string_view tenant) {
  auto [it, inserted] = tenant_ids.try_emplace(tenant, static_cast<int32_t>(tenant_ids.size()));
  return it->second;
}

// Tail first, so that of a freed sequence's cached blocks the last ones are reclaimed first: a
// chain is only findable from its start, so its head is worth the most.
void CacheState::ReleaseTable(Sequence* seq) {
  for (auto it = seq->blocks.rbegin(); it != seq->blocks.rend(); ++it) blocks.Release(*it);
  seq->blocks.clear();
  for (int32_t slot : seq->swap_slots) slots.Free(slot);
  seq->swap_slots.clear();
}

void CacheState::Destroy(std::unique_ptr<Sequence> owner) {
  Sequence* seq = owner.get();
  FLASHKV_CHECK(seq->pending == nullptr);
  if (seq->swapped) --counters.sequences_swapped;
  ReleaseTable(seq);
  LruUnlink(seq);
}

int32_t CacheState::AllocateBlock() {
  bool evicted = false;
  const int32_t b = blocks.Allocate(&evicted);
  if (evicted) {
    prefix.Forget(b);
    ++counters.prefix_blocks_evicted;
  }
  return b;
}

int32_t CacheState::SwapInNeed(const Sequence& seq) {
  int32_t need = 0;
  for (size_t i = 0; i < seq.swap_slots.size(); ++i) {
    if (i < seq.chain_pub.size()) {
      const int32_t b = prefix.BlockOf(seq.chain_key[i], seq.chain_pub[i]);
      if (b != kNullBlock && blocks.ref_count(b) > 0) continue;  // shared again, costs nothing
    }
    ++need;
  }
  return need;
}

absl::Status CacheState::SwapOutLocked(Sequence* seq) {
  FLASHKV_CHECK(!seq->swapped && seq->pending == nullptr);
  const size_t n = seq->blocks.size();
  if (static_cast<size_t>(slots.num_free()) < n) {
    return absl::ResourceExhaustedError(
        absl::StrCat("swapping out sequence '", seq->id, "' needs ", n,
                     " swap slots; the swap space has ", slots.num_free(), " of ",
                     slots.num_slots(), " free"));
  }
  std::vector<int32_t> taken(n);
  for (size_t i = 0; i < n; ++i) taken[i] = slots.Allocate();
  if (absl::Status s = store->SaveToHost(seq->blocks, taken); !s.ok()) {
    for (auto it = taken.rbegin(); it != taken.rend(); ++it) slots.Free(*it);
    return s;
  }
  for (auto it = seq->blocks.rbegin(); it != seq->blocks.rend(); ++it) blocks.Release(*it);
  seq->blocks.clear();
  seq->swap_slots = std::move(taken);
  seq->swapped = true;
  ++counters.sequences_swapped;
  ++counters.swap_outs;
  counters.swap_out_bytes += static_cast<int64_t>(n) * block_bytes;
  return absl::OkStatus();
}

void CacheState::SharedRevivable(const Sequence& seq, absl::flat_hash_set<int32_t>* out) {
  for (size_t i = 0; i < seq.swap_slots.size() && i < seq.chain_pub.size(); ++i) {
    const int32_t b = prefix.BlockOf(seq.chain_key[i], seq.chain_pub[i]);
    if (b != kNullBlock && blocks.ref_count(b) > 0) out->insert(b);
  }
}

void CacheState::ReviveCached(Sequence* seq) {
  FLASHKV_CHECK(seq->swapped && seq->blocks.empty());
  seq->blocks.assign(seq->swap_slots.size(), kNullBlock);
  for (size_t i = 0; i < seq->swap_slots.size() && i < seq->chain_pub.size(); ++i) {
    const int32_t b = prefix.BlockOf(seq->chain_key[i], seq->chain_pub[i]);
    if (b == kNullBlock) continue;
    blocks.Ref(b);
    seq->blocks[i] = b;
  }
}

absl::Status CacheState::LoadSwapped(Sequence* seq) {
  FLASHKV_CHECK(seq->swapped && seq->blocks.size() == seq->swap_slots.size());
  std::vector<int32_t> load_slots, load_blocks;
  for (size_t i = 0; i < seq->blocks.size(); ++i) {
    if (seq->blocks[i] != kNullBlock) continue;
    seq->blocks[i] = AllocateBlock();
    FLASHKV_CHECK(seq->blocks[i] != kNullBlock);
    load_slots.push_back(seq->swap_slots[i]);
    load_blocks.push_back(seq->blocks[i]);
  }
  if (absl::Status s = store->LoadFromHost(load_slots, load_blocks); !s.ok()) {
    for (auto it = seq->blocks.rbegin(); it != seq->blocks.rend(); ++it) blocks.Release(*it);
    seq->blocks.clear();
    return s;
  }
  for (int32_t slot : seq->swap_slots) slots.Free(slot);
  seq->swap_slots.clear();
  seq->swapped = false;
  --counters.sequences_swapped;
  ++counters.swap_ins;
  counters.swap_in_bytes += static_cast<int64_t>(load_blocks.size()) * block_bytes;
  return absl::OkStatus();
}

absl::Status CacheState::SwapInLocked(Sequence* seq) {
  const int32_t need = SwapInNeed(*seq);
  if (blocks.num_available() < need) {
    return absl::ResourceExhaustedError(absl::StrCat("swapping in sequence '", seq->id,
                                                     "' needs ", need, " blocks; ",
                                                     blocks.num_available(),
                                                     " are free (incl. cached)"));
  }
  ReviveCached(seq);
  return LoadSwapped(seq);
}

absl::Status CacheState::MakeRoom(int64_t needed, uint64_t exclude_mark,
                                  const absl::flat_hash_set<int32_t>& keep, absl::string_view what) {
  const int64_t available = blocks.num_available();
  if (needed <= available) return absl::OkStatus();
  // Plan first, act only when the plan covers the need: a failure changes nothing.
  std::vector<Sequence*> victims;
  absl::flat_hash_map<int32_t, int32_t> planned_releases;
  int64_t freed = 0;
  int64_t slots_left = slots.num_free();
  for (Sequence* seq = lru.lru_next; seq != &lru && available + freed < needed;
       seq = seq->lru_next) {
    if (seq->pending != nullptr || seq->swapped || seq->mark == exclude_mark ||
        seq->blocks.empty() || static_cast<int64_t>(seq->blocks.size()) > slots_left) {
      continue;
    }
    int64_t frees = 0;
    for (int32_t b : seq->blocks) {
      auto it = planned_releases.find(b);
      const int32_t planned = it == planned_releases.end() ? 0 : it->second;
      if (blocks.ref_count(b) - planned == 1 && !keep.contains(b)) ++frees;
    }
    if (frees == 0) continue;  // everything shared with others: swapping it frees nothing
    for (int32_t b : seq->blocks) ++planned_releases[b];
    victims.push_back(seq);
    slots_left -= static_cast<int64_t>(seq->blocks.size());
    freed += frees;
  }
  if (available + freed < needed) {
    return absl::ResourceExhaustedError(absl::StrCat(
        what, " needs ", needed, " blocks: ", available, " free (incl. cached), ", freed,
        " more swappable (swapping out ", victims.size(), " idle sequences; swap space ",
        slots.num_free(), " of ", slots.num_slots(), " blocks free)"));
  }
  for (Sequence* victim : victims) {
    if (absl::Status s = SwapOutLocked(victim); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void CacheState::Publish(Sequence* seq) {
  if (seq->chain_broken || seq->swapped) return;
  const int64_t full = std::min<int64_t>(seq->layer_len[num_layers - 1],
                                         static_cast<int64_t>(seq->token_ids.size())) /
                       page_size;
  for (int64_t i = static_cast<int64_t>(seq->chain_pub.size()); i < full; ++i) {
    const int32_t b = seq->blocks[i];
    const absl::Span<const int64_t> tokens(seq->token_ids.data() + i * page_size, page_size);
    const uint64_t parent_key = i > 0 ? seq->chain_key[i - 1] : 0;
    const uint64_t parent_pub = i > 0 ? seq->chain_pub[i - 1] : 0;
    const uint64_t key = prefix.Key(parent_key, tokens, seq->salt);
    uint64_t publication = 0;
    if (prefix.is_published(b)) {
      // Shared with the sequence that published it (a fork): the same content by construction.
      const PrefixIndex::Match match = prefix.Find(key, parent_pub, seq->tenant, tokens);
      if (match.block != b) {
        seq->chain_broken = true;
        return;
      }
      publication = match.publication;
    } else {
      switch (prefix.Publish(b, key, parent_pub, seq->tenant, tokens, &publication)) {
        case PrefixIndex::PublishResult::kPublished:
          blocks.SetCached(b, true);
          ++counters.prefix_blocks_published;
          break;
        case PrefixIndex::PublishResult::kDuplicate:
          break;
        case PrefixIndex::PublishResult::kCollision:
          seq->chain_broken = true;
          return;
      }
    }
    seq->chain_key.push_back(key);
    seq->chain_pub.push_back(publication);
  }
}

std::unique_ptr<BatchRecord> CacheState::TakeRecord() {
  if (spare_records.empty()) return std::make_unique<BatchRecord>();
  std::unique_ptr<BatchRecord> record = std::move(spare_records.back());
  spare_records.pop_back();
  return record;
}

void CacheState::RecycleRecord(std::unique_ptr<BatchRecord> record) {
  pending_records.erase(record.get());
  record->entries.clear();
  record->cows.clear();
  record->token_ids.clear();
  record->copy_src.clear();
  record->copy_dst.clear();
  record->owner = nullptr;
  spare_records.push_back(std::move(record));
}

absl::Status CacheState::EnsureBuffer(BatchRecord* record, size_t bytes) {
  if (record->capacity >= bytes) return absl::OkStatus();
  size_t capacity = std::max<size_t>(record->capacity, 64 * 1024);
  while (capacity < bytes) capacity *= 2;
  absl::StatusOr<void*> buffer = staging->Allocate(capacity);
  if (!buffer.ok()) return buffer.status();
  if (record->buffer != nullptr) staging->Deallocate(record->buffer, record->capacity);
  record->buffer = *buffer;
  record->capacity = capacity;
  return absl::OkStatus();
}

void CacheState::Unpin(Sequence* seq) {
  seq->pending = nullptr;
  if (!seq->freed) return;
  auto it = zombies.find(seq);
  FLASHKV_CHECK(it != zombies.end());
  std::unique_ptr<Sequence> owner = std::move(it->second);
  zombies.erase(it);
  Destroy(std::move(owner));
}

void CacheState::Rollback(BatchRecord* record) {
  for (auto e = record->entries.rbegin(); e != record->entries.rend(); ++e) {
    Sequence* seq = e->seq;
    if (seq->pending != record) continue;  // validation stopped before this entry was pinned
    if (seq->swapped) {
      // Reserve failed between reviving this sequence's cached blocks and loading the rest.
      for (auto it = seq->blocks.rbegin(); it != seq->blocks.rend(); ++it) {
        if (*it != kNullBlock) blocks.Release(*it);
      }
      seq->blocks.clear();
      Unpin(seq);
      continue;
    }
    while (static_cast<int32_t>(seq->blocks.size()) > e->old_num_blocks) {
      blocks.Release(seq->blocks.back());
      seq->blocks.pop_back();
    }
    for (int32_t c = e->cow_end - 1; c >= e->cow_begin; --c) {
      const CowRecord& cow = record->cows[c];
      seq->blocks[cow.index] = cow.old_block;
      blocks.Release(cow.new_block);
    }
    Unpin(seq);
  }
}

void CacheState::Apply(BatchRecord* record) {
  for (const EntryRecord& e : record->entries) {
    Sequence* seq = e.seq;
    FLASHKV_CHECK(seq->pending == record);
    for (int l = record->layer; l < record->layer + record->num_layers; ++l) {
      seq->layer_len[l] = e.old_len + e.num_tokens;
    }
    if (e.tokens_count > 0) {
      seq->token_ids.insert(seq->token_ids.end(), record->token_ids.begin() + e.tokens_begin,
                            record->token_ids.begin() + e.tokens_begin + e.tokens_count);
    }
    for (int32_t c = e.cow_begin; c < e.cow_end; ++c) blocks.Release(record->cows[c].old_block);
    const bool freed = seq->freed;
    Unpin(seq);
    if (!freed) Publish(seq);
  }
}

}  // namespace flashkv::kvcache::internal
