// KvCache: creation (sizing and allocating the pools) and the sequence operations. The batch
// operations are in prepare.cc, the consistency check in consistency.cc.

#include "flashkv/kvcache/kv_cache.h"

#include <algorithm>
#include <functional>
#include <limits>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "cache_state.h"
#include "check.h"
#include "flashkv/cpu_backend.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/kvcache/status.h"

namespace flashkv::kvcache {

using internal::CacheState;
using internal::Sequence;

namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

absl::StatusOr<int64_t> BudgetBytes(const CacheConfig& c) {
  const PoolBudget& b = c.budget;
  switch (b.kind) {
    case PoolBudget::Kind::kBytes:
      return b.bytes;
    case PoolBudget::Kind::kBlocks:
      return (b.blocks + 1) * BlockBytes(c);
    case PoolBudget::Kind::kFraction:
      if (c.backend == Backend::kCpu) {
        return static_cast<int64_t>(static_cast<double>(b.host_memory_bytes) * b.fraction);
      }
      size_t free_bytes = 0, total_bytes = 0;
      KernelStatus status = cuda::SetDevice(c.device);
      if (status.ok()) status = cuda::MemGetInfo(&free_bytes, &total_bytes);
      if (!status.ok()) return ToAbslStatus(status);
      return static_cast<int64_t>(static_cast<double>(free_bytes) * b.fraction);
  }
  return absl::InvalidArgumentError("budget.kind is not one of kBytes, kFraction, kBlocks");
}

absl::Status CheckBackend(const CacheConfig& c) {
  if (c.backend == Backend::kCuda) {
    if (absl::Status s = ToAbslStatus(cuda::CheckDevice(c.device)); !s.ok()) return s;
    if (!cuda::IsCompiled(c.dtype, c.head_dim)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "dtype ", DTypeName(c.dtype), " with head_dim ", c.head_dim,
          " is not compiled into the CUDA backend (FLASHKV_CUDA_DTYPES, FLASHKV_CUDA_HEAD_DIMS)"));
    }
  } else if (!cpu::IsCompiled(c.dtype, c.head_dim)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dtype ", DTypeName(c.dtype), " with head_dim ", c.head_dim,
        " is not compiled into the CPU backend (FLASHKV_DTYPES, FLASHKV_HEAD_DIMS)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const CacheConfig& config) {
  if (absl::Status s = ValidateConfig(config); !s.ok()) return s;
  if (absl::Status s = CheckBackend(config); !s.ok()) return s;
  const int64_t block_bytes = BlockBytes(config);
  absl::StatusOr<int64_t> budget = BudgetBytes(config);
  if (!budget.ok()) return budget.status();
  const int64_t num_blocks = std::min(*budget / block_bytes, kInt32Max - 1);
  if (num_blocks < 2) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the KV budget (", *budget, " bytes) holds ", num_blocks, " blocks of ", block_bytes,
        " bytes (", config.page_size, " tokens x ", config.num_layers,
        " layers x K and V); at least 2 are needed (the null block and one usable)"));
  }
  const int64_t capacity = (num_blocks - 1) * config.page_size;
  const int max_context = config.max_context > 0
                              ? config.max_context
                              : static_cast<int>(std::min<int64_t>(capacity, kInt32Max));
  const int64_t num_slots = std::min(config.swap_budget_bytes / block_bytes, kInt32Max - 1);
  const bool cuda = config.backend == Backend::kCuda;
  std::shared_ptr<MemoryAllocator> pools = config.pool_allocator;
  if (pools == nullptr) pools = cuda ? NewDeviceAllocator(config.device) : NewHostAllocator();
  std::shared_ptr<MemoryAllocator> staging = config.staging_allocator;
  if (staging == nullptr) staging = cuda ? NewPinnedHostAllocator() : NewHostAllocator();
  absl::StatusOr<std::unique_ptr<internal::BlockStore>> store =
      internal::BlockStore::Create(config, static_cast<int32_t>(num_blocks),
                                   static_cast<int32_t>(num_slots), pools, staging);
  if (!store.ok()) return store.status();
  auto state = std::make_unique<CacheState>(config, static_cast<int32_t>(num_blocks),
                                            static_cast<int32_t>(num_slots), max_context,
                                            *std::move(store), staging);
  return std::unique_ptr<KvCache>(new KvCache(config, std::move(state)));
}

KvCache::KvCache(const CacheConfig& config, std::unique_ptr<CacheState> state)
    : config_(config), state_(std::move(state)) {}

KvCache::~KvCache() {
  MutexLock lock(&state_->mu);
  // A pending batch would point at freed pools: its owner broke the lifetime contract.
  FLASHKV_CHECK(state_->pending_records.empty());
}

int KvCache::num_blocks() const { return state_->store->num_blocks(); }
int KvCache::max_context() const { return state_->max_context; }
int64_t KvCache::block_bytes() const { return state_->block_bytes; }

LayerPools KvCache::layer_pools(int layer) const {
  FLASHKV_CHECK(layer >= 0 && layer < config_.num_layers);
  return state_->store->layer_pools(layer);
}

absl::StatusOr<int> KvCache::CreateSequence(absl::string_view id, const SequenceOptions& options) {
  CacheState& st = *state_;
  if (id.empty()) return absl::InvalidArgumentError("sequence id is empty");
  const absl::Span<const int64_t> prompt = options.prompt_token_ids;
  if (prompt.size() > static_cast<size_t>(st.max_context)) {
    return absl::InvalidArgumentError(absl::StrCat("prompt_token_ids has ", prompt.size(),
                                                   " tokens, past max_context (", st.max_context,
                                                   ")"));
  }
  const absl::Time now = st.Now();
  MutexLock lock(&st.mu);
  if (st.Find(id) != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("sequence '", id, "' already exists"));
  }
  auto seq = std::make_unique<Sequence>();
  seq->id = std::string(id);
  seq->tenant = st.TenantId(options.tenant);
  seq->salt = absl::HashOf(options.tenant);
  seq->layer_len.assign(st.num_layers, 0);
  seq->token_ids.assign(prompt.begin(), prompt.end());
  // Match whole blocks, leaving at least one prompt token for the runner to compute.
  const int page = st.page_size;
  const int64_t max_hit_blocks = prompt.empty() ? 0 : (static_cast<int64_t>(prompt.size()) - 1) / page;
  uint64_t parent_key = 0, parent_pub = 0;
  for (int64_t i = 0; i < max_hit_blocks; ++i) {
    const absl::Span<const int64_t> tokens = prompt.subspan(i * page, page);
    const uint64_t key = st.prefix.Key(parent_key, tokens, seq->salt);
    const internal::PrefixIndex::Match match = st.prefix.Find(key, parent_pub, seq->tenant, tokens);
    if (match.block == kNullBlock) break;
    st.blocks.Ref(match.block);
    seq->blocks.push_back(match.block);
    seq->chain_key.push_back(key);
    seq->chain_pub.push_back(match.publication);
    parent_key = key;
    parent_pub = match.publication;
  }
  const int cached = static_cast<int>(seq->blocks.size()) * page;
  std::fill(seq->layer_len.begin(), seq->layer_len.end(), cached);
  st.counters.prefix_lookup_tokens += static_cast<int64_t>(prompt.size());
  st.counters.prefix_hit_tokens += cached;
  Sequence* raw = seq.get();
  st.sequences.emplace(raw->id, std::move(seq));
  st.Touch(raw, now);
  return cached;
}

absl::Status KvCache::ForkSequence(absl::string_view parent_id, absl::string_view child_id) {
  CacheState& st = *state_;
  if (child_id.empty()) return absl::InvalidArgumentError("child sequence id is empty");
  const absl::Time now = st.Now();
  MutexLock lock(&st.mu);
  Sequence* parent = st.Find(parent_id);
  if (parent == nullptr) {
    return absl::NotFoundError(absl::StrCat("parent sequence '", parent_id, "' not found"));
  }
  if (st.Find(child_id) != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("sequence '", child_id, "' already exists"));
  }
  if (parent->pending != nullptr) {
    return absl::AbortedError(absl::StrCat("parent sequence '", parent_id, "' is in a layer-",
                                           parent->pending->layer,
                                           " batch still in flight; fork it once that is done"));
  }
  if (parent->swapped) {
    ++st.epoch;
    parent->mark = st.epoch;
    absl::flat_hash_set<int32_t> keep;
    st.SharedRevivable(*parent, &keep);
    const std::string what = absl::StrCat("swapping in fork parent '", parent_id, "'");
    if (absl::Status s = st.MakeRoom(st.SwapInNeed(*parent), st.epoch, keep, what); !s.ok()) {
      return s;
    }
    if (absl::Status s = st.SwapInLocked(parent); !s.ok()) return s;
  }
  auto child = std::make_unique<Sequence>();
  child->id = std::string(child_id);
  child->tenant = parent->tenant;
  child->salt = parent->salt;
  child->layer_len = parent->layer_len;
  child->blocks = parent->blocks;
  for (int32_t b : child->blocks) st.blocks.Ref(b);
  child->token_ids = parent->token_ids;
  child->chain_key = parent->chain_key;
  child->chain_pub = parent->chain_pub;
  child->chain_broken = parent->chain_broken;
  Sequence* raw = child.get();
  st.sequences.emplace(raw->id, std::move(child));
  st.Touch(parent, now);
  st.Touch(raw, now);
  return absl::OkStatus();
}

absl::Status KvCache::FreeSequence(absl::string_view id) {
  CacheState& st = *state_;
  MutexLock lock(&st.mu);
  auto it = st.sequences.find(id);
  if (it == st.sequences.end()) {
    return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  }
  std::unique_ptr<Sequence> seq = std::move(it->second);
  st.sequences.erase(it);
  if (seq->pending != nullptr) {
    // The batch still reads its blocks: they go when the batch ends.
    seq->freed = true;
    st.LruUnlink(seq.get());
    Sequence* raw = seq.get();
    st.zombies.emplace(raw, std::move(seq));
    return absl::OkStatus();
  }
  st.Destroy(std::move(seq));
  return absl::OkStatus();
}

std::vector<std::string> KvCache::ExpireIdle(absl::Time now, absl::Duration ttl) {
  CacheState& st = *state_;
  const absl::Time cutoff = now - ttl;
  std::vector<std::string> expired;
  MutexLock lock(&st.mu);
  for (Sequence* seq = st.lru.lru_next; seq != &st.lru && seq->last_used <= cutoff;) {
    Sequence* next = seq->lru_next;
    if (seq->pending == nullptr) {
      auto it = st.sequences.find(seq->id);
      FLASHKV_CHECK(it != st.sequences.end());
      std::unique_ptr<Sequence> owner = std::move(it->second);
      st.sequences.erase(it);
      expired.push_back(std::move(owner->id));
      st.Destroy(std::move(owner));
    }
    seq = next;
  }
  return expired;
}

absl::Status KvCache::SwapOut(absl::string_view id) {
  CacheState& st = *state_;
  MutexLock lock(&st.mu);
  Sequence* seq = st.Find(id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  if (seq->pending != nullptr) {
    return absl::AbortedError(absl::StrCat("sequence '", id, "' is in a layer-",
                                           seq->pending->layer, " batch still in flight"));
  }
  if (seq->swapped) {
    return absl::FailedPreconditionError(absl::StrCat("sequence '", id, "' is already swapped out"));
  }
  return st.SwapOutLocked(seq);
}

absl::StatusOr<SequenceInfo> KvCache::GetSequence(absl::string_view id) const {
  CacheState& st = *state_;
  MutexLock lock(&st.mu);
  const Sequence* seq = st.Find(id);
  if (seq == nullptr) return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  SequenceInfo info;
  for (const auto& [name, tenant] : st.tenant_ids) {
    if (tenant == seq->tenant) info.tenant = name;
  }
  info.layer_lengths.assign(seq->layer_len.begin(), seq->layer_len.end());
  info.blocks = seq->blocks;
  info.known_token_ids = static_cast<int64_t>(seq->token_ids.size());
  info.swapped = seq->swapped;
  info.in_flight = seq->pending != nullptr;
  info.last_used = seq->last_used;
  return info;
}

CacheStats KvCache::GetStats() const {
  CacheState& st = *state_;
  MutexLock lock(&st.mu);
  CacheStats s = st.counters;
  s.blocks_total = st.blocks.num_usable();
  s.blocks_free = st.blocks.num_free();
  s.blocks_cached = st.blocks.num_cached();
  s.blocks_used = st.blocks.num_used();
  s.block_bytes = st.block_bytes;
  s.sequences = static_cast<int64_t>(st.sequences.size());
  s.prefix_hit_rate = s.prefix_lookup_tokens > 0
                          ? static_cast<double>(s.prefix_hit_tokens) / s.prefix_lookup_tokens
                          : 0.0;
  s.swap_slots_total = st.slots.num_slots();
  s.swap_slots_used = st.slots.num_slots() - st.slots.num_free();
  s.batches_in_flight = static_cast<int64_t>(st.pending_records.size());
  return s;
}

}  // namespace flashkv::kvcache
