// AppendKv on the CPU (flashkv/cpu_backend.h): copies new K/V rows into their cache slots.

#include <cstdint>
#include <cstring>

#include "cpu/thread_pool.h"
#include "flashkv/cpu_backend.h"

namespace flashkv::cpu {
namespace {

// Below this many bytes per call, waking workers costs more than the copy (a decode step writes a
// few KiB).
constexpr int64_t kParallelBytes = int64_t{1} << 20;

}  // namespace

KernelStatus AppendKv(const KvAppendArgs& a) {
  FLASHKV_RETURN_IF_ERROR(ValidateKvAppend(a, /*primary_is_host=*/true));
  if (a.num_tokens == 0) return KernelStatus::Ok();
  const int64_t* slots = a.host_slot_mapping != nullptr ? a.host_slot_mapping : a.slot_mapping;
  const int64_t elem = DTypeSize(a.dtype);
  const size_t row_bytes = static_cast<size_t>(a.head_dim * elem);
  const auto* k = static_cast<const unsigned char*>(a.k);
  const auto* v = static_cast<const unsigned char*>(a.v);
  auto* k_cache = static_cast<unsigned char*>(a.k_cache);
  auto* v_cache = static_cast<unsigned char*>(a.v_cache);
  const Strides& cs = a.cache_strides;

  // One head per work item, tokens in order: each item writes only its own head's rows, and a slot
  // named twice (the API does not forbid it) ends up with the later token, as in a serial loop.
  auto copy_head = [&](int64_t h) {
    for (int64_t i = 0; i < a.num_tokens; ++i) {
      const int64_t slot = slots[i];
      if (slot < 0) continue;  // padding
      const int64_t dst = (slot / a.page_size) * cs.batch + (slot % a.page_size) * cs.row +
                          h * cs.head;
      std::memcpy(k_cache + dst * elem, k + (i * a.k_strides.row + h * a.k_strides.head) * elem,
                  row_bytes);
      std::memcpy(v_cache + dst * elem, v + (i * a.v_strides.row + h * a.v_strides.head) * elem,
                  row_bytes);
    }
  };
  const int64_t bytes = 2 * a.num_tokens * a.num_heads_kv * static_cast<int64_t>(row_bytes);
  if (bytes < kParallelBytes) {
    for (int64_t h = 0; h < a.num_heads_kv; ++h) copy_head(h);
  } else {
    ThreadPool::Global().ParallelFor(a.num_heads_kv, copy_head);
  }
  return KernelStatus::Ok();
}

}  // namespace flashkv::cpu
