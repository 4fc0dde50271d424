#include "flashkv/server/launch.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
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

// The q, k and v sections of `total` rows from byte `at` of the staging input on, and the output.
void SetTensorSections(const ModelShape& m, int64_t total, size_t at, Layout* layout) {
  const size_t elem = static_cast<size_t>(DTypeSize(m.dtype));
  const size_t q_bytes = total * static_cast<size_t>(m.num_q_heads) * m.head_dim * elem;
  const size_t kv_bytes = total * static_cast<size_t>(m.num_kv_heads) * m.head_dim * elem;
  layout->q = at;
  layout->k = layout->q + Align64(q_bytes);
  layout->v = layout->k + Align64(kv_bytes);
  layout->in_bytes = layout->v + kv_bytes;
  layout->out_bytes = q_bytes;
}

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

enum class Input { kQ, kK, kV };

// Where a segment's rows of one tensor lie: a host pointer (null when they are split across the
// message's slices), or a device pointer (a CUDA region on the launch's device).
struct RowsAt {
  const uint8_t* p = nullptr;
  bool device = false;
};

RowsAt InputRows(const Segment& g, Input input, size_t row_bytes) {
  const StepState& step = g.part->step();
  const StepEntry& e = step.entries()[g.part->entries()[g.index]];
  const std::optional<RegionBytes>& device = input == Input::kQ   ? e.q_device
                                             : input == Input::kK ? e.k_device
                                                                  : e.v_device;
  const size_t skip = static_cast<size_t>(g.a) * row_bytes;
  if (device) return RowsAt{device->data + skip, true};
  const wire::Span span = input == Input::kQ ? e.q : input == Input::kK ? e.k : e.v;
  return RowsAt{step.message().Contiguous(
                    wire::Span{span.offset + skip, static_cast<size_t>(g.b - g.a) * row_bytes}),
                false};
}

RowsAt OutputRows(const Segment& g, size_t row_bytes) {
  const StepState& step = g.part->step();
  const StepEntry& e = step.entries()[g.part->entries()[g.index]];
  return RowsAt{step.OutputRows(e) + static_cast<size_t>(g.a) * row_bytes,
                StepState::OutputOnDevice(e)};
}

// Device-to-device copies of one launch, adjacent ones merged: a runner's batch laid out in one
// CUDA region costs one copy however many entries it has.
class DeviceCopies {
 public:
  void Add(uint8_t* dst, const uint8_t* src, size_t bytes) {
    if (!runs_.empty()) {
      Run& last = runs_.back();
      if (last.dst + last.bytes == dst && last.src + last.bytes == src) {
        last.bytes += bytes;
        return;
      }
    }
    runs_.push_back(Run{dst, src, bytes});
  }
  KernelStatus Issue(cuda::Stream stream) const {
    for (const Run& r : runs_) {
      if (KernelStatus s = cuda::MemcpyDeviceToDevice(r.dst, r.src, r.bytes, stream); !s.ok()) {
        return s;
      }
    }
    return KernelStatus::Ok();
  }

 private:
  struct Run {
    uint8_t* dst;
    const uint8_t* src;
    size_t bytes;
  };
  std::vector<Run> runs_;
};

// The launch's q, k and v rows, and its output rows, where each already lies in one contiguous
// run in segment order, in memory the kernels reach: on the CPU backend host memory (a runner's
// batch laid out in a shared-memory region; the outputs of a single step), on CUDA device memory
// of the launch's device (a batch in a CUDA IPC region), 16-byte aligned so that the kernels
// keep their vectorised path. The kernels then read and write them in place, and the staging
// copy or the scatter is skipped. Null where the rows are scattered, misaligned, or where they
// would have to cross between host and device.
struct InPlace {
  const uint8_t* q = nullptr;
  const uint8_t* k = nullptr;
  const uint8_t* v = nullptr;
  uint8_t* out = nullptr;
};

InPlace FindInPlace(const ModelShape& m, const std::vector<Segment>& segments, bool cuda) {
  const size_t elem = static_cast<size_t>(DTypeSize(m.dtype));
  const size_t q_row = static_cast<size_t>(m.num_q_heads) * m.head_dim * elem;
  const size_t kv_row = static_cast<size_t>(m.num_kv_heads) * m.head_dim * elem;
  // Host rows on CUDA are staged: one transfer from pinned memory beats several from pageable.
  const size_t alignment = cuda ? 16 : elem;
  struct Run {
    const uint8_t* base = nullptr;
    bool ok = true;
    // Rows `at` continue the run after `rows_before` rows of `row` bytes.
    void Extend(RowsAt at, size_t rows_before, size_t row, bool cuda) {
      if (rows_before == 0) base = at.p;
      ok = ok && at.p != nullptr && at.device == cuda && at.p == base + rows_before * row;
    }
    const uint8_t* Get(size_t alignment) const {
      return ok && reinterpret_cast<uintptr_t>(base) % alignment == 0 ? base : nullptr;
    }
  };
  Run q, k, v, out;
  size_t rows_before = 0;
  for (const Segment& g : segments) {
    q.Extend(InputRows(g, Input::kQ, q_row), rows_before, q_row, cuda);
    k.Extend(InputRows(g, Input::kK, kv_row), rows_before, kv_row, cuda);
    v.Extend(InputRows(g, Input::kV, kv_row), rows_before, kv_row, cuda);
    out.Extend(OutputRows(g, q_row), rows_before, q_row, cuda);
    rows_before += static_cast<size_t>(g.b - g.a);
  }
  return InPlace{q.Get(alignment), k.Get(alignment), v.Get(alignment),
                 const_cast<uint8_t*>(out.Get(alignment))};
}

// What Stage filled: the longest query and key runs, the device-side input copies (rows in CUDA
// regions that are not read in place), and how much of the host staging must be uploaded (the
// metadata, and the q, k and v sections up to the last one that holds host rows).
struct Staged {
  int max_q = 0;
  int max_kv = 0;
  DeviceCopies device_copies;
  size_t upload_bytes = 0;
};

// Stages segment `g`'s q, k and v rows at launch row `row` of the staging sections: copied
// straight from the request's received bytes (except those the kernels read in place; rows in
// CUDA regions are copied device-side into the device twin `dev`).
void StageRows(const ModelShape& m, const Segment& g, int64_t row, const Layout& layout,
               const InPlace& in_place, uint8_t* in, uint8_t* dev, Staged* staged) {
  const size_t elem = static_cast<size_t>(DTypeSize(m.dtype));
  const size_t q_row = static_cast<size_t>(m.num_q_heads) * m.head_dim * elem;
  const size_t kv_row = static_cast<size_t>(m.num_kv_heads) * m.head_dim * elem;
  const StepEntry& e = g.part->step().entries()[g.part->entries()[g.index]];
  const wire::MessageBytes& message = g.part->step().message();
  for (const auto& [input, section, row_bytes, span, read_in_place] :
       {std::tuple{Input::kQ, layout.q, q_row, e.q, in_place.q != nullptr},
        std::tuple{Input::kK, layout.k, kv_row, e.k, in_place.k != nullptr},
        std::tuple{Input::kV, layout.v, kv_row, e.v, in_place.v != nullptr}}) {
    if (read_in_place) continue;
    const size_t at = section + static_cast<size_t>(row) * row_bytes;
    const size_t bytes = static_cast<size_t>(g.b - g.a) * row_bytes;
    const RowsAt rows_at = InputRows(g, input, row_bytes);
    if (rows_at.device) {
      staged->device_copies.Add(dev + at, rows_at.p, bytes);
      continue;
    }
    message.CopyTo(wire::Span{span.offset + static_cast<size_t>(g.a) * row_bytes, bytes}, in + at);
    staged->upload_bytes = std::max(staged->upload_bytes, at + bytes);
  }
}

// Fills the staging input: metadata for every segment, then its q, k and v rows copied straight
// from the request's received bytes (except those the kernels read in place; rows in CUDA regions
// are copied device-side into the device twin `dev`).
Staged Stage(const ModelShape& m, const std::vector<Segment>& segments, const Layout& layout,
             int stride, const InPlace& in_place, uint8_t* in, uint8_t* dev) {
  auto* slot = reinterpret_cast<int64_t*>(in + layout.slot);
  auto* cu_q = reinterpret_cast<int32_t*>(in + layout.cu_q);
  auto* cu_kv = reinterpret_cast<int32_t*>(in + layout.cu_kv);
  auto* table = reinterpret_cast<int32_t*>(in + layout.table);
  Staged staged;
  staged.upload_bytes = layout.q;
  cu_q[0] = cu_kv[0] = 0;
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
    staged.max_q = std::max<int>(staged.max_q, static_cast<int>(rows));
    staged.max_kv = std::max<int>(staged.max_kv, static_cast<int>(kv_len));
    std::memcpy(slot + cu_q[s], batch.slot_mapping().data() + bq[i] + g.a, rows * sizeof(int64_t));
    const int batch_stride = batch.block_table_stride();
    int32_t* row = table + s * static_cast<size_t>(stride);
    std::memcpy(row, batch.block_table().data() + static_cast<size_t>(i) * batch_stride,
                batch_stride * sizeof(int32_t));
    std::fill(row + batch_stride, row + stride, 0);  // block 0: the null block
    StageRows(m, g, cu_q[s], layout, in_place, in, dev, &staged);
  }
  return staged;
}

// Checks `args` once for the arena's backend, before any kernel's clock starts.
absl::Status PlanAttention(const PagedAttentionArgs& args, const LaunchArena& arena,
                           PagedAttentionPlan* plan) {
  return FromKernelStatus(arena.cuda() ? cuda::PlanAttentionPaged(args, plan)
                                       : cpu::PlanAttentionPaged(args, plan));
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

// Runs append and attention with `append` and `attention` (whose inputs and metadata Stage put
// in place), then delivers each segment's output rows (launch rows [cu_q[s], cu_q[s+1])) to its
// entry: in place already, device-side into CUDA regions, or through host_out into host memory.
// With CUDA: one upload of the host staging, the device-side input copies, the kernels between
// two events, the output copies, one synchronisation. Returns the kernels' time.
absl::StatusOr<absl::Duration> RunKernels(const ModelShape& m, const std::vector<Segment>& segments,
                                          const int32_t* cu_q, const KvAppendArgs& append,
                                          const PagedAttentionPlan& attention,
                                          const PagedLayerTensors& tensors, const InPlace& in_place,
                                          const Staged& staged, size_t out_bytes,
                                          LaunchArena* arena) {
  const size_t n = segments.size();
  const size_t out_row = static_cast<size_t>(m.num_q_heads) * m.head_dim * DTypeSize(m.dtype);
  absl::Duration kernel_time;
  bool scatter_on_host = false;  // some outputs go to host memory through host_out
  if (arena->cuda()) {
    // Output rows bound for CUDA regions go there device-side; the rest come back in one copy.
    DeviceCopies out_copies;
    for (size_t s = 0; in_place.out == nullptr && s < n; ++s) {
      const RowsAt to = OutputRows(segments[s], out_row);
      const uint8_t* from = arena->device_out() + static_cast<size_t>(cu_q[s]) * out_row;
      if (to.device) {
        out_copies.Add(const_cast<uint8_t*>(to.p), from,
                       static_cast<size_t>(segments[s].b - segments[s].a) * out_row);
      } else {
        scatter_on_host = true;
      }
    }
    // One host-to-device copy of the metadata and the host-sourced q, k and v rows; rows in CUDA
    // regions follow device-side (stream order puts them after the upload).
    cuda::Stream stream = arena->stream();
    KernelStatus s = KernelStatus::Ok();
    if (staged.upload_bytes > 0) {
      s = cuda::MemcpyHostToDevice(arena->device_in(), arena->host_in(), staged.upload_bytes,
                                   stream);
    }
    if (s.ok()) s = staged.device_copies.Issue(stream);
    if (s.ok()) s = cuda::EventRecord(arena->kernels_start(), stream);
    if (s.ok()) s = cuda::AppendKv(append, stream);
    if (s.ok()) s = cuda::RunAttentionPaged(attention, tensors, stream);
    if (s.ok()) s = cuda::EventRecord(arena->kernels_end(), stream);
    if (s.ok()) s = out_copies.Issue(stream);
    if (s.ok() && scatter_on_host) {
      s = cuda::MemcpyDeviceToHost(arena->host_out(), arena->device_out(), out_bytes, stream);
    }
    // The data plane's contract (docs/client.md): when the step's response is sent, its outputs
    // are in the caller's regions and its inputs are no longer read. Every launch of the step
    // ends here, before the step can report.
    if (s.ok()) s = cuda::StreamSynchronize(stream);
    float ms = 0;
    if (s.ok()) s = cuda::EventElapsedMs(arena->kernels_start(), arena->kernels_end(), &ms);
    if (!s.ok()) return FromKernelStatus(s);
    kernel_time = absl::Microseconds(static_cast<double>(ms) * 1000.0);
  } else {
    const absl::Time start = absl::Now();
    KernelStatus s = cpu::AppendKv(append);
    if (s.ok()) s = cpu::RunAttentionPaged(attention, tensors);
    if (!s.ok()) return FromKernelStatus(s);
    kernel_time = absl::Now() - start;
    scatter_on_host = in_place.out == nullptr;
  }
  if (!scatter_on_host) return kernel_time;
  // Scatter: segment s's output rows go to its entry's rows [a, b) in the step's output (host
  // memory; rows bound for CUDA regions were copied device-side).
  for (size_t s = 0; s < n; ++s) {
    const RowsAt to = OutputRows(segments[s], out_row);
    if (to.device) continue;
    std::memcpy(const_cast<uint8_t*>(to.p),
                arena->host_out() + static_cast<size_t>(cu_q[s]) * out_row,
                static_cast<size_t>(segments[s].b - segments[s].a) * out_row);
  }
  return kernel_time;
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
  Layout layout;
  layout.cu_q = Align64(total * sizeof(int64_t));
  layout.cu_kv = layout.cu_q + Align64((n + 1) * sizeof(int32_t));
  layout.table = layout.cu_kv + Align64((n + 1) * sizeof(int32_t));
  SetTensorSections(m, total, layout.table + Align64(n * stride * sizeof(int32_t)), &layout);
  if (auto s = arena->Reserve(layout.in_bytes, layout.out_bytes); !s.ok()) return s;
  const InPlace in_place = FindInPlace(m, segments, arena->cuda());
  uint8_t* host = arena->host_in();
  uint8_t* dev = arena->device_in();
  const Staged staged = Stage(m, segments, layout, stride, in_place, host, dev);
  const int max_q = staged.max_q, max_kv = staged.max_kv;
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

  PagedAttentionPlan plan;
  if (auto s = PlanAttention(attention, *arena, &plan); !s.ok()) return s;
  const auto* cu_q = reinterpret_cast<const int32_t*>(host + layout.cu_q);
  absl::StatusOr<absl::Duration> kernel_time =
      RunKernels(m, segments, cu_q, append, plan, LayerTensorsOf(attention), in_place, staged,
                 layout.out_bytes, arena);
  if (!kernel_time.ok()) return kernel_time.status();
  return LaunchSummary{static_cast<int>(n), total, *kernel_time};
}

absl::StatusOr<LaunchSummary> RunPassLaunch(const ModelShape& m, const kvcache::LayerBatch& pass,
                                            int layer, const void* metadata, const StepPart& part,
                                            PagedAttentionPlan* plan, LaunchArena* arena) {
  // The step's one entry holds the pass's T rows of every tensor; the metadata is the pass's.
  const int64_t total = pass.total_q();
  const std::vector<Segment> segments = {Segment{&part, 0, 0, total}};
  Layout layout;  // no metadata: the pass's is already where the kernels read it
  SetTensorSections(m, total, 0, &layout);
  if (auto s = arena->Reserve(layout.in_bytes, layout.out_bytes); !s.ok()) return s;
  const InPlace in_place = FindInPlace(m, segments, arena->cuda());
  uint8_t* dev = arena->device_in();
  Staged staged;
  StageRows(m, segments[0], 0, layout, in_place, arena->host_in(), dev, &staged);
  const KvAppendArgs append =
      pass.MakeAppendArgs(layer, metadata, in_place.k != nullptr ? in_place.k : dev + layout.k,
                          in_place.v != nullptr ? in_place.v : dev + layout.v);
  const PagedAttentionArgs attention = pass.MakeAttentionArgs(
      layer, metadata, m.num_q_heads, in_place.q != nullptr ? in_place.q : dev + layout.q,
      in_place.out != nullptr ? in_place.out : arena->device_out(), nullptr,
      AttentionOptions{/*causal=*/true, std::nullopt});
  if (plan->backend() == PagedAttentionPlan::Backend::kNone) {
    if (auto s = PlanAttention(attention, *arena, plan); !s.ok()) return s;
  }
  const int32_t cu_q[2] = {0, static_cast<int32_t>(total)};
  absl::StatusOr<absl::Duration> kernel_time =
      RunKernels(m, segments, cu_q, append, *plan, LayerTensorsOf(attention), in_place, staged,
                 layout.out_bytes, arena);
  if (!kernel_time.ok()) return kernel_time.status();
  return LaunchSummary{pass.num_seqs(), total, *kernel_time};
}

}  // namespace flashkv::server
