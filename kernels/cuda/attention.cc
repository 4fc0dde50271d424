// The CUDA attention API (flashkv/cuda_backend.h): validation, parameter building, and the one
// dispatch site over (dtype, head dim) for the compiled instantiations.

#include <string>

#include "device_state.h"
#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"
#include "launch.h"
#include "params_builder.h"
#include "reference.h"

namespace flashkv::cuda {
namespace {

constexpr int Key(DType dtype, int head_dim) { return static_cast<int>(dtype) * 1024 + head_dim; }

// The only place that maps runtime (dtype, head dim, layout) to a compiled launcher. The case list
// is generated from FLASHKV_CUDA_DTYPES x FLASHKV_CUDA_HEAD_DIMS (flashkv_cuda_instances.inc).
KernelStatus Dispatch(DType dtype, int head_dim, bool paged, const AttentionParams& params,
                      const LaunchInfo& info, Stream stream) {
  switch (Key(dtype, head_dim)) {
#define FLASHKV_CUDA_INSTANCE(DTYPE_ENUM, HEAD_DIM)                                      \
  case Key(DType::DTYPE_ENUM, HEAD_DIM):                                                 \
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

KernelStatus Run(DType dtype, int head_dim, bool paged, const AttentionParams& params,
                 LaunchInfo info, Stream stream) {
  info.aligned16 = IsAligned16(params, DTypeSize(dtype));
  return Dispatch(dtype, head_dim, paged, params, info, stream);
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
  return Run(args.dtype, args.head_dim, false, BuildParams(args), LaunchInfo{}, stream);
}

KernelStatus AttentionVarlen(const VarlenAttentionArgs& args, Stream stream) {
  FLASHKV_RETURN_IF_ERROR(ValidateVarlen(args, /*primary_is_host=*/false));
  LaunchInfo info;
  info.host_cu_seqlens_q = args.host_cu_seqlens_q;
  return Run(args.dtype, args.head_dim, false, BuildParams(args), info, stream);
}

KernelStatus AttentionPaged(const PagedAttentionArgs& args, Stream stream) {
  FLASHKV_RETURN_IF_ERROR(ValidatePaged(args, /*primary_is_host=*/false));
  LaunchInfo info;
  info.host_cu_seqlens_q = args.host_cu_seqlens_q;
  return Run(args.dtype, args.head_dim, true, BuildParams(args), info, stream);
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

}  // namespace testing
}  // namespace flashkv::cuda
