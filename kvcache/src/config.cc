// Config checks, block sizing and the default prefix hash.

#include "flashkv/kvcache/config.h"

#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "flashkv/attention.h"

namespace flashkv::kvcache {
namespace {

bool IsSupportedHeadDim(int head_dim) {
  for (int d : kSupportedHeadDims) {
    if (d == head_dim) return true;
  }
  return false;
}

// splitmix64's finaliser: every input bit affects every output bit.
uint64_t Mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

absl::Status CheckBudget(const CacheConfig& c) {
  const PoolBudget& b = c.budget;
  switch (b.kind) {
    case PoolBudget::Kind::kBytes:
      if (b.bytes <= 0) {
        return absl::InvalidArgumentError(absl::StrCat("budget.bytes (", b.bytes, ") must be > 0"));
      }
      return absl::OkStatus();
    case PoolBudget::Kind::kFraction:
      if (!(b.fraction > 0.0 && b.fraction <= 1.0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("budget.fraction (", b.fraction, ") must be in (0, 1]"));
      }
      if (c.backend == Backend::kCpu && b.host_memory_bytes <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "budget.host_memory_bytes (", b.host_memory_bytes,
            ") must be > 0: the CPU backend takes its fraction of a stated host budget"));
      }
      return absl::OkStatus();
    case PoolBudget::Kind::kBlocks:
      if (b.blocks < 1 || b.blocks >= std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(
            absl::StrCat("budget.blocks (", b.blocks, ") must be in [1, 2^31 - 1)"));
      }
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError("budget.kind is not one of kBytes, kFraction, kBlocks");
}

}  // namespace

const char* BackendName(Backend backend) {
  switch (backend) {
    case Backend::kCpu:
      return "cpu";
    case Backend::kCuda:
      return "cuda";
  }
  return "unknown";
}

PoolBudget PoolBudget::Bytes(int64_t bytes) {
  PoolBudget b;
  b.kind = Kind::kBytes;
  b.bytes = bytes;
  return b;
}

PoolBudget PoolBudget::FractionOfFreeDeviceMemory(double fraction) {
  PoolBudget b;
  b.kind = Kind::kFraction;
  b.fraction = fraction;
  return b;
}

PoolBudget PoolBudget::FractionOfHostMemory(double fraction, int64_t host_memory_bytes) {
  PoolBudget b;
  b.kind = Kind::kFraction;
  b.fraction = fraction;
  b.host_memory_bytes = host_memory_bytes;
  return b;
}

PoolBudget PoolBudget::Blocks(int64_t usable_blocks) {
  PoolBudget b;
  b.kind = Kind::kBlocks;
  b.blocks = usable_blocks;
  return b;
}

uint64_t DefaultPrefixHash(uint64_t parent_hash, absl::Span<const int64_t> token_ids,
                           uint64_t tenant_salt) {
  uint64_t h = Mix(parent_hash ^ 0x9e3779b97f4a7c15ull) ^ Mix(tenant_salt + 0x632be59bd9b4e019ull);
  for (int64_t token : token_ids) h = Mix(h ^ static_cast<uint64_t>(token)) + 0x9e3779b97f4a7c15ull;
  return Mix(h ^ token_ids.size());
}

int64_t BlockBytesPerLayer(const CacheConfig& c) {
  return static_cast<int64_t>(c.num_kv_heads) * c.page_size * c.head_dim * DTypeSize(c.dtype);
}

int64_t BlockBytes(const CacheConfig& c) { return 2 * c.num_layers * BlockBytesPerLayer(c); }

absl::Status ValidateConfig(const CacheConfig& c) {
  if (c.num_layers < 1 || c.num_layers > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_layers (", c.num_layers, ") must be in [1, 4096]"));
  }
  if (c.num_kv_heads < 1 || c.num_kv_heads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_kv_heads (", c.num_kv_heads, ") must be in [1, 1024]"));
  }
  if (!IsSupportedHeadDim(c.head_dim)) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim (", c.head_dim, ") must be one of 32, 64, 96, 128, 192, 256"));
  }
  if (c.dtype != DType::kFloat16 && c.dtype != DType::kBFloat16 && c.dtype != DType::kFloat32) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype (", static_cast<int>(c.dtype), ") must be fp16, bf16 or fp32"));
  }
  if (c.page_size < 1 || c.page_size > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size (", c.page_size, ") must be in [1, 65536]"));
  }
  if (c.backend != Backend::kCpu && c.backend != Backend::kCuda) {
    return absl::InvalidArgumentError("backend must be kCpu or kCuda");
  }
  if (c.device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("device (", c.device, ") must be >= 0"));
  }
  if (c.max_context < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_context (", c.max_context, ") must be >= 0 (0: what the pool holds)"));
  }
  if (c.swap_budget_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("swap_budget_bytes (", c.swap_budget_bytes, ") must be >= 0"));
  }
  return CheckBudget(c);
}

}  // namespace flashkv::kvcache
