#include "sm90/host_setup.h"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "cuda_status.h"

namespace flashkv::cuda::sm90 {
namespace {

constexpr int64_t kMaxTmaStride = int64_t{1} << 40;

using EncodeTiledFn = PFN_cuTensorMapEncodeTiled_v12000;

std::atomic<int> forced_paged_box_rows{0};
std::atomic<int> active_variant{static_cast<int>(Sm90Variant::kAuto)};

// The driver's cuTensorMapEncodeTiled, resolved once per process through the runtime (the
// ABI-versioned query: the 12.0 signature is the one this file calls).
KernelStatus GetEncoder(EncodeTiledFn* fn) {
  static std::once_flag once;
  static EncodeTiledFn encoder = nullptr;
  static cudaError_t error = cudaSuccess;
  static cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSuccess;
  std::call_once(once, [] {
    void* ptr = nullptr;
    error = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000,
                                             cudaEnableDefault, &found);
    encoder = reinterpret_cast<EncodeTiledFn>(ptr);
  });
  FLASHKV_CUDA_RETURN_IF_ERROR(error);
  if (found != cudaDriverEntryPointSuccess || encoder == nullptr) {
    return Unavailable("the CUDA driver has no cuTensorMapEncodeTiled (TMA needs CUDA 12+)");
  }
  *fn = encoder;
  return KernelStatus::Ok();
}

// One tensor [outer..., rows, dim] with dim contiguous: extents and element strides, innermost
// first (dim's stride is 1 and not listed).
struct TensorShape {
  int rank = 0;  // 3 (varlen) or 4 (fixed)
  uint64_t dims[4] = {};
  int64_t strides[3] = {};  // elements: row, head, batch
};

TensorShape Shape(int head_dim, int64_t rows, int heads, int batch, int64_t row_stride,
                  int64_t head_stride, int64_t batch_stride, bool varlen) {
  TensorShape s;
  s.rank = varlen ? 3 : 4;
  s.dims[0] = static_cast<uint64_t>(head_dim);
  s.dims[1] = static_cast<uint64_t>(std::max<int64_t>(rows, 1));
  s.dims[2] = static_cast<uint64_t>(std::max(heads, 1));
  s.dims[3] = static_cast<uint64_t>(std::max(batch, 1));
  s.strides[0] = row_stride;
  s.strides[1] = head_stride;
  s.strides[2] = batch_stride;
  return s;
}

bool StridesOk(const TensorShape& s, int element_bytes) {
  for (int i = 1; i < s.rank; ++i) {
    if (s.dims[i] <= 1) continue;  // a single index: the stride is never applied
    const int64_t bytes = s.strides[i - 1] * element_bytes;
    if (bytes <= 0 || bytes % 16 != 0 || bytes >= kMaxTmaStride) return false;
  }
  return true;
}

KernelStatus Encode(EncodeTiledFn encode, CUtensorMap* map, const TensorShape& s, DType dtype,
                    const void* base, int box_rows, const char* what) {
  const int element_bytes = DTypeSize(dtype);
  cuuint64_t dims[4];
  cuuint64_t strides[3];
  cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  cuuint32_t element_strides[4] = {1, 1, 1, 1};
  for (int i = 0; i < s.rank; ++i) dims[i] = s.dims[i];
  for (int i = 1; i < s.rank; ++i) {
    // Unused strides (extent 1) still have to be valid: the row stride is.
    const int64_t bytes = s.strides[i - 1] * element_bytes;
    strides[i - 1] = static_cast<cuuint64_t>(
        s.dims[i] > 1 ? bytes : std::max<int64_t>(16, s.strides[0] * element_bytes));
  }
  const CUtensorMapDataType type = dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                             : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult result =
      encode(map, type, static_cast<cuuint32_t>(s.rank), const_cast<void*>(base), dims, strides,
             box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) {
    return Internal(std::string("cuTensorMapEncodeTiled failed for ") + what + " (CUresult " +
                    std::to_string(static_cast<int>(result)) + ")");
  }
  return KernelStatus::Ok();
}

struct LaunchShapes {
  TensorShape q, k, v, out;
};

LaunchShapes Shapes(const AttentionParams& p, const LaunchInfo& info) {
  const bool varlen = p.cu_seqlens_q != nullptr;
  const bool paged = p.block_table != nullptr;
  const int64_t q_rows = varlen ? p.total_q : p.seqlen_q;
  const int64_t kv_rows =
      varlen ? (info.host_cu_seqlens_kv != nullptr ? info.host_cu_seqlens_kv[p.num_seqs] : 0)
             : p.seqlen_kv;
  LaunchShapes s;
  s.q = Shape(p.head_dim, q_rows, p.num_heads_q, p.num_seqs, p.q_row_stride, p.q_head_stride,
              p.q_batch_stride, varlen);
  s.k = Shape(p.head_dim, kv_rows, p.num_heads_kv, p.num_seqs, p.k_row_stride, p.k_head_stride,
              p.k_batch_stride, varlen);
  s.v = Shape(p.head_dim, kv_rows, p.num_heads_kv, p.num_seqs, p.v_row_stride, p.v_head_stride,
              p.v_batch_stride, varlen);
  s.out = Shape(p.head_dim, q_rows, p.num_heads_q, p.num_seqs, p.out_row_stride, p.out_head_stride,
                p.out_batch_stride, varlen);
  if (paged) {
    // The pools as [block, K/V head, slot, dim]: a box of slots is addressed by (slot, head,
    // block), the block read from the table on the device.
    s.k = Shape(p.head_dim, p.page_size, p.num_heads_kv, info.num_blocks, p.k_row_stride,
                p.k_head_stride, p.k_batch_stride, /*varlen=*/false);
    s.v = Shape(p.head_dim, p.page_size, p.num_heads_kv, info.num_blocks, p.v_row_stride,
                p.v_head_stride, p.v_batch_stride, /*varlen=*/false);
  }
  return s;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int PagedBoxRows(int page_size, int block_n) {
  const int forced = forced_paged_box_rows.load(std::memory_order_relaxed);
  if (forced > 0 && forced % kPagedBoxRows == 0 && block_n % forced == 0 &&
      page_size % forced == 0) {
    return forced;
  }
  return page_size % block_n == 0 ? block_n : kPagedBoxRows;
}

Sm90Variant ActiveVariant() {
  return static_cast<Sm90Variant>(active_variant.load(std::memory_order_relaxed));
}

namespace {

// kAuto and the variants measured against it: kAuto's schedule and kernels for every launch but
// the ones a variant changes, so that an A/B against kAuto isolates that change.
bool TakesAutoKernels(Sm90Variant variant) {
  switch (variant) {
    case Sm90Variant::kAuto:
    case Sm90Variant::kThreeConsumers:
    case Sm90Variant::kKeys160:
    case Sm90Variant::kKeys176:
    case Sm90Variant::kStreamK:
    case Sm90Variant::kPagedKeys80:
    case Sm90Variant::kPagedKStages3:
    case Sm90Variant::kPagedKeys80Lanes:
    case Sm90Variant::kPagedKeys64:
      return true;
    case Sm90Variant::kBaseline:
    case Sm90Variant::kDynamicSchedule:
    case Sm90Variant::kLazyRescale:
      return false;
  }
  return false;
}

}  // namespace

bool UseDynamicSchedule(bool causal, int64_t num_tiles, int multiprocessors) {
  if (!causal) return false;
  const Sm90Variant variant = ActiveVariant();
  if (TakesAutoKernels(variant)) return num_tiles > 2 * int64_t{multiprocessors};
  // kLazyRescale keeps the baseline's static schedule: its A/B isolates the rescale.
  return variant == Sm90Variant::kDynamicSchedule;
}

bool UseLazyRescale(int head_dim) {
  const Sm90Variant variant = ActiveVariant();
  return variant == Sm90Variant::kLazyRescale ||
         (TakesAutoKernels(variant) && head_dim == kLazyRescaleHeadDim);
}

bool UseStreamK(TileKind kind, int seqlen_kv) {
  switch (ActiveVariant()) {
    case Sm90Variant::kStreamK:
      return true;
    case Sm90Variant::kAuto:
    case Sm90Variant::kPagedKeys80:
    case Sm90Variant::kPagedKStages3:
    case Sm90Variant::kPagedKeys80Lanes:
      return kind == TileKind::kKeys160 && seqlen_kv >= kStreamKMinSeqlenKv;
    default:
      return false;
  }
}

bool PlanStreamK(Schedule* schedule, int grid, int key_tiles) {
  const int tiles = schedule->num_tiles;
  schedule->dp_tiles = tiles;
  schedule->sk_key_tiles = 0;
  if (grid <= 0 || tiles < grid || tiles % grid == 0 || key_tiles < 2) return false;
  // The last full round and the remainder: every CTA's share is then at least one tile's keys
  // (tile_scheduler.cuh relies on it: at most one CTA boundary per tile).
  schedule->dp_tiles = (tiles / grid - 1) * grid;
  schedule->sk_key_tiles = key_tiles;
  return true;
}

TileKind ChooseTileKind(int head_dim, bool paged, bool varlen, bool causal, int max_seqlen_q,
                        int max_seqlen_kv, int page_size) {
  Sm90Variant variant = ActiveVariant();
  // No shape depends on the page size since the split tiles are issued by chunk (it did when
  // kAuto took 64-key tiles at 64-key pages); callers still say it, for the next shape that may.
  (void)page_size;
  // Before kAuto's split tiles: under its variant every paged head-dim-256 launch (pages are
  // multiples of 64 keys, so each 64-key tile is one box in one page) takes the third K stage.
  if (variant == Sm90Variant::kPagedKStages3 && HasPagedKStages3Shape(head_dim, paged)) {
    return TileKind::kPagedKStages3;
  }
  // Paged head dim 256 under kAuto (and the variants that keep its kernels elsewhere): the split
  // 80-key tiles issued by chunk, at every page size (host_setup.h has the measurement, below
  // ChooseTileKind); kPagedKeys80 and kPagedKeys64 force the other two paged shapes.
  if (HasPagedKeys80Shape(head_dim, paged) && TakesAutoKernels(variant)) {
    if (variant == Sm90Variant::kPagedKeys80) return TileKind::kPagedKeys80;
    if (variant == Sm90Variant::kPagedKeys64) return TileKind::kStandard;
    return TileKind::kPagedKeys80Lanes;
  }
  // kStreamK changes the schedule of kAuto's kernels, not their shapes; the paged variants the
  // shape of paged head dim 256 alone.
  if (variant == Sm90Variant::kStreamK || variant == Sm90Variant::kPagedKeys80 ||
      variant == Sm90Variant::kPagedKStages3 || variant == Sm90Variant::kPagedKeys80Lanes ||
      variant == Sm90Variant::kPagedKeys64) {
    variant = Sm90Variant::kAuto;
  }
  if (HasThreeConsumerShape(head_dim, paged)) {
    const bool three =
        variant == Sm90Variant::kThreeConsumers ||
        (variant == Sm90Variant::kAuto &&
         max_seqlen_q >= (causal ? kThreeConsumerCausalMinSeqlen : kThreeConsumerMinSeqlen));
    return three ? TileKind::kThreeConsumers : TileKind::kStandard;
  }
  if (HasWideKeyShape(head_dim, paged) && !causal) {
    if (variant == Sm90Variant::kKeys160) return TileKind::kKeys160;
    if (variant == Sm90Variant::kKeys176) return TileKind::kKeys176;
    if (variant == Sm90Variant::kAuto && !varlen && max_seqlen_kv >= kWideKeysMinSeqlenKv) {
      return TileKind::kKeys160;
    }
  }
  return TileKind::kStandard;
}

namespace testing {
void ForcePagedBoxRows(int rows) { forced_paged_box_rows.store(rows, std::memory_order_relaxed); }
void SetVariant(Sm90Variant variant) {
  active_variant.store(static_cast<int>(variant), std::memory_order_relaxed);
}
}  // namespace testing

int64_t CountTiles(const AttentionParams& p, const LaunchInfo& info, int block_m) {
  if (p.cu_seqlens_q == nullptr) {
    return CeilDiv(p.seqlen_q, block_m) * p.num_seqs * p.num_heads_q;
  }
  if (info.host_cu_seqlens_q == nullptr) return 0;
  int64_t units = 0;
  for (int b = 0; b < p.num_seqs; ++b) {
    units += CeilDiv(info.host_cu_seqlens_q[b + 1] - info.host_cu_seqlens_q[b], block_m);
  }
  return units * p.num_heads_q;
}

bool TmaCanDescribe(const AttentionParams& p, const LaunchInfo& info, int element_bytes) {
  const LaunchShapes s = Shapes(p, info);
  return StridesOk(s.q, element_bytes) && StridesOk(s.k, element_bytes) &&
         StridesOk(s.v, element_bytes) && StridesOk(s.out, element_bytes);
}

KernelStatus BuildSchedule(const AttentionParams& p, const LaunchInfo& info, int head_dim,
                           int element_bytes, const DeviceProps& props, Schedule* schedule,
                           TileKind kind) {
  const TileShape shape = ChooseTileShape(head_dim, p.block_table != nullptr, kind);
  if (shape.block_m == 0) return InvalidArgument("sm90 schedule: no tile shape for this head dim");
  const int64_t tiles = CountTiles(p, info, shape.block_m);
  if (tiles > kMaxTiles) return InvalidArgument("sm90 schedule: too many tiles");
  *schedule = Schedule{};
  schedule->num_tiles = static_cast<int>(tiles);
  schedule->dp_tiles = schedule->num_tiles;
  if (p.cu_seqlens_q == nullptr) {
    schedule->m_blocks = static_cast<int>(CeilDiv(p.seqlen_q, shape.block_m));
    // Heads in flight share L2: a section's K/V (one copy per K/V head: GQA groups share it)
    // is kept to half the L2, the rest serving Q, O and the other sections' tails.
    const int64_t kv_head_bytes =
        std::max<int64_t>(1, int64_t{2} * p.seqlen_kv * head_dim * element_bytes);
    const int64_t kv_heads = std::max<int64_t>(1, (props.l2_bytes / 2) / kv_head_bytes);
    const int64_t heads = static_cast<int64_t>(p.num_seqs) * p.num_heads_q;
    schedule->section_heads = static_cast<int>(std::min(heads, kv_heads * p.group));
    return KernelStatus::Ok();
  }
  if (info.host_cu_seqlens_q == nullptr || info.host_cu_seqlens_kv == nullptr) {
    return InvalidArgument("sm90 varlen schedule needs host copies of cu_seqlens_q/kv");
  }
  std::vector<int32_t> seqs;
  for (int b = 0; b < p.num_seqs; ++b) {
    if (info.host_cu_seqlens_q[b + 1] > info.host_cu_seqlens_q[b]) seqs.push_back(b);
  }
  if (seqs.size() > static_cast<size_t>(kMaxVarlenSequences)) {
    return InvalidArgument("sm90 schedule: more than " + std::to_string(kMaxVarlenSequences) +
                           " sequences with queries");
  }
  // Every tile of a sequence sees at most its whole context, and the last tiles (causal) or all
  // of them (non-causal) see all of it: longest context first approximates longest tile first.
  auto kv_len = [&](int32_t b) {
    return info.host_cu_seqlens_kv[b + 1] - info.host_cu_seqlens_kv[b];
  };
  std::stable_sort(seqs.begin(), seqs.end(),
                   [&](int32_t a, int32_t b) { return kv_len(a) > kv_len(b); });
  schedule->count = static_cast<int>(seqs.size());
  int32_t units = 0;
  for (size_t k = 0; k < seqs.size(); ++k) {
    const int32_t b = seqs[k];
    schedule->order[k] = b;
    schedule->unit_start[k] = units;
    units += static_cast<int32_t>(
        CeilDiv(info.host_cu_seqlens_q[b + 1] - info.host_cu_seqlens_q[b], shape.block_m));
  }
  schedule->unit_start[seqs.size()] = units;
  return KernelStatus::Ok();
}

KernelStatus EncodeTensorMaps(const AttentionParams& p, const LaunchInfo& info, DType dtype,
                              Sm90Params* params, TileKind kind) {
  EncodeTiledFn encode = nullptr;
  FLASHKV_RETURN_IF_ERROR(GetEncoder(&encode));
  const bool paged = p.block_table != nullptr;
  const TileShape shape = ChooseTileShape(p.head_dim, paged, kind);
  if (shape.block_m == 0) {
    return InvalidArgument("sm90 tensor maps: no tile shape for this head dim");
  }
  const LaunchShapes s = Shapes(p, info);
  FLASHKV_RETURN_IF_ERROR(Encode(encode, &params->q_map, s.q, dtype, p.q, shape.block_m, "q"));
  // K and V may be null when no sequence has keys: no tile then loads them, but the map still
  // needs a valid address.
  const void* k = p.k != nullptr ? p.k : p.q;
  const void* v = p.v != nullptr ? p.v : p.q;
  if (IsPagedSplitKind(kind)) {
    // The whole-tile box where pages can hold a tile (the producer takes it for tiles inside one
    // page), and the part boxes of PagedPartRows(i) keys for tiles split at a page boundary.
    params->kv_box_rows = p.page_size >= shape.block_n ? shape.block_n : kPagedBoxRows;
    for (int i = 0; i < kPagedParts; ++i) {
      FLASHKV_RETURN_IF_ERROR(
          Encode(encode, &params->k_part_maps[i], s.k, dtype, k, PagedPartRows(i), "k part"));
      FLASHKV_RETURN_IF_ERROR(
          Encode(encode, &params->v_part_maps[i], s.v, dtype, v, PagedPartRows(i), "v part"));
    }
  } else {
    params->kv_box_rows = paged ? PagedBoxRows(p.page_size, shape.block_n) : shape.block_n;
  }
  FLASHKV_RETURN_IF_ERROR(Encode(encode, &params->k_map, s.k, dtype, k, params->kv_box_rows, "k"));
  FLASHKV_RETURN_IF_ERROR(Encode(encode, &params->v_map, s.v, dtype, v, params->kv_box_rows, "v"));
  return Encode(encode, &params->o_map, s.out, dtype, p.out, 64, "out");
}

}  // namespace flashkv::cuda::sm90
