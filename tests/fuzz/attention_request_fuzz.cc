// Fuzz target: the stateless Attention and AttentionVarlen RPCs below gRPC — decode, check
// (server/attention_calls.h: PrepareAttention / PrepareAttentionVarlen with their region
// resolution) and, for every request the checks accept, the computation on the CPU backend
// (RunAttention) and the response's encoding. Input: byte 0 picks the RPC (bit 0) and whether
// region ids are patched (bit 1); the rest is a sliced message (wire_fuzz_util.h).
//
// Shared-memory regions (region_fuzz_util.h): in patched mode the message is parsed with protobuf,
// its RegionSlices pointed at the caller's or another tenant's region, and serialized again.
//
// Properties: no crash, leak or undefined behaviour, in the checks or in the kernels they let
// through (ASan sees every read and write of the tensors, in the message and in the regions);
// errors are client errors (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, UNIMPLEMENTED),
// never INTERNAL; an accepted call never reaches another tenant's region; an accepted call's
// response decodes, with the output shape of q, and LSE when asked for.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "flashkv/cpu_backend.h"
#include "flashkv/server/attention_calls.h"
#include "flashkv/v1/attention.pb.h"
#include "flashkv/wire/messages.h"
#include "fuzz_check.h"
#include "region_fuzz_util.h"
#include "wire_fuzz_util.h"

namespace flashkv::fuzz {
namespace {

struct Setup {
  FuzzRegions& regions = SharedRegions();
  std::unique_ptr<server::AttentionBackend> backend = server::NewCpuAttentionBackend();
};

Setup& Shared() {
  static Setup* setup = [] {
    cpu::SetNumThreads(1);  // deterministic and cheap: inputs are small
    return new Setup;
  }();
  return *setup;
}

template <typename Proto>
bool PatchRequest(Proto* proto, const FuzzRegions& regions) {
  bool other = false;
  for (v1::Tensor* t : {proto->mutable_q(), proto->mutable_k(), proto->mutable_v()}) {
    if (t->has_region()) other |= PatchSlice(t->mutable_region(), regions);
  }
  if (proto->has_out()) other |= PatchSlice(proto->mutable_out(), regions);
  if (proto->has_lse()) other |= PatchSlice(proto->mutable_lse(), regions);
  return other;
}

void CheckResponse(const server::AttentionCall& call, const grpc::ByteBuffer& buffer) {
  const wire::MessageBytes bytes = FromBuffer(buffer);
  wire::AttentionResponseView response;
  FUZZ_CHECK(wire::DecodeAttentionResponse(bytes, &response).ok()) << "response does not decode";
  FUZZ_CHECK(absl::MakeConstSpan(response.out.shape) == absl::MakeConstSpan(call.out_shape))
      << "out shape";
  FUZZ_CHECK(response.out.region.present == call.out_region.has_value()) << "out region";
  if (!call.out_region.has_value()) {
    FUZZ_CHECK(response.out.data.size == call.q.size) << "out bytes";
  }
  FUZZ_CHECK(response.lse.present == call.return_lse) << "lse presence";
  if (call.return_lse) {
    FUZZ_CHECK(absl::MakeConstSpan(response.lse.shape) == absl::MakeConstSpan(call.lse_shape))
        << "lse shape";
  }
}

}  // namespace
}  // namespace flashkv::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashkv;
  using namespace flashkv::fuzz;
  if (size < 1) return 0;
  Setup& setup = Shared();
  const bool varlen = (data[0] & 1) != 0;
  const bool patch = (data[0] & 2) != 0;
  SlicedInput input = SliceInput(data + 1, size - 1);
  wire::MessageBytes message = std::move(input.sliced);
  bool names_other = false;
  if (patch) {
    const auto patch_request = [&setup](auto* proto) { return PatchRequest(proto, setup.regions); };
    const bool parsed =
        varlen ? PatchMessage<v1::AttentionVarlenRequest>(&message, patch_request, &names_other)
               : PatchMessage<v1::AttentionRequest>(&message, patch_request, &names_other);
    if (!parsed) return 0;
  }
  const server::RegionAccess access{&setup.regions.registry, kTenant};
  absl::StatusOr<server::AttentionCall> call =
      varlen ? server::PrepareAttentionVarlen(std::move(message), access)
             : server::PrepareAttention(std::move(message), access);
  if (!call.ok()) {
    FUZZ_CHECK(IsClientError(call.status())) << call.status();
    return 0;
  }
  FUZZ_CHECK(!names_other) << "a call reached another tenant's region";
  grpc::ByteBuffer response;
  const absl::Status run = server::RunAttention(*call, setup.backend.get(), &response);
  if (!run.ok()) {
    // Only a (dtype, head dim) outside this build may fail once the checks passed.
    FUZZ_CHECK(run.code() == absl::StatusCode::kUnimplemented) << run;
    return 0;
  }
  CheckResponse(*call, response);
  return 0;
}
