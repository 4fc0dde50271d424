// AppendKv: writes new K/V rows [tokens, Hkv, D] into the paged cache pools at the slots of
// slot_mapping (block * page_size + offset; negative = skip). A byte copy, so one kernel serves
// every dtype; the vector width is the widest that every pointer and stride allows.

#include <cstdint>

#include "cuda_status.h"
#include "device_state.h"
#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"

namespace flashkv::cuda {
namespace {

struct AppendParams {
  const char* k;
  const char* v;
  char* k_cache;
  char* v_cache;
  const int64_t* slot_mapping;
  int64_t k_row, k_head, v_row, v_head;               // bytes
  int64_t cache_block, cache_slot, cache_head;        // bytes
  int64_t num_tokens;
  int num_heads;
  int vectors_per_row;  // head_dim * element size / sizeof(Vec)
  int page_size;
};

template <typename Vec>
__global__ void __launch_bounds__(256) AppendKvKernel(const __grid_constant__ AppendParams p) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t per_token = static_cast<int64_t>(p.num_heads) * p.vectors_per_row;
  if (idx >= p.num_tokens * per_token) return;
  const int64_t token = idx / per_token;
  const int rem = static_cast<int>(idx - token * per_token);
  const int head = rem / p.vectors_per_row;
  const int vec = rem - head * p.vectors_per_row;
  const int64_t slot = p.slot_mapping[token];
  if (slot < 0) return;
  const int64_t block = slot / p.page_size;
  const int64_t dst = block * p.cache_block + (slot - block * p.page_size) * p.cache_slot +
                      head * p.cache_head + vec * static_cast<int64_t>(sizeof(Vec));
  const int64_t vec_bytes = vec * static_cast<int64_t>(sizeof(Vec));
  *reinterpret_cast<Vec*>(p.k_cache + dst) =
      *reinterpret_cast<const Vec*>(p.k + token * p.k_row + head * p.k_head + vec_bytes);
  *reinterpret_cast<Vec*>(p.v_cache + dst) =
      *reinterpret_cast<const Vec*>(p.v + token * p.v_row + head * p.v_head + vec_bytes);
}

template <typename Vec>
KernelStatus LaunchAppend(AppendParams p, int row_bytes, cudaStream_t stream) {
  p.vectors_per_row = row_bytes / static_cast<int>(sizeof(Vec));
  const int64_t total = p.num_tokens * p.num_heads * p.vectors_per_row;
  const int64_t blocks = (total + 255) / 256;
  if (blocks > 0x7fffffff) return InvalidArgument("num_tokens x num_heads_kv x head_dim too large");
  AppendKvKernel<Vec><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(p);
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return KernelStatus::Ok();
}

// Largest power of two (<= 16) dividing every address and stride in bytes.
int CommonAlignment(std::initializer_list<uint64_t> values) {
  uint64_t bits = 16;
  for (uint64_t v : values) bits |= v;
  return static_cast<int>(bits & (~bits + 1));
}

}  // namespace

KernelStatus AppendKv(const KvAppendArgs& a, Stream stream) {
  FLASHKV_RETURN_IF_ERROR(ValidateKvAppend(a, /*primary_is_host=*/false));
  DeviceProps props;
  FLASHKV_RETURN_IF_ERROR(CurrentDevice(&props));
  if (a.num_tokens == 0) return KernelStatus::Ok();
  const int64_t es = DTypeSize(a.dtype);
  AppendParams p;
  p.k = static_cast<const char*>(a.k);
  p.v = static_cast<const char*>(a.v);
  p.k_cache = static_cast<char*>(a.k_cache);
  p.v_cache = static_cast<char*>(a.v_cache);
  p.slot_mapping = a.slot_mapping;
  p.k_row = a.k_strides.row * es, p.k_head = a.k_strides.head * es;
  p.v_row = a.v_strides.row * es, p.v_head = a.v_strides.head * es;
  p.cache_block = a.cache_strides.batch * es;
  p.cache_slot = a.cache_strides.row * es;
  p.cache_head = a.cache_strides.head * es;
  p.num_tokens = a.num_tokens;
  p.num_heads = a.num_heads_kv;
  p.page_size = a.page_size;
  const int row_bytes = a.head_dim * static_cast<int>(es);
  const int align = CommonAlignment(
      {reinterpret_cast<uint64_t>(a.k), reinterpret_cast<uint64_t>(a.v),
       reinterpret_cast<uint64_t>(a.k_cache), reinterpret_cast<uint64_t>(a.v_cache),
       static_cast<uint64_t>(p.k_row), static_cast<uint64_t>(p.k_head),
       static_cast<uint64_t>(p.v_row), static_cast<uint64_t>(p.v_head),
       static_cast<uint64_t>(p.cache_block), static_cast<uint64_t>(p.cache_slot),
       static_cast<uint64_t>(p.cache_head), static_cast<uint64_t>(row_bytes)});
  switch (align) {
    case 16:
      return LaunchAppend<uint4>(p, row_bytes, stream);
    case 8:
      return LaunchAppend<uint2>(p, row_bytes, stream);
    case 4:
      return LaunchAppend<uint32_t>(p, row_bytes, stream);
    default:
      return LaunchAppend<uint16_t>(p, row_bytes, stream);
  }
}

}  // namespace flashkv::cuda
