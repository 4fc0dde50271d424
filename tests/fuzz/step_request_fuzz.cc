// Fuzz target: what the service does with a received Step message before any work is queued —
// server::DecodeAndCheckStepRequest (the wire decoder within the request limits, then the checks
// against the model, the tenant's sequences, the limits and the shared-memory regions). Input:
// byte 0 bit 0 patches region ids (region_fuzz_util.h); the rest is a sliced StepRequest
// (wire_fuzz_util.h).
//
// The server: 2 CPU devices, a small model (2 layers, 4/2 heads, head dim 32, fp16), tenant
// "fuzz" holding sequences a, b, c and tenant "other" holding a and d (the same client id "a"
// in two namespaces).
//
// Requests of entries and batched ones (StepRequest.batch, expanded into the same entries). A
// batch naming a decode pass (batch.pass_id) goes through server::CheckPassLayerBatch instead, as
// the step of a live pass of kPassRows rows on device 0 (what the service does for a stream's
// layer step after 0): accepted, it is one entry of exactly those rows.
//
// Properties: no crash, leak or undefined behaviour; refusals are client errors; an accepted
// step names only the caller's sequences (scoped ids, on the device that holds them), keeps
// every limit, has tensors of exactly the model's size inside the message, and outputs inside
// the caller's region that overlap no input or other output.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "flashkv/server/auth.h"
#include "flashkv/server/cache_set.h"
#include "flashkv/server/step_batch.h"
#include "flashkv/server/step_request.h"
#include "flashkv/v1/kvcache.pb.h"
#include "fuzz_check.h"
#include "region_fuzz_util.h"
#include "wire_fuzz_util.h"

namespace flashkv::fuzz {
namespace {

struct Setup {
  server::ServerConfig config;
  std::unique_ptr<server::CacheSet> caches;
  server::Tenant tenant{kTenant, {}};
  server::Tenant other{kOtherTenant, {}};
  FuzzRegions& regions = SharedRegions();
  const uint8_t* own_base = nullptr;  // the caller's region's first byte
};

Setup& Shared() {
  static Setup* setup = [] {
    auto* s = new Setup;
    server::ServerConfig& c = s->config;
    c.model = server::ModelShape{2, 4, 2, 32, DType::kFloat16, 4};
    c.backend = server::BackendChoice::kCpu;
    c.cpu_devices = 2;
    c.kv_cache_bytes = int64_t{1} << 20;
    c.limits.max_entries_per_step = 8;
    c.limits.max_tokens_per_entry = 64;
    c.limits.max_tokens_per_step = 96;
    absl::StatusOr<server::DevicePlan> plan = server::PlanDevices(c);
    FUZZ_CHECK(plan.ok()) << plan.status();
    auto caches = server::CacheSet::Create(c, *plan, server::RealClock());
    FUZZ_CHECK(caches.ok()) << caches.status();
    s->caches = *std::move(caches);
    for (const auto& [tenant, id] : {std::pair{&s->tenant, "a"}, std::pair{&s->tenant, "b"},
                                     std::pair{&s->tenant, "c"}, std::pair{&s->other, "a"},
                                     std::pair{&s->other, "d"}}) {
      const auto created = s->caches->CreateSequence(
          *tenant, server::ScopedSequenceId(*tenant, id), {});
      FUZZ_CHECK(created.ok()) << created.status();
    }
    auto base = s->regions.registry.Resolve(kTenant, {true, s->regions.own, 0}, 0, "base");
    FUZZ_CHECK(base.ok()) << base.status();
    s->own_base = base->data;
    return s;
  }();
  return *setup;
}

bool PatchRequest(v1::StepRequest* proto, const FuzzRegions& regions) {
  bool other = false;
  for (v1::StepEntry& e : *proto->mutable_entries()) {
    for (v1::Tensor* t : {e.mutable_q(), e.mutable_k(), e.mutable_v()}) {
      if (t->has_region()) other |= PatchSlice(t->mutable_region(), regions);
    }
    if (e.has_out()) other |= PatchSlice(e.mutable_out(), regions);
  }
  if (proto->has_batch()) {
    v1::StepBatch* b = proto->mutable_batch();
    for (v1::Tensor* t : {b->mutable_q(), b->mutable_k(), b->mutable_v()}) {
      if (t->has_region()) other |= PatchSlice(t->mutable_region(), regions);
    }
    if (b->has_out()) other |= PatchSlice(b->mutable_out(), regions);
  }
  return other;
}

struct Range {
  const uint8_t* begin;
  const uint8_t* end;
  bool output;
};

void CheckAccepted(const Setup& s, const wire::StepRequestView& view,
                   const std::vector<server::StepEntry>& entries,
                   const wire::MessageBytes& message) {
  const server::ModelShape& m = s.config.model;
  const size_t row_q = size_t(m.num_q_heads) * m.head_dim * DTypeSize(m.dtype);
  const size_t row_kv = size_t(m.num_kv_heads) * m.head_dim * DTypeSize(m.dtype);
  FUZZ_CHECK(view.layer < uint32_t(m.num_layers)) << "layer";
  // A batched request (StepRequest.batch) expands into one entry per sequence id.
  const std::vector<std::string>* batch_ids =
      view.batch.present ? &view.batch.sequence_ids : nullptr;
  FUZZ_CHECK(!view.batch.present || view.entries.empty()) << "entries and batch both accepted";
  const size_t requested = batch_ids != nullptr ? batch_ids->size() : view.entries.size();
  FUZZ_CHECK(!entries.empty() && entries.size() == requested &&
             entries.size() <= size_t(s.config.limits.max_entries_per_step))
      << "entries";
  int64_t tokens = 0;
  std::vector<Range> ranges;
  for (size_t i = 0; i < entries.size(); ++i) {
    const server::StepEntry& e = entries[i];
    const std::string& id = batch_ids != nullptr ? (*batch_ids)[i] : view.entries[i].sequence_id;
    FUZZ_CHECK(e.sequence_id == server::ScopedSequenceId(s.tenant, id))
        << "entry " << i << " is '" << e.sequence_id << "', not the caller's";
    FUZZ_CHECK(s.caches->DeviceOf(e.sequence_id) == e.device) << "device of entry " << i;
    FUZZ_CHECK(e.num_tokens >= 1 && e.num_tokens <= s.config.limits.max_tokens_per_entry)
        << "tokens of entry " << i;
    tokens += e.num_tokens;
    FUZZ_CHECK(e.q.size == e.num_tokens * row_q && e.k.size == e.num_tokens * row_kv &&
               e.v.size == e.num_tokens * row_kv)
        << "tensor sizes of entry " << i;
    FUZZ_CHECK(e.token_ids.empty() || e.token_ids.size() == size_t(e.num_tokens)) << "token_ids";
    for (wire::Span span : {e.q, e.k, e.v}) {
      (void)SpanBytes(message, span);  // inside the message (ASan reads every byte)
      const uint8_t* p = message.Contiguous(span);
      if (p != nullptr) ranges.push_back({p, p + span.size, false});
    }
    if (e.out_region) {
      const uint8_t* out = e.out_region->data;
      FUZZ_CHECK(out >= s.own_base && out + e.num_tokens * row_q <= s.own_base + kRegionBytes)
          << "entry " << i << "'s output lies outside the caller's region";
      ranges.push_back({out, out + e.num_tokens * row_q, true});
    }
  }
  FUZZ_CHECK(tokens <= s.config.limits.max_tokens_per_step) << "tokens per step";
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 0; i < ranges.size(); ++i) {
    for (size_t j = i + 1; j < ranges.size() && ranges[j].begin < ranges[i].end; ++j) {
      FUZZ_CHECK(!ranges[i].output && !ranges[j].output) << "an output overlaps another range";
    }
  }
}

// The rows of the live pass a pass step is checked against.
constexpr int64_t kPassRows = 3;

void CheckPassStep(const Setup& s, wire::StepRequestView& view, wire::MessageBytes& message,
                   bool names_other) {
  const server::RegionAccess access{&s.regions.registry, kTenant};
  absl::StatusOr<server::StepEntry> entry = server::CheckPassLayerBatch(
      view.batch, kPassRows, 0, s.config, *s.caches, access, &message);
  if (!entry.ok()) {
    FUZZ_CHECK(IsClientError(entry.status())) << entry.status();
    return;
  }
  FUZZ_CHECK(!names_other) << "a pass step reached another tenant's region";
  FUZZ_CHECK(view.batch.sequence_ids.empty() && view.batch.num_tokens.empty() &&
             view.batch.token_ids.empty())
      << "a pass step named sequences";
  const server::ModelShape& m = s.config.model;
  const size_t row_q = size_t(m.num_q_heads) * m.head_dim * DTypeSize(m.dtype);
  const size_t row_kv = size_t(m.num_kv_heads) * m.head_dim * DTypeSize(m.dtype);
  FUZZ_CHECK(entry->sequence_id.empty() && entry->num_tokens == kPassRows && entry->device == 0)
      << "pass entry";
  FUZZ_CHECK(entry->q.size == kPassRows * row_q && entry->k.size == kPassRows * row_kv &&
             entry->v.size == kPassRows * row_kv)
      << "pass tensor sizes";
  for (wire::Span span : {entry->q, entry->k, entry->v}) (void)SpanBytes(message, span);
  if (entry->out_region) {
    const uint8_t* out = entry->out_region->data;
    FUZZ_CHECK(out >= s.own_base && out + kPassRows * row_q <= s.own_base + kRegionBytes)
        << "the pass step's output lies outside the caller's region";
  }
}

}  // namespace
}  // namespace flashkv::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashkv;
  using namespace flashkv::fuzz;
  if (size < 1) return 0;
  Setup& setup = Shared();
  SlicedInput input = SliceInput(data + 1, size - 1);
  wire::MessageBytes message = std::move(input.sliced);
  bool names_other = false;
  if ((data[0] & 1) != 0 &&
      !PatchMessage<v1::StepRequest>(
          &message, [&setup](v1::StepRequest* proto) { return PatchRequest(proto, setup.regions); },
          &names_other)) {
    return 0;
  }
  const server::RegionAccess access{&setup.regions.registry, kTenant};
  wire::StepRequestView view;
  if (server::DecodeStepRequestWithinLimits(setup.config, message, &view).ok() &&
      view.batch.present && view.batch.pass_id != 0 && view.entries.empty()) {
    CheckPassStep(setup, view, message, names_other);
    return 0;
  }
  view = wire::StepRequestView();
  absl::StatusOr<std::vector<server::StepEntry>> entries = server::DecodeAndCheckStepRequest(
      setup.config, *setup.caches, access, setup.tenant, &message, &view);
  if (!entries.ok()) {
    FUZZ_CHECK(IsClientError(entries.status())) << entries.status();
    return 0;
  }
  FUZZ_CHECK(!names_other) << "a step reached another tenant's region";
  CheckAccepted(setup, view, *entries, message);
  return 0;
}
