#include "flashkv/server/step_request.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "flashkv/server/step_batch.h"
#include "flashkv/server/tensor_checks.h"

namespace flashkv::server {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// Well-formed UTF-8 (protobuf requires it of string fields), without overlong forms or
// surrogates.
bool IsUtf8(const std::string& s) {
  static constexpr uint32_t kSmallest[] = {0, 0x80, 0x800, 0x10000};  // per continuation count
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t extra;
    uint32_t code;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      extra = 1;
      code = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2;
      code = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3;
      code = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i <= extra) return false;
    for (size_t k = 1; k <= extra; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      code = (code << 6) | (d & 0x3f);
    }
    if (code < kSmallest[extra] || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

DimSpec Rows(const char* name) { return DimSpec{name, kAnyDim, ""}; }

// The specs of an entry's q, k and v, built once per request and renamed for each entry: building
// them afresh (names, sources, dimension lists) for every entry of a large step showed in
// profiles. Names are "entries[i].q" and so on.
struct EntrySpecs {
  explicit EntrySpecs(const ModelShape& m)
      : q{"",
          {Rows("n"), DimSpec{"Hq", m.num_q_heads, "the model's q heads"},
           DimSpec{"D", m.head_dim, "the model's head dim"}},
          m.dtype,
          "the model's dtype"},
        k{"",
          {DimSpec{"n", 0, ""}, DimSpec{"Hkv", m.num_kv_heads, "the model's kv heads"},
           DimSpec{"D", m.head_dim, "the model's head dim"}},
          m.dtype,
          "the model's dtype"},
        v(k) {}

  void Name(const std::string& entry) {
    q.name.assign(entry).append(".q");
    k.name.assign(entry).append(".k");
    v.name.assign(entry).append(".v");
  }
  // k and v must have q's n rows.
  void RequireRows(int64_t n) {
    for (TensorSpec* spec : {&k, &v}) {
      spec->dims[0].required = n;
      spec->dims[0].source.assign(q.name).append(".shape[0]");
    }
  }

  TensorSpec q, k, v;
};

// CUDA regions of an entry must lie on the device of its sequence's cache. (Field names are built
// only for CUDA regions: host regions are fine on any backend.)
absl::Status CheckEntryPlacement(const StepEntry& entry, const wire::StepEntryView& view,
                                 const std::string& name, int compute_device) {
  const std::tuple<const std::optional<RegionBytes>*, uint64_t, const char*> regions[] = {
      {&entry.q_device, view.q.region.region_id, ".q.region"},
      {&entry.k_device, view.k.region.region_id, ".k.region"},
      {&entry.v_device, view.v.region.region_id, ".v.region"},
      {&entry.out_region, view.out.region_id, ".out"}};
  for (const auto& [bytes, region_id, field] : regions) {
    if (!bytes->has_value() || (*bytes)->region->device() < 0) continue;
    if (auto s = CheckRegionPlacement(name + field, region_id, (*bytes)->region->device(),
                                      compute_device, "the sequence's KV cache");
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

// `scoped_id` and `device` (-1: no device holds it) come from one directory lookup for the whole
// request.
absl::StatusOr<StepEntry> CheckEntry(wire::StepEntryView& view, size_t index,
                                     const ServerConfig& config, const CacheSet& caches,
                                     std::string scoped_id, int device, EntrySpecs* specs,
                                     RegionTensorResolver* resolver) {
  const ModelShape& m = config.model;
  const std::string name = "entries[" + std::to_string(index) + "]";
  // Field names are spelled out only for an error message (this runs for every entry).
  if (!CheckSequenceId(view.sequence_id, "").ok()) {
    return CheckSequenceId(view.sequence_id, name + ".sequence_id");
  }
  // Before a region is resolved for it: the rows a region tensor names are not bounded by the
  // message's size.
  const int64_t max_tokens = config.limits.max_tokens_per_entry;
  if (!view.q.shape.empty() && view.q.shape[0] > max_tokens) {
    return Invalid(name + ".q.shape[0] (n) = " + std::to_string(view.q.shape[0]) +
                   " exceeds the server's limit of " + std::to_string(max_tokens) +
                   " tokens per entry (--max-tokens-per-entry)");
  }
  specs->Name(name);
  StepEntry entry;
  if (view.q.region.present || view.k.region.present || view.v.region.present) {
    if (auto s = resolver->Resolve({{&view.q, specs->q.name.c_str(), &entry.q_device},
                                    {&view.k, specs->k.name.c_str(), &entry.k_device},
                                    {&view.v, specs->v.name.c_str(), &entry.v_device}});
        !s.ok()) {
      return s;
    }
  }
  if (auto s = CheckTensor(view.q, specs->q); !s.ok()) return s.status();
  const int64_t n = view.q.shape[0];
  if (n < 1) return Invalid(name + ".q.shape[0] (n) = 0 must be >= 1");
  specs->RequireRows(n);
  if (auto s = CheckTensor(view.k, specs->k); !s.ok()) return s.status();
  if (auto s = CheckTensor(view.v, specs->v); !s.ok()) return s.status();
  if (!view.token_ids.empty() && static_cast<int64_t>(view.token_ids.size()) != n) {
    return Invalid(name + ".token_ids has " + std::to_string(view.token_ids.size()) +
                   " ids; it must be empty or have one per new token (" + std::to_string(n) + ")");
  }
  if (device < 0) {
    return absl::NotFoundError(name + ": sequence '" + view.sequence_id + "' does not exist");
  }
  const uint64_t out_bytes = uint64_t(n) * m.num_q_heads * m.head_dim * DTypeSize(m.dtype);
  absl::StatusOr<std::optional<RegionBytes>> out =
      resolver->ResolveOutput(view.out, out_bytes, DTypeSize(m.dtype), name.c_str(), ".out");
  if (!out.ok()) return out.status();
  entry.out_region = *std::move(out);
  if (auto s = CheckEntryPlacement(entry, view, name,
                                   caches.cuda() ? caches.device_id(device) : kCpuCompute);
      !s.ok()) {
    return s;
  }
  entry.out_slice = view.out;
  entry.sequence_id = std::move(scoped_id);
  entry.num_tokens = static_cast<int>(n);
  entry.q = view.q.data;
  entry.k = view.k.data;
  entry.v = view.v.data;
  entry.token_ids = std::move(view.token_ids);
  entry.device = device;
  return entry;
}

// An output region range that overlaps an input in a region, or another output. A sweep in
// address order: a range overlaps an earlier one exactly when it starts before the furthest end
// seen so far (of inputs, for an output; of outputs, for anything).
absl::Status CheckOutputsApart(const std::vector<StepEntry>& entries,
                               const wire::MessageBytes& message, const ModelShape& m) {
  struct Range {
    const uint8_t* begin;
    const uint8_t* end;
    size_t entry;
    const char* field;  // ".q", ".k", ".v", ".out"
    bool output() const { return field[1] == 'o'; }
    std::string Name() const { return "entries[" + std::to_string(entry) + "]" + field; }
  };
  constexpr auto ByBegin = [](const Range& a, const Range& b) { return a.begin < b.begin; };
  // One run per field (outputs, then q, k, v), each usually ascending already (a runner lays a
  // batch out row after row), merged rather than sorted: a 256-entry step has 1,024 ranges, and
  // sorting them showed in profiles.
  std::vector<Range> ranges;
  std::vector<size_t> run_starts;
  auto end_run = [&] {
    const auto begin = ranges.begin() + static_cast<std::ptrdiff_t>(run_starts.back());
    if (!std::is_sorted(begin, ranges.end(), ByBegin)) std::sort(begin, ranges.end(), ByBegin);
  };
  run_starts.push_back(0);
  for (size_t i = 0; i < entries.size(); ++i) {
    const StepEntry& e = entries[i];
    if (!e.out_region) continue;
    if (ranges.empty()) ranges.reserve(4 * entries.size());
    const size_t bytes = size_t(e.num_tokens) * m.num_q_heads * m.head_dim * DTypeSize(m.dtype);
    ranges.push_back({e.out_region->data, e.out_region->data + bytes, i, ".out"});
  }
  if (ranges.empty()) return absl::OkStatus();
  end_run();
  const std::tuple<wire::Span StepEntry::*, std::optional<RegionBytes> StepEntry::*, const char*>
      inputs[] = {{&StepEntry::q, &StepEntry::q_device, ".q"},
                  {&StepEntry::k, &StepEntry::k_device, ".k"},
                  {&StepEntry::v, &StepEntry::v_device, ".v"}};
  for (const auto& [span_of, device_of, field] : inputs) {
    run_starts.push_back(ranges.size());
    for (size_t i = 0; i < entries.size(); ++i) {
      const StepEntry& e = entries[i];
      const wire::Span span = e.*span_of;
      const std::optional<RegionBytes>& device = e.*device_of;
      // Bytes that came in the message cannot overlap a region; region bytes are one slice, and
      // device regions are device addresses (one address space with host memory: UVA).
      const uint8_t* p = device.has_value() ? device->data : message.Contiguous(span);
      if (p == nullptr || span.size == 0) continue;
      ranges.push_back({p, p + span.size, i, field});
    }
    end_run();
  }
  for (size_t r = 1; r < run_starts.size(); ++r) {
    const auto at = [&](size_t i) {
      return ranges.begin() +
             static_cast<std::ptrdiff_t>(i < run_starts.size() ? run_starts[i] : ranges.size());
    };
    std::inplace_merge(ranges.begin(), at(r), at(r + 1), ByBegin);
  }
  const Range* furthest_input = nullptr;
  const Range* furthest_output = nullptr;
  for (const Range& r : ranges) {
    const Range* hit = nullptr;
    if (furthest_output != nullptr && r.begin < furthest_output->end) hit = furthest_output;
    if (hit == nullptr && r.output() && furthest_input != nullptr && r.begin < furthest_input->end) {
      hit = furthest_input;
    }
    if (hit != nullptr) {
      const Range& out = hit->output() ? *hit : r;
      const Range& other = hit->output() ? r : *hit;
      return Invalid(out.Name() + " overlaps " + other.Name() +
                     " in its region; outputs must not share bytes with the step's inputs or "
                     "other outputs");
    }
    const Range*& furthest = r.output() ? furthest_output : furthest_input;
    if (furthest == nullptr || r.end > furthest->end) furthest = &r;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckSequenceId(const std::string& id, const std::string& field) {
  if (id.empty()) return Invalid(field + " is empty");
  if (id.size() > kMaxSequenceIdBytes) {
    return Invalid(field + " has " + std::to_string(id.size()) + " bytes; at most " +
                   std::to_string(kMaxSequenceIdBytes) + " are allowed");
  }
  if (!IsUtf8(id)) return Invalid(field + " is not valid UTF-8");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StepEntry>> CheckStepRequest(wire::StepRequestView& request,
                                                        const ServerConfig& config,
                                                        const CacheSet& caches,
                                                        const RegionAccess& regions,
                                                        const Tenant& tenant,
                                                        wire::MessageBytes* message) {
  if (request.layer >= static_cast<uint32_t>(config.model.num_layers)) {
    return Invalid("layer (" + std::to_string(request.layer) + ") must be < the model's layers (" +
                   std::to_string(config.model.num_layers) + ")");
  }
  if (request.batch.present) {
    if (!request.entries.empty()) {
      return Invalid("entries has " + std::to_string(request.entries.size()) +
                     " items and batch is set; a StepRequest carries one or the other");
    }
    return CheckStepBatch(request.batch, config, caches, regions, tenant, message);
  }
  if (request.entries.empty()) return Invalid("entries is empty");
  const RequestLimits& limits = config.limits;
  if (request.entries.size() > static_cast<size_t>(limits.max_entries_per_step)) {
    return Invalid("entries has " + std::to_string(request.entries.size()) + " items; at most " +
                   std::to_string(limits.max_entries_per_step) + " (--max-entries-per-step)");
  }
  // The entries' devices in one directory lookup under one lock, which also finds a known id
  // named twice (an unknown one is NOT_FOUND at its first occurrence, which comes first).
  std::vector<std::string> scoped(request.entries.size());
  for (size_t i = 0; i < scoped.size(); ++i) {
    scoped[i] = ScopedSequenceId(tenant, request.entries[i].sequence_id);
  }
  std::vector<int> devices;
  const std::optional<std::pair<size_t, size_t>> repeat = caches.DevicesOf(scoped, &devices);
  std::vector<StepEntry> entries;
  entries.reserve(request.entries.size());
  int64_t total_tokens = 0;
  RegionTensorResolver resolver(regions, message);
  EntrySpecs specs(config.model);
  for (size_t i = 0; i < request.entries.size(); ++i) {
    wire::StepEntryView& view = request.entries[i];
    if (repeat.has_value() && repeat->second == i) {
      return Invalid("entries[" + std::to_string(i) + "].sequence_id '" + view.sequence_id +
                     "' repeats entries[" + std::to_string(repeat->first) + "]");
    }
    absl::StatusOr<StepEntry> entry = CheckEntry(view, i, config, caches, std::move(scoped[i]),
                                                 devices[i], &specs, &resolver);
    if (!entry.ok()) return entry.status();
    total_tokens += entry->num_tokens;
    if (total_tokens > limits.max_tokens_per_step) {
      return Invalid("entries[0.." + std::to_string(i) + "] have " +
                     std::to_string(total_tokens) + " new tokens; a step may have at most " +
                     std::to_string(limits.max_tokens_per_step) + " (--max-tokens-per-step)");
    }
    entries.push_back(*std::move(entry));
  }
  resolver.Commit();  // the entries' region spans are valid from here on
  if (auto s = CheckOutputsApart(entries, *message, config.model); !s.ok()) return s;
  return entries;
}

absl::Status RefusePassOutsideStream(uint64_t pass_id) {
  return Invalid("batch.pass_id (" + std::to_string(pass_id) +
                 ") is set, but decode passes live on a StepStream: a unary Step may not name "
                 "one (docs/api.md#decode-passes)");
}

absl::Status DecodeStepRequestWithinLimits(const ServerConfig& config,
                                           const wire::MessageBytes& message,
                                           wire::StepRequestView* request) {
  wire::DecodeLimits limits;
  limits.max_entries = static_cast<size_t>(config.limits.max_entries_per_step);
  limits.max_token_ids = static_cast<size_t>(config.limits.max_tokens_per_entry);
  limits.max_id_bytes = kMaxSequenceIdBytes;
  limits.max_batch_rows = static_cast<size_t>(config.limits.max_tokens_per_step);
  return wire::DecodeStepRequest(message, request, limits);
}

absl::StatusOr<std::vector<StepEntry>> DecodeAndCheckStepRequest(const ServerConfig& config,
                                                                 const CacheSet& caches,
                                                                 const RegionAccess& regions,
                                                                 const Tenant& tenant,
                                                                 wire::MessageBytes* message,
                                                                 wire::StepRequestView* request) {
  if (auto s = DecodeStepRequestWithinLimits(config, *message, request); !s.ok()) return s;
  if (request->batch.present && request->batch.pass_id != 0) {
    return RefusePassOutsideStream(request->batch.pass_id);
  }
  return CheckStepRequest(*request, config, caches, regions, tenant, message);
}

}  // namespace flashkv::server
