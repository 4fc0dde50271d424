#pragma once

// The memory behind block ids: one K and one V pool per layer, [num_blocks, Hkv, page_size, D]
// (device memory with CUDA), and the swap space, the same layout in host memory with `num_slots`
// slots in place of blocks. Moves whole blocks (every layer, K and V) between them: pool to pool
// for copy-on-write, pool to swap space and back for swapping.
//
// Copies are synchronous: with CUDA they run on the store's own stream, which is synchronised
// before returning, so the data has landed when the caller reuses either side.
//
// Thread-safety: none; the owner serialises calls (KvCache does so under its mutex). Slot ids are
// handed out by the owner too (SlotAllocator below), so this class only moves bytes.

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "flashkv/kvcache/config.h"
#include "flashkv/kvcache/layer_batch.h"
#include "flashkv/kvcache/memory.h"

struct CUstream_st;

namespace flashkv::kvcache::internal {

class BlockStore {
 public:
  static absl::StatusOr<std::unique_ptr<BlockStore>> Create(
      const CacheConfig& config, int32_t num_blocks, int32_t num_slots,
      std::shared_ptr<MemoryAllocator> pool_allocator,
      std::shared_ptr<MemoryAllocator> host_allocator);
  ~BlockStore();
  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  LayerPools layer_pools(int layer) const;
  int32_t num_blocks() const { return num_blocks_; }
  int32_t num_slots() const { return num_slots_; }
  int64_t block_bytes_per_layer() const { return block_bytes_; }

  // Block src[i] -> block dst[i] in every layer's K and V pools.
  absl::Status CopyBlocks(absl::Span<const int32_t> src, absl::Span<const int32_t> dst);
  // Block blocks[i] -> swap slot slots[i].
  absl::Status SaveToHost(absl::Span<const int32_t> blocks, absl::Span<const int32_t> slots);
  // Swap slot slots[i] -> block blocks[i].
  absl::Status LoadFromHost(absl::Span<const int32_t> slots, absl::Span<const int32_t> blocks);

 private:
  enum class Side { kPool, kSwap };
  BlockStore(const CacheConfig& config, int32_t num_blocks, int32_t num_slots);
  char* Base(Side side, int layer, int kv) const;
  absl::Status Move(Side from, absl::Span<const int32_t> src, Side to,
                    absl::Span<const int32_t> dst);
  absl::Status CopyBytes(Side from, Side to, void* dst, const void* src, size_t bytes);

  const CacheConfig config_;
  const int32_t num_blocks_;
  const int32_t num_slots_;
  const int64_t block_bytes_;  // one block of one layer's K (or V) pool
  std::shared_ptr<MemoryAllocator> pool_allocator_;
  std::shared_ptr<MemoryAllocator> host_allocator_;
  char* pools_ = nullptr;  // 2 * num_layers pools of pool_stride_ bytes: layer l K, then V
  char* swap_ = nullptr;   // the same for the swap space, swap_stride_ bytes each
  size_t pool_stride_ = 0;
  size_t swap_stride_ = 0;
  CUstream_st* stream_ = nullptr;  // CUDA only
};

// Swap-space slot ids: a stack, O(1) both ways.
class SlotAllocator {
 public:
  explicit SlotAllocator(int32_t num_slots);
  int32_t num_slots() const { return num_slots_; }
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t Allocate();  // requires num_free() > 0
  void Free(int32_t slot);
  const std::vector<int32_t>& free_slots() const { return free_; }

 private:
  int32_t num_slots_;
  std::vector<int32_t> free_;
};

}  // namespace flashkv::kvcache::internal
