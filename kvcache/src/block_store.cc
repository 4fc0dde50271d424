#include "block_store.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "check.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/kvcache/status.h"

namespace flashkv::kvcache::internal {
namespace {

size_t RoundUp(size_t bytes, size_t alignment) { return (bytes + alignment - 1) / alignment * alignment; }

}  // namespace

BlockStore::BlockStore(const CacheConfig& config, int32_t num_blocks, int32_t num_slots)
    : config_(config),
      num_blocks_(num_blocks),
      num_slots_(num_slots),
      block_bytes_(BlockBytesPerLayer(config)) {}

absl::StatusOr<std::unique_ptr<BlockStore>> BlockStore::Create(
    const CacheConfig& config, int32_t num_blocks, int32_t num_slots,
    std::shared_ptr<MemoryAllocator> pool_allocator,
    std::shared_ptr<MemoryAllocator> host_allocator) {
  std::unique_ptr<BlockStore> store(new BlockStore(config, num_blocks, num_slots));
  store->pool_allocator_ = std::move(pool_allocator);
  store->host_allocator_ = std::move(host_allocator);
  const size_t pools = 2 * static_cast<size_t>(config.num_layers);
  store->pool_stride_ = RoundUp(static_cast<size_t>(store->block_bytes_) * num_blocks, 256);
  absl::StatusOr<void*> memory = store->pool_allocator_->Allocate(pools * store->pool_stride_);
  if (!memory.ok()) {
    return absl::Status(memory.status().code(),
                        absl::StrCat("KV pools (", num_blocks, " blocks of ", BlockBytes(config),
                                     " bytes): ", memory.status().message()));
  }
  store->pools_ = static_cast<char*>(*memory);
  if (num_slots > 0) {
    store->swap_stride_ = RoundUp(static_cast<size_t>(store->block_bytes_) * num_slots, 256);
    memory = store->host_allocator_->Allocate(pools * store->swap_stride_);
    if (!memory.ok()) {
      return absl::Status(memory.status().code(),
                          absl::StrCat("swap space (", num_slots, " blocks of ", BlockBytes(config),
                                       " bytes): ", memory.status().message()));
    }
    store->swap_ = static_cast<char*>(*memory);
  }
  if (config.backend == Backend::kCuda) {
    KernelStatus status = cuda::SetDevice(config.device);
    if (status.ok()) status = cuda::StreamCreate(&store->stream_);
    if (!status.ok()) return ToAbslStatus(status);
  }
  return store;
}

BlockStore::~BlockStore() {
  const size_t pools = 2 * static_cast<size_t>(config_.num_layers);
  if (stream_ != nullptr) {
    (void)cuda::SetDevice(config_.device);
    (void)cuda::StreamDestroy(stream_);
  }
  if (pools_ != nullptr) pool_allocator_->Deallocate(pools_, pools * pool_stride_);
  if (swap_ != nullptr) host_allocator_->Deallocate(swap_, pools * swap_stride_);
}

char* BlockStore::Base(Side side, int layer, int kv) const {
  const size_t index = 2 * static_cast<size_t>(layer) + kv;
  return side == Side::kPool ? pools_ + index * pool_stride_ : swap_ + index * swap_stride_;
}

LayerPools BlockStore::layer_pools(int layer) const {
  LayerPools p;
  p.layer = layer;
  p.dtype = config_.dtype;
  p.num_kv_heads = config_.num_kv_heads;
  p.head_dim = config_.head_dim;
  p.page_size = config_.page_size;
  p.num_blocks = num_blocks_;
  p.k = Base(Side::kPool, layer, 0);
  p.v = Base(Side::kPool, layer, 1);
  p.strides = DensePoolStrides(config_.num_kv_heads, config_.page_size, config_.head_dim);
  return p;
}

absl::Status BlockStore::CopyBytes(Side from, Side to, void* dst, const void* src, size_t bytes) {
  if (config_.backend == Backend::kCpu) {
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  KernelStatus status;
  if (from == Side::kPool && to == Side::kPool) {
    status = cuda::MemcpyDeviceToDevice(dst, src, bytes, stream_);
  } else if (from == Side::kPool) {
    status = cuda::MemcpyDeviceToHost(dst, src, bytes, stream_);
  } else {
    status = cuda::MemcpyHostToDevice(dst, src, bytes, stream_);
  }
  return ToAbslStatus(status);
}

// Runs of consecutive ids on both sides move as one copy per pool: fresh pools and a fresh swap
// space hand out ascending ids, so a swapped sequence usually moves in a few copies per layer.
absl::Status BlockStore::Move(Side from, absl::Span<const int32_t> src, Side to,
                              absl::Span<const int32_t> dst) {
  FLASHKV_CHECK(src.size() == dst.size());
  if (src.empty()) return absl::OkStatus();
  if (config_.backend == Backend::kCuda) {
    if (absl::Status s = ToAbslStatus(cuda::SetDevice(config_.device)); !s.ok()) return s;
  }
  const size_t bytes = static_cast<size_t>(block_bytes_);
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    for (int kv = 0; kv < 2; ++kv) {
      const char* src_base = Base(from, layer, kv);
      char* dst_base = Base(to, layer, kv);
      for (size_t i = 0; i < src.size();) {
        size_t run = 1;
        while (i + run < src.size() && src[i + run] == src[i] + static_cast<int32_t>(run) &&
               dst[i + run] == dst[i] + static_cast<int32_t>(run)) {
          ++run;
        }
        absl::Status s = CopyBytes(from, to, dst_base + dst[i] * bytes, src_base + src[i] * bytes,
                                   run * bytes);
        if (!s.ok()) return s;
        i += run;
      }
    }
  }
  if (config_.backend == Backend::kCuda) return ToAbslStatus(cuda::StreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status BlockStore::CopyBlocks(absl::Span<const int32_t> src, absl::Span<const int32_t> dst) {
  return Move(Side::kPool, src, Side::kPool, dst);
}

absl::Status BlockStore::SaveToHost(absl::Span<const int32_t> blocks,
                                    absl::Span<const int32_t> slots) {
  return Move(Side::kPool, blocks, Side::kSwap, slots);
}

absl::Status BlockStore::LoadFromHost(absl::Span<const int32_t> slots,
                                      absl::Span<const int32_t> blocks) {
  return Move(Side::kSwap, slots, Side::kPool, blocks);
}

SlotAllocator::SlotAllocator(int32_t num_slots) : num_slots_(num_slots) {
  free_.reserve(num_slots);
  for (int32_t s = num_slots - 1; s >= 0; --s) free_.push_back(s);
}

int32_t SlotAllocator::Allocate() {
  FLASHKV_CHECK(!free_.empty());
  const int32_t slot = free_.back();
  free_.pop_back();
  return slot;
}

void SlotAllocator::Free(int32_t slot) {
  FLASHKV_CHECK(slot >= 0 && slot < num_slots_);
  free_.push_back(slot);
}

}  // namespace flashkv::kvcache::internal
