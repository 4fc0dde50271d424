// The CUDA attention API (flashkv/cuda_backend.h): validation, parameter building, and the one
// dispatch site over (dtype, head dim) for the compiled instantiations.

#include "flashkv/attention.h"

#include <string>

#include "device_state.h"
#include "flashkv/cuda_backend.h"
#include "kernel_path.h"
#include "launch.h"
#include "params_builder.h"
#include "reference.h"
#include "sm90/entry_points.h"

namespace flashkv::cuda {
namespace {

constexpr int Key(DType dtype, int head_dim) { return static_cast<int>(dtype) * 1024 + head_dim; }

// The only place that maps runtime (dtype, head dim, layout) to a compiled launcher. The case list
// is generated from FLASHKV_CUDA_DTYPES x FLASHKV_CUDA_HEAD_DIMS (flashkv_cuda_instances.inc).
KernelStatus Dispatch(DType dtype, int head_dim, bool paged, const AttentionParams& params,
                      const LaunchInfo& info, Stream stream) {
  switch (Key(dtype, head_dim)) {
#define FLASHKV_CUDA_INSTANCE(DTYPE_ENUM, HEAD_DIM)                                         \
  case Key(DType::DTYPE_ENUM, HEAD_DIM):                                                    \
    return paged ? LaunchAttention<DType::DTYPE_ENUM, HEAD_DIM, true>(params, info, stream) \
                 : LaunchAttention<DType::DTYPE_ENUM, HEAD_DIM, false>(params, info, stream);
#include "flashkv_cuda_instances.inc"
#undef FLASHKV_CUDA_INSTANCE
    default:
      return Unimplemented(std::string("CUDA kernels for dtype ") + DTypeName(dtype) +
                           " and head_dim " + std::to_string(head_dim) +
                           " are not compiled in (FLASHKV_CUDA_DTYPES / FLASHKV_CUDA_HEAD_DIMS)");
  }
}

// The sm90 launchers compiled in (flashkv_cuda_sm90_instances.inc and, for paged K/V,
// flashkv_cuda_sm90_paged_instances.inc; empty without FLASHKV_ENABLE_SM90 / 90a /
// FLASHKV_ENABLE_SM90_PAGED). ChooseKernelPath only picks sm90 for these.
KernelStatus DispatchSm90(DType dtype, int head_dim, bool paged, const AttentionParams& params,
                          const LaunchInfo& info, Stream stream) {
  if (paged) {
    switch (Key(dtype, head_dim)) {
#define FLASHKV_CUDA_SM90_PAGED_INSTANCE(DTYPE_ENUM, HEAD_DIM) \
  case Key(DType::DTYPE_ENUM, HEAD_DIM):                       \
    return LaunchAttentionSm90<DType::DTYPE_ENUM, HEAD_DIM, true>(params, info, stream);
#include "flashkv_cuda_sm90_paged_instances.inc"
#undef FLASHKV_CUDA_SM90_PAGED_INSTANCE
      default:
        break;
    }
  } else {
    switch (Key(dtype, head_dim)) {
#define FLASHKV_CUDA_SM90_INSTANCE(DTYPE_ENUM, HEAD_DIM) \
  case Key(DType::DTYPE_ENUM, HEAD_DIM):                 \
    return LaunchAttentionSm90<DType::DTYPE_ENUM, HEAD_DIM, false>(params, info, stream);
#include "flashkv_cuda_sm90_instances.inc"
#undef FLASHKV_CUDA_SM90_INSTANCE
      default:
        break;
    }
  }
  return Internal(std::string("no sm90 ") + (paged ? "paged " : "") + "kernel for dtype " +
                  DTypeName(dtype) + " and head_dim " + std::to_string(head_dim));
}

// Everything a launch decides on the host before choosing a kernel.
struct Prepared {
  DType dtype;
  int head_dim;
  bool paged;
  AttentionParams params;
  LaunchInfo info;
};

template <class Args>
Prepared Prepare(const Args& args, bool paged, LaunchInfo info) {
  Prepared prep{args.dtype, args.head_dim, paged, BuildParams(args), info};
  prep.info.aligned16 = IsAligned16(prep.params, DTypeSize(args.dtype));
  return prep;
}

KernelStatus PathOfPrepared(const Prepared& prep, KernelPath* path) {
  DeviceProps props;
  FLASHKV_RETURN_IF_ERROR(CurrentDevice(&props));
  *path = ChooseKernelPath(prep.dtype, prep.head_dim, prep.paged, prep.params, prep.info, props);
  return KernelStatus::Ok();
}

KernelStatus Run(const Prepared& prep, Stream stream) {
  KernelPath path = KernelPath::kSm80;
  FLASHKV_RETURN_IF_ERROR(PathOfPrepared(prep, &path));
  if (path == KernelPath::kSm90) {
    return DispatchSm90(prep.dtype, prep.head_dim, prep.paged, prep.params, prep.info, stream);
  }
  return Dispatch(prep.dtype, prep.head_dim, prep.paged, prep.params, prep.info, stream);
}

LaunchInfo VarlenInfo(const int32_t* host_cu_seqlens_q, const int32_t* host_cu_seqlens_kv) {
  LaunchInfo info;
  info.host_cu_seqlens_q = host_cu_seqlens_q;
  info.host_cu_seqlens_kv = host_cu_seqlens_kv;
  return info;
}

LaunchInfo PagedInfo(const PagedAttentionArgs& args) {
  LaunchInfo info = VarlenInfo(args.host_cu_seqlens_q, args.host_cu_seqlens_kv);
  info.num_blocks = args.num_blocks;
  return info;
}

}  // namespace

bool IsBuilt() { return true; }

bool IsCompiled(DType dtype, int head_dim) {
  switch (Key(dtype, head_dim)) {
#define FLASHKV_CUDA_INSTANCE(DTYPE_ENUM, HEAD_DIM) case Key(DType::DTYPE_ENUM, HEAD_DIM):
#include "flashkv_cuda_instances.inc"
#undef FLASHKV_CUDA_INSTANCE
    return true;
    default:
      return false;
  }
}

KernelStatus Attention(const FixedAttentionArgs& args, Stream stream) {
  FLASHKV_RETURN_IF_ERROR(ValidateFixed(args));
  return Run(Prepare(args, false, LaunchInfo{}), stream);
}

KernelStatus AttentionVarlen(const VarlenAttentionArgs& args, Stream stream) {
  FLASHKV_RETURN_IF_ERROR(ValidateVarlen(args, /*primary_is_host=*/false));
  return Run(Prepare(args, false, VarlenInfo(args.host_cu_seqlens_q, args.host_cu_seqlens_kv)),
             stream);
}

KernelStatus PlanAttentionPaged(const PagedAttentionArgs& args, PagedAttentionPlan* plan) {
  return PagedAttentionPlan::Make(args, PagedAttentionPlan::Backend::kCuda, plan);
}

KernelStatus RunAttentionPaged(const PagedAttentionPlan& plan, const PagedLayerTensors& tensors,
                               Stream stream) {
  PagedAttentionArgs args;
  FLASHKV_RETURN_IF_ERROR(plan.ForLayer(tensors, PagedAttentionPlan::Backend::kCuda, &args));
  return Run(Prepare(args, true, PagedInfo(args)), stream);
}

KernelStatus AttentionPaged(const PagedAttentionArgs& args, Stream stream) {
  PagedAttentionPlan plan;
  FLASHKV_RETURN_IF_ERROR(PlanAttentionPaged(args, &plan));
  return RunAttentionPaged(plan, LayerTensorsOf(args), stream);
}

namespace testing {

KernelStatus AttentionSimtReference(const FixedAttentionArgs& args, Stream stream) {
  FLASHKV_RETURN_IF_ERROR(ValidateFixed(args));
  LaunchInfo info;
  info.force_simt = true;
  return Dispatch(args.dtype, args.head_dim, false, BuildParams(args), info, stream);
}

KernelStatus AttentionPagedSimtReference(const PagedAttentionArgs& args, Stream stream) {
  FLASHKV_RETURN_IF_ERROR(ValidatePaged(args, /*primary_is_host=*/false));
  LaunchInfo info;
  info.host_cu_seqlens_q = args.host_cu_seqlens_q;
  info.force_simt = true;
  return Dispatch(args.dtype, args.head_dim, true, BuildParams(args), info, stream);
}

KernelStatus PathOf(const FixedAttentionArgs& args, KernelPath* path) {
  FLASHKV_RETURN_IF_ERROR(ValidateFixed(args));
  return PathOfPrepared(Prepare(args, false, LaunchInfo{}), path);
}

KernelStatus PathOf(const VarlenAttentionArgs& args, KernelPath* path) {
  FLASHKV_RETURN_IF_ERROR(ValidateVarlen(args, /*primary_is_host=*/false));
  return PathOfPrepared(
      Prepare(args, false, VarlenInfo(args.host_cu_seqlens_q, args.host_cu_seqlens_kv)), path);
}

KernelStatus PathOf(const PagedAttentionArgs& args, KernelPath* path) {
  FLASHKV_RETURN_IF_ERROR(ValidatePaged(args, /*primary_is_host=*/false));
  return PathOfPrepared(Prepare(args, true, PagedInfo(args)), path);
}

}  // namespace testing
}  // namespace flashkv::cuda
