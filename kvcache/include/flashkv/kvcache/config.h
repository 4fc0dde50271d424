#pragma once

// The shape and memory of one KV cache: one model shape (layers, KV heads, head dim, dtype) on one
// device (or on the host, for the CPU backend).

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "flashkv/dtype.h"
#include "flashkv/kvcache/memory.h"

namespace flashkv::kvcache {

enum class Backend {
  kCpu,   // pools in host memory; append and attention through flashkv::cpu
  kCuda,  // pools in device memory; append and attention through flashkv::cuda
};

const char* BackendName(Backend backend);

// How much memory the K and V pools of all layers take together. The block count follows:
// floor(budget / bytes per block), where a block holds page_size tokens of K and V for every
// layer. That count includes block 0, the null block, which is never handed out.
struct PoolBudget {
  enum class Kind {
    kBytes,     // exactly `bytes`
    kFraction,  // `fraction` of free device memory (CUDA), of `host_memory_bytes` (CPU)
    kBlocks,    // `blocks` usable blocks, plus the null block (tests, benchmarks)
  };
  Kind kind = Kind::kFraction;
  int64_t bytes = 0;
  double fraction = 0.9;
  int64_t host_memory_bytes = 0;
  int64_t blocks = 0;

  static PoolBudget Bytes(int64_t bytes);
  static PoolBudget FractionOfFreeDeviceMemory(double fraction);
  static PoolBudget FractionOfHostMemory(double fraction, int64_t host_memory_bytes);
  static PoolBudget Blocks(int64_t usable_blocks);
};

// The prefix-cache key of a full block: a hash of (the previous block's key, this block's token
// ids, the tenant's salt). Replaceable only so that tests can force collisions.
using PrefixHashFn = uint64_t (*)(uint64_t parent_hash, absl::Span<const int64_t> token_ids,
                                  uint64_t tenant_salt);
uint64_t DefaultPrefixHash(uint64_t parent_hash, absl::Span<const int64_t> token_ids,
                           uint64_t tenant_salt);

struct CacheConfig {
  // Model shape.
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // one of kSupportedHeadDims
  DType dtype = DType::kFloat16;
  // Tokens per block, any value >= 1.
  int page_size = 16;

  Backend backend = Backend::kCpu;
  int device = 0;  // CUDA device id (kCuda only)

  PoolBudget budget;
  // Longest context (tokens) one sequence may reach. 0: as many tokens as the pool holds.
  int max_context = 0;
  // Host memory for sequences swapped out under pressure (pinned with CUDA). 0: no swapping, an
  // append that finds no free block fails with RESOURCE_EXHAUSTED.
  int64_t swap_budget_bytes = 0;

  // Time source for last-used stamps (ExpireIdle). Default: absl::Now. Must not go backwards.
  std::function<absl::Time()> clock;

  // Test seams; null means the backend's default (host or device pools; host or pinned staging).
  std::shared_ptr<MemoryAllocator> pool_allocator;
  std::shared_ptr<MemoryAllocator> staging_allocator;
  PrefixHashFn prefix_hash = nullptr;
};

// Every field checked, each error naming the field and its limit (INVALID_ARGUMENT).
absl::Status ValidateConfig(const CacheConfig& config);

// Bytes of one block of one layer's K pool (Hkv * page_size * head_dim elements).
int64_t BlockBytesPerLayer(const CacheConfig& config);
// Bytes of one block id across the pools: K and V of every layer.
int64_t BlockBytes(const CacheConfig& config);

}  // namespace flashkv::kvcache
