#include "flashkv/kvcache/block_allocator.h"

#include "absl/strings/str_cat.h"
#include "check.h"

namespace flashkv::kvcache {

BlockAllocator::BlockAllocator(int32_t num_blocks)
    : ref_(num_blocks, 0), cached_(num_blocks, 0), prev_(num_blocks, 0), next_(num_blocks, 0) {
  FLASHKV_CHECK(num_blocks >= 2);
  // Pushed high to low so ids come out 1, 2, 3, ...: fresh pools fill in address order.
  free_.reserve(num_blocks - 1);
  for (int32_t b = num_blocks - 1; b >= 1; --b) free_.push_back(b);
  prev_[kNullBlock] = next_[kNullBlock] = kNullBlock;
  ref_[kNullBlock] = 1;  // never free, never handed out
}

void BlockAllocator::LinkAtMru(int32_t b) {
  const int32_t last = prev_[kNullBlock];
  prev_[b] = last;
  next_[b] = kNullBlock;
  next_[last] = b;
  prev_[kNullBlock] = b;
  ++num_cached_free_;
}

void BlockAllocator::Unlink(int32_t b) {
  next_[prev_[b]] = next_[b];
  prev_[next_[b]] = prev_[b];
  prev_[b] = next_[b] = kNullBlock;
  --num_cached_free_;
}

int32_t BlockAllocator::Allocate(bool* evicted) {
  *evicted = false;
  int32_t b = kNullBlock;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (num_cached_free_ > 0) {
    b = next_[kNullBlock];  // least recently released
    Unlink(b);
    cached_[b] = 0;
    *evicted = true;
  } else {
    return kNullBlock;
  }
  ref_[b] = 1;
  return b;
}

void BlockAllocator::Ref(int32_t b) {
  FLASHKV_CHECK(b > kNullBlock && b < num_blocks());
  if (ref_[b] == 0) {
    // Only a cached-free block can be revived: a free one holds nothing anyone could want.
    FLASHKV_CHECK(cached_[b]);
    Unlink(b);
  }
  ++ref_[b];
}

void BlockAllocator::Release(int32_t b) {
  FLASHKV_CHECK(b > kNullBlock && b < num_blocks() && ref_[b] > 0);
  if (--ref_[b] > 0) return;
  if (cached_[b]) {
    LinkAtMru(b);
  } else {
    free_.push_back(b);
  }
}

void BlockAllocator::SetCached(int32_t b, bool cached) {
  FLASHKV_CHECK(b > kNullBlock && b < num_blocks() && ref_[b] > 0);
  cached_[b] = cached ? 1 : 0;
}

std::vector<int32_t> BlockAllocator::CachedFreeInLruOrder() const {
  std::vector<int32_t> order;
  order.reserve(num_cached_free_);
  for (int32_t b = next_[kNullBlock]; b != kNullBlock; b = next_[b]) order.push_back(b);
  return order;
}

absl::Status BlockAllocator::CheckConsistency() const {
  const int32_t n = num_blocks();
  // 0: not yet seen, 1: in the free stack, 2: in the cached-free list.
  std::vector<uint8_t> seen(n, 0);
  for (int32_t b : free_) {
    if (b <= kNullBlock || b >= n) return absl::InternalError(absl::StrCat("free list holds id ", b));
    if (seen[b]) return absl::InternalError(absl::StrCat("block ", b, " is twice in the free list"));
    seen[b] = 1;
    if (ref_[b] != 0 || cached_[b]) {
      return absl::InternalError(absl::StrCat("block ", b, " is in the free list with ref count ",
                                              ref_[b], ", cached ", int{cached_[b]}));
    }
  }
  int32_t listed = 0;
  for (int32_t b = next_[kNullBlock], prev = kNullBlock; b != kNullBlock; prev = b, b = next_[b]) {
    if (b <= kNullBlock || b >= n || seen[b] || prev_[b] != prev || ++listed > n) {
      return absl::InternalError(absl::StrCat("cached-free list is corrupt at block ", b));
    }
    seen[b] = 2;
    if (ref_[b] != 0 || !cached_[b]) {
      return absl::InternalError(absl::StrCat("block ", b, " is cached-free with ref count ",
                                              ref_[b], ", cached ", int{cached_[b]}));
    }
  }
  if (listed != num_cached_free_) {
    return absl::InternalError(absl::StrCat("cached-free list has ", listed, " blocks, count says ",
                                            num_cached_free_));
  }
  int32_t used = 0;
  for (int32_t b = 1; b < n; ++b) {
    if (seen[b]) continue;
    if (ref_[b] <= 0) {
      return absl::InternalError(
          absl::StrCat("block ", b, " has ref count ", ref_[b], " but is in no free list"));
    }
    ++used;
  }
  if (num_free() + num_cached() + used != num_usable()) {
    return absl::InternalError(absl::StrCat("free (", num_free(), ") + cached (", num_cached(),
                                            ") + used (", used, ") != total (", num_usable(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace flashkv::kvcache
