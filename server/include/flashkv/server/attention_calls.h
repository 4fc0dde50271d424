#pragma once

// The stateless Attention and AttentionVarlen RPCs without the gRPC plumbing: a request is
// decoded and checked (Prepare*), then computed on a backend into a response message (Run).
// Split this way so that the checks run on the gRPC thread (a bad request costs microseconds)
// and the compute on the service's executor.

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "flashkv/attention.h"
#include "flashkv/server/attention_backend.h"
#include "flashkv/server/config.h"
#include "flashkv/server/region_tensors.h"
#include "flashkv/wire/message_bytes.h"

namespace flashkv::server {

// A checked request: its message (which holds the tensor bytes) and the kernel's view of it.
// Pointers in the args are filled at Run.
struct AttentionCall {
  wire::MessageBytes message;
  bool varlen = false;
  FixedAttentionArgs fixed;
  VarlenAttentionArgs varlen_args;
  wire::Span q, k, v;
  std::vector<int32_t> cu_seqlens_q;
  std::vector<int32_t> cu_seqlens_kv;
  bool return_lse = false;
  std::vector<int64_t> out_shape;
  std::vector<int64_t> lse_shape;
  // Shared-memory data plane: where out / lse go instead of the response (see region_tensors.h;
  // host or device memory), and q / k / v in CUDA regions (the spans above then carry only sizes).
  std::optional<RegionBytes> out_region;
  std::optional<RegionBytes> lse_region;
  wire::RegionSliceView out_slice;
  wire::RegionSliceView lse_slice;
  std::optional<RegionBytes> q_device, k_device, v_device;
  // The CUDA device of the call's CUDA regions (one device per call), kCpuCompute when none; the
  // first such field and its region, for ChooseBackend's error.
  int device = kCpuCompute;
  std::string device_field;
  uint64_t device_region_id = 0;
};

// INVALID_ARGUMENT naming the field for anything malformed or inconsistent, or past `limits`
// (rows, sequences, work: checked before any buffer is allocated). Tensors and output slices in
// shared-memory regions are resolved through `regions` (none without a registry).
absl::StatusOr<AttentionCall> PrepareAttention(wire::MessageBytes message,
                                               const RegionAccess& regions = {},
                                               const RequestLimits& limits = {});
absl::StatusOr<AttentionCall> PrepareAttentionVarlen(wire::MessageBytes message,
                                                     const RegionAccess& regions = {},
                                                     const RequestLimits& limits = {});

// The backend that runs `call`: the next of `backends` in turn (`turn`, a round-robin counter),
// or for a call with CUDA regions the backend on their device; FAILED_PRECONDITION naming the
// field, the region's device and the device that computes when none is (CUDA regions on the CPU
// backend included).
absl::StatusOr<AttentionBackend*> ChooseBackend(const AttentionCall& call,
                                                absl::Span<AttentionBackend* const> backends,
                                                size_t turn);

// UNIMPLEMENTED when (dtype, head dim) is not compiled into the backend; kernel errors as they
// come. On success `response` holds the serialized AttentionResponse, whose tensors reference
// buffers it keeps alive.
absl::Status RunAttention(const AttentionCall& call, AttentionBackend* backend,
                          grpc::ByteBuffer* response);

}  // namespace flashkv::server
