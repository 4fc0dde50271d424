// Fuzz target: the stateless Attention and AttentionVarlen RPCs below gRPC — decode, check
// (server/attention_calls.h: PrepareAttention / PrepareAttentionVarlen with their region
// resolution) and, for every request the checks accept, the computation on the CPU backend
// (RunAttention) and the response's encoding. Input: byte 0 picks the RPC (bit 0) and whether
// region ids are patched (bit 1); the rest is a sliced message (wire_fuzz_util.h).
//
// Shared-memory regions: two host regions are registered at start-up, one of the calling tenant
// and one of another tenant. Random region ids never name them, so in patched mode the message
// is parsed with protobuf and every RegionSlice whose id is 1 (mod 3) is pointed at the caller's
// region, 2 (mod 3) at the other tenant's, before it is serialized again.
//
// Properties: no crash, leak or undefined behaviour, in the checks or in the kernels they let
// through (ASan sees every read and write of the tensors, in the message and in the regions);
// errors are client errors (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, UNIMPLEMENTED),
// never INTERNAL; an accepted call never reaches another tenant's region; an accepted call's
// response decodes, with the output shape of q, and LSE when asked for.

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "flashkv/cpu_backend.h"
#include "flashkv/server/attention_calls.h"
#include "flashkv/server/region_registry.h"
#include "flashkv/v1/attention.pb.h"
#include "flashkv/wire/messages.h"
#include "fuzz_check.h"
#include "wire_fuzz_util.h"

namespace flashkv::fuzz {
namespace {

constexpr uint64_t kRegionBytes = 16 << 10;
constexpr char kTenant[] = "fuzz";
constexpr char kOtherTenant[] = "other";

struct Regions {
  server::RegionRegistry registry;
  uint64_t own = 0;
  uint64_t other = 0;
  std::unique_ptr<server::AttentionBackend> backend;
};

// A sealed memfd of this process, attached as the registry's clients attach theirs, filled with
// small finite values of every dtype's width (a float32 or two fp16/bf16 halves per word).
uint64_t AttachRegion(server::RegionRegistry* registry, const char* tenant) {
  const int fd = memfd_create("flashkv-fuzz", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  FUZZ_CHECK(fd >= 0) << "memfd_create";
  FUZZ_CHECK(ftruncate(fd, kRegionBytes) == 0) << "ftruncate";
  FUZZ_CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0) << "F_ADD_SEALS";
  void* map = mmap(nullptr, kRegionBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  FUZZ_CHECK(map != MAP_FAILED) << "mmap";
  auto* words = static_cast<uint32_t*>(map);
  for (uint64_t i = 0; i < kRegionBytes / 4; ++i) words[i] = 0x3c003c00u + (i % 64) * 0x00010001u;
  munmap(map, kRegionBytes);
  absl::StatusOr<uint64_t> id = registry->AttachHost(tenant, getpid(), fd, kRegionBytes);
  FUZZ_CHECK(id.ok()) << id.status();
  close(fd);  // the registry holds its own mapping
  return *id;
}

Regions& Setup() {
  static Regions* regions = [] {
    auto* r = new Regions;
    r->own = AttachRegion(&r->registry, kTenant);
    r->other = AttachRegion(&r->registry, kOtherTenant);
    r->backend = server::NewCpuAttentionBackend();
    cpu::SetNumThreads(1);  // deterministic and cheap: inputs are small
    return r;
  }();
  return *regions;
}

// Points a slice at one of the registered regions by its id's residue; returns whether it now
// names the other tenant's.
bool Patch(v1::RegionSlice* slice, const Regions& regions) {
  const uint64_t pick = slice->region_id() % 3;
  if (pick == 0) return false;
  slice->set_region_id(pick == 1 ? regions.own : regions.other);
  slice->set_offset(slice->offset() % (2 * kRegionBytes));
  return pick == 2;
}

template <typename Proto>
bool PatchRequest(Proto* proto, const Regions& regions) {
  bool other = false;
  for (v1::Tensor* t : {proto->mutable_q(), proto->mutable_k(), proto->mutable_v()}) {
    if (t->has_region()) other |= Patch(t->mutable_region(), regions);
  }
  if (proto->has_out()) other |= Patch(proto->mutable_out(), regions);
  if (proto->has_lse()) other |= Patch(proto->mutable_lse(), regions);
  return other;
}

bool IsClientError(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument ||
         s.code() == absl::StatusCode::kNotFound ||
         s.code() == absl::StatusCode::kFailedPrecondition ||
         s.code() == absl::StatusCode::kUnimplemented;
}

void CheckResponse(const server::AttentionCall& call, const grpc::ByteBuffer& buffer) {
  const wire::MessageBytes bytes = FromBuffer(buffer);
  wire::AttentionResponseView response;
  FUZZ_CHECK(wire::DecodeAttentionResponse(bytes, &response).ok()) << "response does not decode";
  FUZZ_CHECK(response.out.shape == call.out_shape) << "out shape";
  FUZZ_CHECK(response.out.region.present == call.out_region.has_value()) << "out region";
  if (!call.out_region.has_value()) {
    FUZZ_CHECK(response.out.data.size == call.q.size) << "out bytes";
  }
  FUZZ_CHECK(response.lse.present == call.return_lse) << "lse presence";
  if (call.return_lse) FUZZ_CHECK(response.lse.shape == call.lse_shape) << "lse shape";
}

}  // namespace
}  // namespace flashkv::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashkv;
  using namespace flashkv::fuzz;
  if (size < 1) return 0;
  Regions& regions = Setup();
  const bool varlen = (data[0] & 1) != 0;
  const bool patch = (data[0] & 2) != 0;
  SlicedInput input = SliceInput(data + 1, size - 1);
  wire::MessageBytes message = std::move(input.sliced);
  bool names_other = false;
  if (patch) {
    // Protobuf's canonical re-serialization of the patched request (unparseable: skip).
    std::string bytes;
    if (varlen) {
      v1::AttentionVarlenRequest proto;
      if (!ParseProto(message, &proto)) return 0;
      names_other = PatchRequest(&proto, regions);
      bytes = proto.SerializeAsString();
    } else {
      v1::AttentionRequest proto;
      if (!ParseProto(message, &proto)) return 0;
      names_other = PatchRequest(&proto, regions);
      bytes = proto.SerializeAsString();
    }
    message = FromString(bytes);
  }
  const server::RegionAccess access{&regions.registry, kTenant};
  absl::StatusOr<server::AttentionCall> call =
      varlen ? server::PrepareAttentionVarlen(std::move(message), access)
             : server::PrepareAttention(std::move(message), access);
  if (!call.ok()) {
    FUZZ_CHECK(IsClientError(call.status())) << call.status();
    return 0;
  }
  FUZZ_CHECK(!names_other) << "a call reached another tenant's region";
  grpc::ByteBuffer response;
  const absl::Status run = server::RunAttention(*call, regions.backend.get(), &response);
  if (!run.ok()) {
    // Only a (dtype, head dim) outside this build may fail once the checks passed.
    FUZZ_CHECK(run.code() == absl::StatusCode::kUnimplemented) << run;
    return 0;
  }
  CheckResponse(*call, response);
  return 0;
}
