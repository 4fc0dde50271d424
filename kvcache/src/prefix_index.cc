#include "prefix_index.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "check.h"

namespace flashkv::kvcache::internal {

PrefixIndex::PrefixIndex(int32_t num_blocks, int page_size, PrefixHashFn hash)
    : page_size_(page_size),
      hash_(hash != nullptr ? hash : &DefaultPrefixHash),
      meta_(num_blocks),
      tokens_(static_cast<size_t>(num_blocks) * page_size, 0) {}

bool PrefixIndex::SameContent(int32_t block, uint64_t parent_publication, int32_t tenant,
                              absl::Span<const int64_t> tokens) const {
  const BlockMeta& m = meta_[block];
  if (m.publication == 0 || m.parent_publication != parent_publication || m.tenant != tenant) {
    return false;
  }
  FLASHKV_CHECK(static_cast<int>(tokens.size()) == page_size_);
  return std::equal(tokens.begin(), tokens.end(),
                    tokens_.begin() + static_cast<size_t>(block) * page_size_);
}

PrefixIndex::Match PrefixIndex::Find(uint64_t key, uint64_t parent_publication, int32_t tenant,
                                     absl::Span<const int64_t> tokens) const {
  auto it = by_key_.find(key);
  if (it == by_key_.end() || !SameContent(it->second, parent_publication, tenant, tokens)) {
    return Match{};
  }
  return Match{it->second, meta_[it->second].publication};
}

PrefixIndex::PublishResult PrefixIndex::Publish(int32_t block, uint64_t key,
                                                uint64_t parent_publication, int32_t tenant,
                                                absl::Span<const int64_t> tokens,
                                                uint64_t* publication) {
  FLASHKV_CHECK(meta_[block].publication == 0);
  auto [it, inserted] = by_key_.try_emplace(key, block);
  if (!inserted) {
    if (!SameContent(it->second, parent_publication, tenant, tokens)) return PublishResult::kCollision;
    *publication = meta_[it->second].publication;
    return PublishResult::kDuplicate;
  }
  BlockMeta& m = meta_[block];
  m.key = key;
  m.publication = next_publication_++;
  m.parent_publication = parent_publication;
  m.tenant = tenant;
  std::copy(tokens.begin(), tokens.end(), tokens_.begin() + static_cast<size_t>(block) * page_size_);
  *publication = m.publication;
  return PublishResult::kPublished;
}

void PrefixIndex::Forget(int32_t block) {
  BlockMeta& m = meta_[block];
  if (m.publication == 0) return;
  auto it = by_key_.find(m.key);
  FLASHKV_CHECK(it != by_key_.end() && it->second == block);
  by_key_.erase(it);
  m = BlockMeta{};
}

int32_t PrefixIndex::BlockOf(uint64_t key, uint64_t publication) const {
  auto it = by_key_.find(key);
  if (it == by_key_.end() || meta_[it->second].publication != publication) return 0;
  return it->second;
}

absl::Status PrefixIndex::CheckConsistency() const {
  int64_t published = 0;
  for (size_t b = 0; b < meta_.size(); ++b) {
    if (meta_[b].publication == 0) continue;
    ++published;
    auto it = by_key_.find(meta_[b].key);
    if (it == by_key_.end() || it->second != static_cast<int32_t>(b)) {
      return absl::InternalError(absl::StrCat("published block ", b, " is not indexed by its key"));
    }
  }
  if (published != size()) {
    return absl::InternalError(absl::StrCat("prefix index has ", size(), " keys for ", published,
                                            " published blocks"));
  }
  return absl::OkStatus();
}

}  // namespace flashkv::kvcache::internal
