#include "kernel_path.h"

#include <cstdint>

#include "sm90/host_setup.h"
#include "sm90/tile_shape.h"

namespace flashkv::cuda {
namespace {

constexpr int Key(DType dtype, int head_dim) { return static_cast<int>(dtype) * 1024 + head_dim; }

// Launches whose longest key range is at least this many keys are worth splitting across CTAs
// when the sm90 tiles would leave most SMs idle (sm80's split-KV path does that).
constexpr int kSplitWorthyKeys = 2048;

}  // namespace

const char* KernelPathName(KernelPath path) {
  switch (path) {
    case KernelPath::kSimt:
      return "simt";
    case KernelPath::kSm80:
      return "sm80";
    case KernelPath::kSm90:
      return "sm90";
  }
  return "unknown";
}

bool IsSm90Compiled(DType dtype, int head_dim, bool paged) {
  if (paged) {
    switch (Key(dtype, head_dim)) {
#define FLASHKV_CUDA_SM90_PAGED_INSTANCE(DTYPE_ENUM, HEAD_DIM) \
  case Key(DType::DTYPE_ENUM, HEAD_DIM):
#include "flashkv_cuda_sm90_paged_instances.inc"
#undef FLASHKV_CUDA_SM90_PAGED_INSTANCE
      return true;
      default:
        return false;
    }
  }
  switch (Key(dtype, head_dim)) {
#define FLASHKV_CUDA_SM90_INSTANCE(DTYPE_ENUM, HEAD_DIM) case Key(DType::DTYPE_ENUM, HEAD_DIM):
#include "flashkv_cuda_sm90_instances.inc"
#undef FLASHKV_CUDA_SM90_INSTANCE
    return true;
    default:
      return false;
  }
}

const char* Sm90Rejection(DType dtype, int head_dim, bool paged, bool sm90_compiled,
                          const AttentionParams& p, const LaunchInfo& info,
                          const DeviceProps& props) {
  if (!sm90_compiled) {
    return paged ? "no sm90 paged kernel compiled for this dtype and head dim "
                   "(FLASHKV_ENABLE_SM90_PAGED)"
                 : "no sm90 kernel compiled for this dtype and head dim";
  }
  if (props.major != 9 || props.minor != 0) return "device is not sm_90 (sm_90a code)";
  // A TMA box of K/V keys must lie inside one page; sm80 gathers rows of other page sizes.
  if (paged && (p.page_size < sm90::kPagedBoxRows || p.page_size % sm90::kPagedBoxRows != 0)) {
    return "page size is not a multiple of the sm90 paged box (64 keys)";
  }
  if (!info.aligned16 || info.force_simt) return "tensors take the SIMT kernel";
  if (p.num_seqs == 0 || p.max_seqlen_q == 0) return "no queries";
  const bool varlen = p.cu_seqlens_q != nullptr;
  if (varlen && (info.host_cu_seqlens_q == nullptr || info.host_cu_seqlens_kv == nullptr)) {
    return "varlen launch without host copies of cu_seqlens";
  }
  if (varlen && p.num_seqs > sm90::kMaxVarlenSequences) {
    return "more sequences than the sm90 schedule table holds";
  }
  const int block_m = sm90::ChooseTileShape(head_dim, paged).block_m;
  const int64_t tiles = sm90::CountTiles(p, info, block_m);
  if (tiles > sm90::kMaxTiles) return "more tiles than the sm90 schedule numbers";
  // Short queries (decodes, short chunks) fill few of a tile's 128 rows; sm80 packs the GQA
  // group into its rows and has a 16-row decode path.
  const int64_t queries = varlen ? info.host_cu_seqlens_q[p.num_seqs] : p.total_q;
  if (2 * queries * p.num_heads_q < tiles * block_m) {
    return "less than half of the sm90 tile rows would hold queries";
  }
  // Few tiles over long keys: sm80 splits the keys across CTAs instead of idling SMs.
  if (2 * tiles < props.multiprocessors && p.max_seqlen_kv >= kSplitWorthyKeys) {
    return "too few tiles for the SMs; sm80 splits the keys";
  }
  if (!sm90::TmaCanDescribe(p, info, DTypeSize(dtype))) {
    return "strides the TMA cannot describe";
  }
  return nullptr;
}

KernelPath ChooseKernelPath(DType dtype, int head_dim, bool paged, const AttentionParams& p,
                            const LaunchInfo& info, const DeviceProps& props) {
  if (dtype == DType::kFloat32 || !info.aligned16 || info.force_simt) return KernelPath::kSimt;
  if (Sm90Rejection(dtype, head_dim, paged, IsSm90Compiled(dtype, head_dim, paged), p, info,
                    props) == nullptr) {
    return KernelPath::kSm90;
  }
  return KernelPath::kSm80;
}

}  // namespace flashkv::cuda
