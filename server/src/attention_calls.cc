#include "flashkv/server/attention_calls.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "flashkv/server/tensor_checks.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

DimSpec Any(const char* name) { return DimSpec{name, kAnyDim, ""}; }
DimSpec Same(const char* name, int64_t value, std::string source) {
  return DimSpec{name, value, std::move(source)};
}

// Head counts and head dim shared by both RPCs, read from q and k (already shape-checked).
absl::Status CheckHeads(int64_t hq, int64_t hkv, int64_t d) {
  bool supported = false;
  for (int s : kSupportedHeadDims) supported = supported || s == d;
  if (!supported) {
    return Invalid("q.shape[-1] (D) = " + std::to_string(d) +
                   " must be one of 32, 64, 96, 128, 192, 256");
  }
  if (hq < 1 || hkv < 1)
    return Invalid("head counts (Hq " + std::to_string(hq) + ", Hkv " + std::to_string(hkv) +
                   ") must be >= 1");
  if (hq % hkv != 0) {
    return Invalid("q heads (Hq = " + std::to_string(hq) +
                   ") must be a multiple of k/v heads (Hkv = " + std::to_string(hkv) + ")");
  }
  return absl::OkStatus();
}

absl::Status CheckScale(const std::optional<float>& scale) {
  if (scale.has_value() && !(std::isfinite(*scale) && *scale > 0.0f)) {
    return Invalid("softmax_scale (" + std::to_string(*scale) + ") must be finite and > 0");
  }
  return absl::OkStatus();
}

// cu_seqlens must have num_seqs + 1 entries, start at 0, never decrease and end at `total`.
absl::Status CheckCuSeqlens(const char* name, const std::vector<int32_t>& cu, size_t expected_size,
                            int64_t total, const char* total_source, int* max_len) {
  if (cu.size() != expected_size) {
    return Invalid(std::string(name) + " has " + std::to_string(cu.size()) +
                   " entries, must have " + std::to_string(expected_size) + " (cu_seqlens_q's)");
  }
  if (cu.empty() || cu[0] != 0) return Invalid(std::string(name) + "[0] must be 0");
  *max_len = 0;
  for (size_t i = 1; i < cu.size(); ++i) {
    if (cu[i] < cu[i - 1]) {
      return Invalid(std::string(name) + "[" + std::to_string(i) + "] (" + std::to_string(cu[i]) +
                     ") must be >= " + name + "[" + std::to_string(i - 1) + "] (" +
                     std::to_string(cu[i - 1]) + ")");
    }
    *max_len = std::max(*max_len, cu[i] - cu[i - 1]);
  }
  if (cu.back() != total) {
    return Invalid(std::string(name) + "[" + std::to_string(cu.size() - 1) + "] (" +
                   std::to_string(cu.back()) + ") must equal " + total_source + " (" +
                   std::to_string(total) + ")");
  }
  return absl::OkStatus();
}

// a * b, saturating at INT64_MAX (operands >= 0).
int64_t SaturatingMul(int64_t a, int64_t b) {
  if (a != 0 && b > INT64_MAX / a) return INT64_MAX;
  return a * b;
}

absl::Status TooLarge(const std::string& what, int64_t value, int64_t limit, const char* flag) {
  return Invalid(what + " = " + std::to_string(value) + " exceeds the server's limit " +
                 std::to_string(limit) + " (" + flag + ")");
}

// Rows, sequences and work of one call against the limits. `pair_rows` is the sum over the
// call's sequences of Sq * Skv.
absl::Status CheckSize(const RequestLimits& l, int64_t batch, int64_t q_rows, int64_t kv_rows,
                       int64_t pair_rows, int64_t hq, int64_t d, const char* batch_name,
                       const char* q_name, const char* kv_name) {
  if (batch > l.max_attention_batch) {
    return TooLarge(batch_name, batch, l.max_attention_batch, "--max-attention-batch");
  }
  if (q_rows > l.max_attention_rows) {
    return TooLarge(q_name, q_rows, l.max_attention_rows, "--max-attention-rows");
  }
  if (kv_rows > l.max_attention_rows) {
    return TooLarge(kv_name, kv_rows, l.max_attention_rows, "--max-attention-rows");
  }
  const int64_t work = SaturatingMul(SaturatingMul(pair_rows, hq), d);
  if (work > l.max_attention_work) {
    return TooLarge("the call's work (sum of Hq*Sq*Skv*D)", work, l.max_attention_work,
                    "--max-attention-work");
  }
  return absl::OkStatus();
}

// A response tensor: the bytes of `buffer`, or (buffer null: the output went to the caller's
// region) just dtype, shape and the slice.
wire::TensorData ResponseTensor(DType dtype, const std::vector<int64_t>& shape,
                                std::shared_ptr<HostBytes> buffer,
                                const wire::RegionSliceView& slice) {
  wire::TensorData tensor;
  tensor.dtype = static_cast<int32_t>(dtype);
  tensor.shape.assign(shape.begin(), shape.end());
  if (buffer) {
    tensor.data = buffer->data();
    tensor.size = buffer->size();
    tensor.owner = std::move(buffer);
  } else {
    tensor.region = slice;
  }
  return tensor;
}

// A call's CUDA regions must share one device (it runs on one); records it in call->device.
template <typename Request>
absl::Status OneDevice(const Request& request, AttentionCall* call) {
  const std::tuple<const std::optional<RegionBytes>*, const char*, uint64_t> regions[] = {
      {&call->q_device, "q.region", request.q.region.region_id},
      {&call->k_device, "k.region", request.k.region.region_id},
      {&call->v_device, "v.region", request.v.region.region_id},
      {&call->out_region, "out", request.out.region_id},
      {&call->lse_region, "lse", request.lse.region_id}};
  for (const auto& [bytes, field, region_id] : regions) {
    if (!bytes->has_value() || (*bytes)->region->device() < 0) continue;
    const int device = (*bytes)->region->device();
    if (call->device == kCpuCompute) {
      call->device = device;
      call->device_field = field;
      call->device_region_id = region_id;
      continue;
    }
    if (device != call->device) {
      return Invalid(std::string(field) + ": a region on CUDA device " + std::to_string(device) +
                     ", but " + call->device_field + " is on CUDA device " +
                     std::to_string(call->device) +
                     "; one call's CUDA regions must share a device");
    }
  }
  return absl::OkStatus();
}

// The out / lse slices of a request, bounds-checked for the call's output sizes.
template <typename Request>
absl::Status ResolveOutputs(const RegionAccess& regions, const Request& request,
                            AttentionCall* call) {
  if (request.lse.present && !request.return_lse) {
    return Invalid("lse (a region slice) is set but return_lse is false");
  }
  absl::StatusOr<uint64_t> out_bytes = TensorByteCount(request.q.dtype, call->out_shape, "out");
  if (!out_bytes.ok()) return out_bytes.status();
  auto out =
      ResolveOutputSlice(regions, request.out, *out_bytes, ElementBytes(request.q.dtype), "out");
  if (!out.ok()) return out.status();
  absl::StatusOr<uint64_t> lse_bytes = TensorByteCount(3, call->lse_shape, "lse");
  if (!lse_bytes.ok()) return lse_bytes.status();
  auto lse = ResolveOutputSlice(regions, request.lse, *lse_bytes, sizeof(float), "lse");
  if (!lse.ok()) return lse.status();
  call->out_region = *std::move(out);
  call->lse_region = *std::move(lse);
  call->out_slice = request.out;
  call->lse_slice = request.lse;
  return OneDevice(request, call);
}

// q, k and v in regions: host ones join the message, CUDA ones go to the call.
template <typename Request>
absl::Status ResolveInputs(const RegionAccess& regions, Request& request,
                           wire::MessageBytes* message, AttentionCall* call) {
  return ResolveRegionTensors(regions,
                              {{&request.q, "q", &call->q_device},
                               {&request.k, "k", &call->k_device},
                               {&request.v, "v", &call->v_device}},
                              message);
}

// An input's bytes: in the message, or a device pointer (a CUDA region).
TensorBytes InputBytes(const AttentionCall& call, wire::Span span,
                       const std::optional<RegionBytes>& device, DType dtype) {
  if (device) return TensorBytes::Borrow(device->data);
  return TensorBytes::Get(call.message, span, dtype);
}

}  // namespace

absl::StatusOr<AttentionCall> PrepareAttention(wire::MessageBytes message,
                                               const RegionAccess& regions,
                                               const RequestLimits& limits) {
  wire::AttentionRequestView request;
  if (auto s = wire::DecodeAttentionRequest(message, &request); !s.ok()) return s;
  AttentionCall call;
  if (auto s = ResolveInputs(regions, request, &message, &call); !s.ok()) return s;

  TensorSpec q_spec{"q", {Any("B"), Any("Sq"), Any("Hq"), Any("D")}, std::nullopt, ""};
  absl::StatusOr<DType> dtype = CheckTensor(request.q, q_spec);
  if (!dtype.ok()) return dtype.status();
  const wire::Dims& q = request.q.shape;
  TensorSpec k_spec{
      "k",
      {Same("B", q[0], "q.shape[0]"), Any("Skv"), Any("Hkv"), Same("D", q[3], "q.shape[3]")},
      *dtype,
      "q.dtype"};
  if (auto s = CheckTensor(request.k, k_spec); !s.ok()) return s.status();
  const wire::Dims& k = request.k.shape;
  TensorSpec v_spec{"v",
                    {Same("B", q[0], "q.shape[0]"), Same("Skv", k[1], "k.shape[1]"),
                     Same("Hkv", k[2], "k.shape[2]"), Same("D", q[3], "q.shape[3]")},
                    *dtype,
                    "q.dtype"};
  if (auto s = CheckTensor(request.v, v_spec); !s.ok()) return s.status();
  if (auto s = CheckHeads(q[2], k[2], q[3]); !s.ok()) return s;
  if (auto s = CheckScale(request.softmax_scale); !s.ok()) return s;
  if (auto s = CheckSize(limits, q[0], SaturatingMul(q[0], q[1]), SaturatingMul(q[0], k[1]),
                         SaturatingMul(SaturatingMul(q[0], q[1]), k[1]), q[2], q[3],
                         "q.shape[0] (B)", "B*Sq", "B*Skv");
      !s.ok()) {
    return s;
  }

  call.message = std::move(message);
  call.q = request.q.data;
  call.k = request.k.data;
  call.v = request.v.data;
  call.return_lse = request.return_lse;
  call.out_shape.assign(q.begin(), q.end());
  call.lse_shape = {q[0], q[2], q[1]};  // [B, Hq, Sq]
  if (auto s = ResolveOutputs(regions, request, &call); !s.ok()) return s;
  AttentionOptions options{request.causal, request.softmax_scale};
  call.fixed = MakeDenseFixedArgs(*dtype, int(q[0]), int(q[1]), int(k[1]), int(q[2]), int(k[2]),
                                  int(q[3]), nullptr, nullptr, nullptr, nullptr, nullptr, options);
  return call;
}

absl::StatusOr<AttentionCall> PrepareAttentionVarlen(wire::MessageBytes message,
                                                     const RegionAccess& regions,
                                                     const RequestLimits& limits) {
  wire::AttentionVarlenRequestView request;
  wire::DecodeLimits decode_limits;
  decode_limits.max_cu_seqlens = static_cast<size_t>(limits.max_attention_batch) + 1;
  if (auto s = wire::DecodeAttentionVarlenRequest(message, &request, decode_limits); !s.ok()) {
    return s;
  }
  AttentionCall call;
  if (auto s = ResolveInputs(regions, request, &message, &call); !s.ok()) return s;

  TensorSpec q_spec{"q", {Any("Tq"), Any("Hq"), Any("D")}, std::nullopt, ""};
  absl::StatusOr<DType> dtype = CheckTensor(request.q, q_spec);
  if (!dtype.ok()) return dtype.status();
  const wire::Dims& q = request.q.shape;
  TensorSpec k_spec{
      "k", {Any("Tkv"), Any("Hkv"), Same("D", q[2], "q.shape[2]")}, *dtype, "q.dtype"};
  if (auto s = CheckTensor(request.k, k_spec); !s.ok()) return s.status();
  const wire::Dims& k = request.k.shape;
  TensorSpec v_spec{"v",
                    {Same("Tkv", k[0], "k.shape[0]"), Same("Hkv", k[1], "k.shape[1]"),
                     Same("D", q[2], "q.shape[2]")},
                    *dtype,
                    "q.dtype"};
  if (auto s = CheckTensor(request.v, v_spec); !s.ok()) return s.status();
  if (auto s = CheckHeads(q[1], k[1], q[2]); !s.ok()) return s;
  if (auto s = CheckScale(request.softmax_scale); !s.ok()) return s;
  if (request.cu_seqlens_q.size() < 2) {
    return Invalid("cu_seqlens_q has " + std::to_string(request.cu_seqlens_q.size()) +
                   " entries, must have num_seqs + 1 >= 2");
  }
  int max_q = 0, max_kv = 0;
  const size_t n = request.cu_seqlens_q.size();
  if (auto s = CheckCuSeqlens("cu_seqlens_q", request.cu_seqlens_q, n, q[0], "q.shape[0]", &max_q);
      !s.ok()) {
    return s;
  }
  if (auto s =
          CheckCuSeqlens("cu_seqlens_kv", request.cu_seqlens_kv, n, k[0], "k.shape[0]", &max_kv);
      !s.ok()) {
    return s;
  }
  int64_t pair_rows = 0;  // sum of Sq * Skv; each term < 2^62, the sum saturates
  for (size_t b = 0; b + 1 < n; ++b) {
    const int64_t term = int64_t{request.cu_seqlens_q[b + 1] - request.cu_seqlens_q[b]} *
                         (request.cu_seqlens_kv[b + 1] - request.cu_seqlens_kv[b]);
    pair_rows = term > INT64_MAX - pair_rows ? INT64_MAX : pair_rows + term;
  }
  if (auto s = CheckSize(limits, static_cast<int64_t>(n - 1), q[0], k[0], pair_rows, q[1], q[2],
                         "num_seqs (cu_seqlens_q entries - 1)", "q.shape[0] (Tq)",
                         "k.shape[0] (Tkv)");
      !s.ok()) {
    return s;
  }

  call.message = std::move(message);
  call.varlen = true;
  call.q = request.q.data;
  call.k = request.k.data;
  call.v = request.v.data;
  call.return_lse = request.return_lse;
  call.out_shape.assign(q.begin(), q.end());
  call.lse_shape = {q[1], q[0]};  // [Hq, Tq]
  if (auto s = ResolveOutputs(regions, request, &call); !s.ok()) return s;
  call.cu_seqlens_q = std::move(request.cu_seqlens_q);
  call.cu_seqlens_kv = std::move(request.cu_seqlens_kv);
  VarlenAttentionArgs& a = call.varlen_args;
  a.dtype = *dtype;
  a.num_seqs = static_cast<int>(n - 1);
  a.num_heads_q = int(q[1]);
  a.num_heads_kv = int(k[1]);
  a.head_dim = int(q[2]);
  a.total_q = q[0];
  a.total_kv = k[0];
  a.max_seqlen_q = max_q;
  a.max_seqlen_kv = max_kv;
  a.q_strides = DenseStrides(0, a.num_heads_q, a.head_dim);
  a.k_strides = DenseStrides(0, a.num_heads_kv, a.head_dim);
  a.v_strides = a.k_strides;
  a.out_strides = a.q_strides;
  a.options = AttentionOptions{request.causal, request.softmax_scale};
  return call;
}

absl::StatusOr<AttentionBackend*> ChooseBackend(const AttentionCall& call,
                                                absl::Span<AttentionBackend* const> backends,
                                                size_t turn) {
  if (backends.empty()) return absl::UnavailableError("no attention backend");
  AttentionBackend* next = backends[turn % backends.size()];
  if (call.device == kCpuCompute) return next;
  for (AttentionBackend* backend : backends) {
    if (backend->cuda_device() == call.device) return backend;
  }
  return CheckRegionPlacement(call.device_field, call.device_region_id, call.device,
                              next->cuda_device(), "this server's attention");
}

absl::Status RunAttention(const AttentionCall& call, AttentionBackend* backend,
                          grpc::ByteBuffer* response) {
  const DType dtype = call.varlen ? call.varlen_args.dtype : call.fixed.dtype;
  const int head_dim = call.varlen ? call.varlen_args.head_dim : call.fixed.head_dim;
  if (!backend->IsCompiled(dtype, head_dim)) {
    return absl::UnimplementedError(std::string("attention for ") + DTypeName(dtype) +
                                    " with head dim " + std::to_string(head_dim) +
                                    " is not compiled into this server (" + backend->name() + ")");
  }
  // Inputs in CUDA regions are device pointers (on the backend's device: ChooseBackend).
  const TensorBytes q = InputBytes(call, call.q, call.q_device, dtype);
  const TensorBytes k = InputBytes(call, call.k, call.k_device, dtype);
  const TensorBytes v = InputBytes(call, call.v, call.v_device, dtype);
  OnDevice on_device;
  on_device.q = call.q_device.has_value();
  on_device.k = call.k_device.has_value();
  on_device.v = call.v_device.has_value();
  on_device.out = call.out_region && call.out_region->region->device() >= 0;
  on_device.lse = call.return_lse && call.lse_region && call.lse_region->region->device() >= 0;
  // Outputs go to the caller's region when it named one, else to buffers the response sends.
  std::shared_ptr<HostBytes> out;
  void* out_data = nullptr;
  if (call.out_region) {
    out_data = call.out_region->data;
  } else {
    out = HostBytes::Allocate(call.q.size);
    out_data = out->data();
  }
  std::shared_ptr<HostBytes> lse;
  float* lse_data = nullptr;
  if (call.return_lse && call.lse_region) {
    lse_data = reinterpret_cast<float*>(call.lse_region->data);
  } else if (call.return_lse) {
    int64_t rows = 1;
    for (int64_t d : call.lse_shape) rows *= d;
    lse = HostBytes::Allocate(static_cast<size_t>(rows) * sizeof(float));
    lse_data = reinterpret_cast<float*>(lse->data());
  }

  absl::Status status;
  if (call.varlen) {
    VarlenAttentionArgs args = call.varlen_args;
    args.q = q.data();
    args.k = k.data();
    args.v = v.data();
    args.out = out_data;
    args.lse = lse_data;
    args.cu_seqlens_q = call.cu_seqlens_q.data();
    args.cu_seqlens_kv = call.cu_seqlens_kv.data();
    status = backend->RunVarlen(args, on_device);
  } else {
    FixedAttentionArgs args = call.fixed;
    args.q = q.data();
    args.k = k.data();
    args.v = v.data();
    args.out = out_data;
    args.lse = lse_data;
    status = backend->RunFixed(args, on_device);
  }
  if (!status.ok()) return status;

  const wire::TensorData out_tensor =
      ResponseTensor(dtype, call.out_shape, std::move(out), call.out_slice);
  if (!call.return_lse) {
    *response = wire::EncodeAttentionResponse(out_tensor, nullptr);
    return absl::OkStatus();
  }
  const wire::TensorData lse_tensor =
      ResponseTensor(DType::kFloat32, call.lse_shape, std::move(lse), call.lse_slice);
  *response = wire::EncodeAttentionResponse(out_tensor, &lse_tensor);
  return absl::OkStatus();
}

}  // namespace flashkv::server
