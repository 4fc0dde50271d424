#include "flashkv/server/launch.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "flashkv/cpu_backend.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/server/status.h"

namespace flashkv::server {
namespace {

size_t Align64(size_t bytes) { return (bytes + 63) / 64 * 64; }

// The rows [a, b) of entry `index` (part-local) of `part`, as one sequence of the launch.
struct Segment {
  const StepPart* part;
  int index;
  int64_t a, b;
};

struct Layout {
  size_t slot = 0, cu_q = 0, cu_kv = 0, table = 0, q = 0, k = 0, v = 0, in_bytes = 0;
  size_t out_bytes = 0;
};

std::vector<Segment> Segments(absl::Span<const LaunchWindow> windows) {
  std::vector<Segment> segments;
  for (const LaunchWindow& w : windows) {
    const std::vector<int64_t>& start = w.part->row_start();
    for (size_t i = 0; i + 1 < start.size(); ++i) {
      const int64_t a = std::max(w.begin, start[i]), b = std::min(w.end, start[i + 1]);
      if (a < b)
        segments.push_back(Segment{w.part, static_cast<int>(i), a - start[i], b - start[i]});
    }
  }
  return segments;
}

// The launch's q, k and v rows, and its output rows, where each already lies in one contiguous
// run in segment order: a runner's batch laid out in a shared-memory region, or (outputs) the
// entries of one step. The CPU kernels then read and write them in place, and the staging copy
// or the scatter is skipped. Null where the rows are scattered (or misaligned for the dtype).
struct InPlace {
  const uint8_t* q = nullptr;
  const uint8_t* k = nullptr;
  const uint8_t* v = nullptr;
  uint8_t* out = nullptr;
};

InPlace FindInPlace(const ModelShape& m, const std::vector<Segment>& segments) {
  const size_t elem = static_cast<size_t>(DTypeSize(m.dtype));
  const size_t q_row = static_cast<size_t>(m.num_q_heads) * m.head_dim * elem;
  const size_t kv_row = static_cast<size_t>(m.num_kv_heads) * m.head_dim * elem;
  InPlace base;
  bool q = true, k = true, v = true, out = true;
  size_t rows_before = 0;
  for (size_t s = 0; s < segments.size(); ++s) {
    const Segment& g = segments[s];
    const StepState& step = g.part->step();
    const StepEntry& e = step.entries()[g.part->entries()[g.index]];
    const size_t rows = static_cast<size_t>(g.b - g.a);
    auto rows_at = [&](wire::Span span, size_t row) {
      return step.message().Contiguous(wire::Span{span.offset + g.a * row, rows * row});
    };
    const uint8_t* at_q = rows_at(e.q, q_row);
    const uint8_t* at_k = rows_at(e.k, kv_row);
    const uint8_t* at_v = rows_at(e.v, kv_row);
    uint8_t* at_out = step.OutputRows(e) + g.a * q_row;
    if (s == 0) base = InPlace{at_q, at_k, at_v, at_out};
    q = q && at_q != nullptr && at_q == base.q + rows_before * q_row;
    k = k && at_k != nullptr && at_k == base.k + rows_before * kv_row;
    v = v && at_v != nullptr && at_v == base.v + rows_before * kv_row;
    out = out && at_out == base.out + rows_before * q_row;
    rows_before += rows;
  }
  auto aligned = [elem](const uint8_t* p) { return reinterpret_cast<uintptr_t>(p) % elem == 0; };
  return InPlace{q && aligned(base.q) ? base.q : nullptr, k && aligned(base.k) ? base.k : nullptr,
                 v && aligned(base.v) ? base.v : nullptr,
                 out && aligned(base.out) ? base.out : nullptr};
}

// Fills the staging input: metadata for every segment, then its q, k and v rows copied straight
// from the request's received bytes (except those the kernels read in place). Returns
// max_seqlen_q and max_seqlen_kv.
std::pair<int, int> Stage(const ModelShape& m, const std::vector<Segment>& segments,
                          const Layout& layout, int stride, const InPlace& in_place, uint8_t* in) {
  auto* slot = reinterpret_cast<int64_t*>(in + layout.slot);
  auto* cu_q = reinterpret_cast<int32_t*>(in + layout.cu_q);
  auto* cu_kv = reinterpret_cast<int32_t*>(in + layout.cu_kv);
  auto* table = reinterpret_cast<int32_t*>(in + layout.table);
  const size_t elem = static_cast<size_t>(DTypeSize(m.dtype));
  const size_t q_row = static_cast<size_t>(m.num_q_heads) * m.head_dim * elem;
  const size_t kv_row = static_cast<size_t>(m.num_kv_heads) * m.head_dim * elem;
  cu_q[0] = cu_kv[0] = 0;
  int max_q = 0, max_kv = 0;
  for (size_t s = 0; s < segments.size(); ++s) {
    const Segment& g = segments[s];
    const kvcache::LayerBatch& batch = *g.part->batch;
    const absl::Span<const int32_t> bq = batch.cu_seqlens_q(), bkv = batch.cu_seqlens_kv();
    const int i = g.index;
    const int64_t rows = g.b - g.a;
    const int64_t context_before = (bkv[i + 1] - bkv[i]) - (bq[i + 1] - bq[i]);
    const int64_t kv_len = context_before + g.b;
    cu_q[s + 1] = static_cast<int32_t>(cu_q[s] + rows);
    cu_kv[s + 1] = static_cast<int32_t>(cu_kv[s] + kv_len);
    max_q = std::max<int>(max_q, static_cast<int>(rows));
    max_kv = std::max<int>(max_kv, static_cast<int>(kv_len));
    std::memcpy(slot + cu_q[s], batch.slot_mapping().data() + bq[i] + g.a, rows * sizeof(int64_t));
    const int batch_stride = batch.block_table_stride();
    int32_t* row = table + s * static_cast<size_t>(stride);
    std::memcpy(row, batch.block_table().data() + static_cast<size_t>(i) * batch_stride,
                batch_stride * sizeof(int32_t));
    std::fill(row + batch_stride, row + stride, 0);  // block 0: the null block
    const StepEntry& e = g.part->step().entries()[g.part->entries()[i]];
    const wire::MessageBytes& message = g.part->step().message();
    if (in_place.q == nullptr) {
      message.CopyTo(wire::Span{e.q.offset + g.a * q_row, rows * q_row},
                     in + layout.q + cu_q[s] * q_row);
    }
    if (in_place.k == nullptr) {
      message.CopyTo(wire::Span{e.k.offset + g.a * kv_row, rows * kv_row},
                     in + layout.k + cu_q[s] * kv_row);
    }
    if (in_place.v == nullptr) {
      message.CopyTo(wire::Span{e.v.offset + g.a * kv_row, rows * kv_row},
                     in + layout.v + cu_q[s] * kv_row);
    }
  }
  return {max_q, max_kv};
}

// The layer's pools, in the fields KvAppendArgs and PagedAttentionArgs share.
template <typename Args>
void SetPools(const kvcache::LayerPools& pools, Args* args) {
  args->k_cache = pools.k;
  args->v_cache = pools.v;
  args->cache_strides = pools.strides;
  args->num_blocks = pools.num_blocks;
  args->page_size = pools.page_size;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LaunchArena>> LaunchArena::Create(bool cuda, int cuda_device) {
  cuda::Stream stream = nullptr;
  cuda::Event start = nullptr, end = nullptr;
  if (cuda) {
    if (auto s = FromKernelStatus(cuda::SetDevice(cuda_device)); !s.ok()) return s;
    if (auto s = FromKernelStatus(cuda::StreamCreate(&stream)); !s.ok()) return s;
    KernelStatus s = cuda::EventCreate(&start);
    if (s.ok()) s = cuda::EventCreate(&end);
    if (!s.ok()) {
      if (start != nullptr) (void)cuda::EventDestroy(start);
      (void)cuda::StreamDestroy(stream);
      return FromKernelStatus(s);
    }
  }
  return std::unique_ptr<LaunchArena>(new LaunchArena(cuda, cuda_device, stream, start, end));
}

LaunchArena::LaunchArena(bool cuda, int device, CUstream_st* stream, CUevent_st* kernels_start,
                         CUevent_st* kernels_end)
    : cuda_(cuda),
      device_(device),
      stream_(stream),
      kernels_start_(kernels_start),
      kernels_end_(kernels_end),
      host_allocator_(cuda ? kvcache::NewPinnedHostAllocator() : kvcache::NewHostAllocator()),
      device_allocator_(cuda ? kvcache::NewDeviceAllocator(device) : nullptr) {}

LaunchArena::~LaunchArena() {
  Release(*host_allocator_, &host_in_);
  Release(*host_allocator_, &host_out_);
  if (cuda_) {
    Release(*device_allocator_, &device_in_);
    Release(*device_allocator_, &device_out_);
    (void)cuda::SetDevice(device_);
    (void)cuda::EventDestroy(kernels_start_);
    (void)cuda::EventDestroy(kernels_end_);
    (void)cuda::StreamDestroy(stream_);
  }
}

void LaunchArena::Release(kvcache::MemoryAllocator& allocator, Buffer* buffer) {
  if (buffer->data != nullptr) allocator.Deallocate(buffer->data, buffer->bytes);
  *buffer = Buffer{};
}

absl::Status LaunchArena::Grow(kvcache::MemoryAllocator& allocator, Buffer* buffer, size_t bytes) {
  if (bytes <= buffer->bytes) return absl::OkStatus();
  Release(allocator, buffer);
  // Grow by half again, so that a slowly rising batch size does not reallocate every launch.
  const size_t capacity = std::max<size_t>(bytes + bytes / 2, 1 << 20);
  absl::StatusOr<void*> data = allocator.Allocate(capacity);
  if (!data.ok()) {
    return absl::ResourceExhaustedError("staging buffer of " + std::to_string(capacity) +
                                        " bytes: " + std::string(data.status().message()));
  }
  *buffer = Buffer{static_cast<uint8_t*>(*data), capacity};
  return absl::OkStatus();
}

absl::Status LaunchArena::Reserve(size_t in_bytes, size_t out_bytes) {
  if (auto s = Grow(*host_allocator_, &host_in_, in_bytes); !s.ok()) return s;
  if (auto s = Grow(*host_allocator_, &host_out_, out_bytes); !s.ok()) return s;
  if (!cuda_) return absl::OkStatus();
  if (auto s = Grow(*device_allocator_, &device_in_, in_bytes); !s.ok()) return s;
  return Grow(*device_allocator_, &device_out_, out_bytes);
}

absl::StatusOr<LaunchSummary> RunLaunch(const ModelShape& m, absl::Span<const LaunchWindow> windows,
                                        const kvcache::LayerPools& pools, LaunchArena* arena) {
  const std::vector<Segment> segments = Segments(windows);
  const size_t n = segments.size();
  int64_t total = 0;
  int stride = 1;
  for (const Segment& g : segments) total += g.b - g.a;
  for (const LaunchWindow& w : windows)
    stride = std::max(stride, w.part->batch->block_table_stride());
  const size_t elem = static_cast<size_t>(DTypeSize(m.dtype));
  const size_t q_bytes = total * static_cast<size_t>(m.num_q_heads) * m.head_dim * elem;
  const size_t kv_bytes = total * static_cast<size_t>(m.num_kv_heads) * m.head_dim * elem;
  Layout layout;
  layout.cu_q = Align64(total * sizeof(int64_t));
  layout.cu_kv = layout.cu_q + Align64((n + 1) * sizeof(int32_t));
  layout.table = layout.cu_kv + Align64((n + 1) * sizeof(int32_t));
  layout.q = layout.table + Align64(n * stride * sizeof(int32_t));
  layout.k = layout.q + Align64(q_bytes);
  layout.v = layout.k + Align64(kv_bytes);
  layout.in_bytes = layout.v + kv_bytes;
  layout.out_bytes = q_bytes;
  if (auto s = arena->Reserve(layout.in_bytes, layout.out_bytes); !s.ok()) return s;
  // CUDA stages everything: one transfer from pinned memory beats several from pageable memory.
  const InPlace in_place = arena->cuda() ? InPlace{} : FindInPlace(m, segments);
  const auto [max_q, max_kv] = Stage(m, segments, layout, stride, in_place, arena->host_in());

  uint8_t* host = arena->host_in();
  uint8_t* dev = arena->device_in();
  KvAppendArgs append;
  append.dtype = m.dtype;
  append.num_tokens = total;
  append.num_heads_kv = m.num_kv_heads;
  append.head_dim = m.head_dim;
  append.k = in_place.k != nullptr ? in_place.k : dev + layout.k;
  append.v = in_place.v != nullptr ? in_place.v : dev + layout.v;
  append.k_strides = append.v_strides = DenseStrides(0, m.num_kv_heads, m.head_dim);
  SetPools(pools, &append);
  append.slot_mapping = reinterpret_cast<const int64_t*>(dev + layout.slot);
  append.host_slot_mapping = reinterpret_cast<const int64_t*>(host + layout.slot);

  PagedAttentionArgs attention;
  attention.dtype = m.dtype;
  attention.num_seqs = static_cast<int>(n);
  attention.num_heads_q = m.num_q_heads;
  attention.num_heads_kv = m.num_kv_heads;
  attention.head_dim = m.head_dim;
  attention.total_q = total;
  attention.max_seqlen_q = max_q;
  attention.max_seqlen_kv = max_kv;
  attention.q = in_place.q != nullptr ? in_place.q : dev + layout.q;
  attention.q_strides = attention.out_strides = DenseStrides(0, m.num_q_heads, m.head_dim);
  attention.out = in_place.out != nullptr ? in_place.out : arena->device_out();
  SetPools(pools, &attention);
  attention.block_table = reinterpret_cast<const int32_t*>(dev + layout.table);
  attention.block_table_stride = stride;
  attention.cu_seqlens_q = reinterpret_cast<const int32_t*>(dev + layout.cu_q);
  attention.cu_seqlens_kv = reinterpret_cast<const int32_t*>(dev + layout.cu_kv);
  attention.host_block_table = reinterpret_cast<const int32_t*>(host + layout.table);
  attention.host_cu_seqlens_q = reinterpret_cast<const int32_t*>(host + layout.cu_q);
  attention.host_cu_seqlens_kv = reinterpret_cast<const int32_t*>(host + layout.cu_kv);
  attention.options = AttentionOptions{/*causal=*/true, std::nullopt};

  absl::Duration kernel_time;
  if (arena->cuda()) {
    // The one host-to-device copy of the launch: metadata, q, k and v together.
    cuda::Stream stream = arena->stream();
    KernelStatus s = cuda::MemcpyHostToDevice(dev, host, layout.in_bytes, stream);
    if (s.ok()) s = cuda::EventRecord(arena->kernels_start(), stream);
    if (s.ok()) s = cuda::AppendKv(append, stream);
    if (s.ok()) s = cuda::AttentionPaged(attention, stream);
    if (s.ok()) s = cuda::EventRecord(arena->kernels_end(), stream);
    if (s.ok()) {
      s = cuda::MemcpyDeviceToHost(arena->host_out(), arena->device_out(), layout.out_bytes,
                                   stream);
    }
    if (s.ok()) s = cuda::StreamSynchronize(stream);
    float ms = 0;
    if (s.ok()) s = cuda::EventElapsedMs(arena->kernels_start(), arena->kernels_end(), &ms);
    if (!s.ok()) return FromKernelStatus(s);
    kernel_time = absl::Microseconds(static_cast<double>(ms) * 1000.0);
  } else {
    const absl::Time start = absl::Now();
    KernelStatus s = cpu::AppendKv(append);
    if (s.ok()) s = cpu::AttentionPaged(attention);
    if (!s.ok()) return FromKernelStatus(s);
    kernel_time = absl::Now() - start;
  }

  if (in_place.out != nullptr) return LaunchSummary{static_cast<int>(n), total, kernel_time};
  // Scatter: segment s's output rows go to its entry's rows [a, b) in the step's output.
  const auto* cu_q = reinterpret_cast<const int32_t*>(host + layout.cu_q);
  const size_t out_row = static_cast<size_t>(m.num_q_heads) * m.head_dim * elem;
  for (size_t s = 0; s < n; ++s) {
    const Segment& g = segments[s];
    const StepEntry& e = g.part->step().entries()[g.part->entries()[g.index]];
    std::memcpy(g.part->step().OutputRows(e) + g.a * out_row,
                arena->host_out() + static_cast<size_t>(cu_q[s]) * out_row,
                static_cast<size_t>(g.b - g.a) * out_row);
  }
  return LaunchSummary{static_cast<int>(n), total, kernel_time};
}

}  // namespace flashkv::server
