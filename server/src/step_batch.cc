#include "flashkv/server/step_batch.h"

#include <algorithm>
#include <string>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "flashkv/server/step_request.h"
#include "flashkv/server/tensor_checks.h"

namespace flashkv::server {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// Entry i's new tokens, and the batch's total; every count within the limits.
absl::StatusOr<std::vector<int>> TokenCounts(const wire::StepBatchView& batch,
                                             const RequestLimits& limits) {
  const size_t n = batch.sequence_ids.size();
  if (n == 0) return Invalid("batch.sequence_ids is empty");
  if (n > static_cast<size_t>(limits.max_entries_per_step)) {
    return Invalid(absl::StrCat("batch.sequence_ids has ", n, " ids; at most ",
                                limits.max_entries_per_step, " (--max-entries-per-step)"));
  }
  if (!batch.num_tokens.empty() && batch.num_tokens.size() != n) {
    return Invalid(absl::StrCat("batch.num_tokens has ", batch.num_tokens.size(),
                                " values; it must be empty (one token per sequence) or have one "
                                "per sequence id (",
                                n, ")"));
  }
  std::vector<int> counts(n, 1);
  int64_t total = 0;
  for (size_t i = 0; i < batch.num_tokens.size(); ++i) {
    const int64_t t = batch.num_tokens[i];
    if (t < 1) return Invalid(absl::StrCat("batch.num_tokens[", i, "] = ", t, " must be >= 1"));
    if (t > limits.max_tokens_per_entry) {
      return Invalid(absl::StrCat("batch.num_tokens[", i, "] = ", t,
                                  " exceeds the server's limit of ", limits.max_tokens_per_entry,
                                  " tokens per entry (--max-tokens-per-entry)"));
    }
    counts[i] = static_cast<int>(t);
  }
  for (int c : counts) total += c;
  if (total > limits.max_tokens_per_step) {
    return Invalid(absl::StrCat("the batch has ", total, " new tokens; a step may have at most ",
                                limits.max_tokens_per_step, " (--max-tokens-per-step)"));
  }
  if (!batch.token_ids.empty() && static_cast<int64_t>(batch.token_ids.size()) != total) {
    return Invalid(absl::StrCat("batch.token_ids has ", batch.token_ids.size(),
                                " ids; it must be empty or have one per new token (", total, ")"));
  }
  return counts;
}

// What T is, in the errors: a batch's own new tokens, or its pass's.
constexpr const char* kBatchRows = "the batch's new tokens (sum of batch.num_tokens)";
constexpr const char* kPassRows = "the pass's new tokens (sum of its layer-0 step's num_tokens)";

TensorSpec RowsSpec(const char* name, int64_t rows, const char* rows_source,
                    const char* heads_name, int heads, const char* heads_source,
                    const ModelShape& m) {
  return TensorSpec{
      name,
      {DimSpec{"T", rows, rows_source},
       DimSpec{heads_name, heads, heads_source}, DimSpec{"D", m.head_dim, "the model's head dim"}},
      m.dtype,
      "the model's dtype"};
}

// The batch's q, k and v: resolved from their regions and checked against [T, H, D].
absl::Status CheckTensors(wire::StepBatchView& batch, int64_t total, const char* rows_source,
                          const ModelShape& m, RegionTensorResolver* resolver_ptr,
                          std::optional<RegionBytes> device[3]) {
  // Before a region is resolved: the rows a region tensor names are not bounded by the message.
  for (const auto& [tensor, name] : {std::pair{&batch.q, "batch.q"}, std::pair{&batch.k, "batch.k"},
                                     std::pair{&batch.v, "batch.v"}}) {
    if (!tensor->shape.empty() && tensor->shape[0] != total) {
      return Invalid(absl::StrCat(name, ".shape[0] (T) = ", tensor->shape[0], " must equal ",
                                  rows_source, ": ", total));
    }
  }
  RegionTensorResolver& resolver = *resolver_ptr;
  if (auto s = resolver.Resolve({{&batch.q, "batch.q", &device[0]},
                                 {&batch.k, "batch.k", &device[1]},
                                 {&batch.v, "batch.v", &device[2]}});
      !s.ok()) {
    return s;
  }
  resolver.Commit();
  const std::pair<const wire::TensorView*, TensorSpec> checks[] = {
      {&batch.q,
       RowsSpec("batch.q", total, rows_source, "Hq", m.num_q_heads, "the model's q heads", m)},
      {&batch.k,
       RowsSpec("batch.k", total, rows_source, "Hkv", m.num_kv_heads, "the model's kv heads", m)},
      {&batch.v,
       RowsSpec("batch.v", total, rows_source, "Hkv", m.num_kv_heads, "the model's kv heads", m)}};
  for (const auto& [tensor, spec] : checks) {
    if (auto s = CheckTensor(*tensor, spec); !s.ok()) return s.status();
  }
  return absl::OkStatus();
}

// The output may not share bytes with an input (it is written while later launches of a long
// step still read inputs). Inputs may overlap each other.
absl::Status CheckOutputApart(const RegionBytes& out, const wire::StepBatchView& batch,
                              const std::optional<RegionBytes> device[3],
                              const wire::MessageBytes& message) {
  const uint8_t* out_end = out.data + out.size;
  const std::tuple<const wire::TensorView*, const char*> inputs[] = {
      {&batch.q, "batch.q"}, {&batch.k, "batch.k"}, {&batch.v, "batch.v"}};
  for (int i = 0; i < 3; ++i) {
    const auto& [tensor, name] = inputs[i];
    const uint8_t* p = device[i] ? device[i]->data : message.Contiguous(tensor->data);
    if (p == nullptr || tensor->data.size == 0) continue;  // bytes in the message
    if (p < out_end && out.data < p + tensor->data.size) {
      return Invalid(absl::StrCat("batch.out overlaps ", name,
                                  " in its region; the output must not share bytes with the "
                                  "step's inputs"));
    }
  }
  return absl::OkStatus();
}

// CUDA regions must lie on the device that computes every entry of the batch.
absl::Status CheckPlacement(const std::vector<int>& devices, const CacheSet& caches,
                            const wire::StepBatchView& batch,
                            const std::optional<RegionBytes> device[3],
                            const std::optional<RegionBytes>& out) {
  const std::tuple<const std::optional<RegionBytes>*, uint64_t, const char*> regions[] = {
      {&device[0], batch.q.region.region_id, "batch.q.region"},
      {&device[1], batch.k.region.region_id, "batch.k.region"},
      {&device[2], batch.v.region.region_id, "batch.v.region"},
      {&out, batch.out.region_id, "batch.out"}};
  for (const auto& [bytes, region_id, field] : regions) {
    if (!bytes->has_value() || (*bytes)->region->device() < 0) continue;
    for (int d : devices) {
      const int compute = caches.cuda() ? caches.device_id(d) : kCpuCompute;
      if (auto s = CheckRegionPlacement(field, region_id, (*bytes)->region->device(), compute,
                                        "a sequence's KV cache");
          !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

// Rows [row, row + n) of a batch tensor of `row_bytes` per row.
wire::Span RowSpan(const wire::Span& whole, int64_t row, int n, size_t row_bytes) {
  return wire::Span{whole.offset + static_cast<size_t>(row) * row_bytes,
                    static_cast<size_t>(n) * row_bytes};
}
std::optional<RegionBytes> RowBytes(const std::optional<RegionBytes>& whole, int64_t row, int n,
                                    size_t row_bytes) {
  if (!whole) return std::nullopt;
  return RegionBytes{whole->region, whole->data + static_cast<size_t>(row) * row_bytes,
                     static_cast<uint64_t>(n) * row_bytes};
}

// A batch's tensors once checked: q, k and v in CUDA regions (else in the message, possibly
// through host regions), the output region, and the row sizes.
struct BatchTensors {
  std::optional<RegionBytes> device[3];
  std::optional<RegionBytes> out;
  size_t q_row = 0;
  size_t kv_row = 0;
};

// Resolves and checks q, k, v ([total, H, D]) and out, and that CUDA regions lie on `devices`.
absl::Status CheckBatchTensors(wire::StepBatchView& batch, int64_t total, const char* rows_source,
                               const std::vector<int>& devices, const ModelShape& m,
                               const CacheSet& caches, const RegionAccess& regions,
                               wire::MessageBytes* message, BatchTensors* tensors) {
  RegionTensorResolver resolver(regions, message);
  if (auto s = CheckTensors(batch, total, rows_source, m, &resolver, tensors->device); !s.ok()) {
    return s;
  }
  const size_t elem = static_cast<size_t>(DTypeSize(m.dtype));
  tensors->q_row = static_cast<size_t>(m.num_q_heads) * m.head_dim * elem;
  tensors->kv_row = static_cast<size_t>(m.num_kv_heads) * m.head_dim * elem;
  absl::StatusOr<std::optional<RegionBytes>> out = resolver.ResolveOutput(
      batch.out, static_cast<uint64_t>(total) * tensors->q_row, elem, "batch.out");
  if (!out.ok()) return out.status();
  tensors->out = *std::move(out);
  if (tensors->out) {
    if (auto s = CheckOutputApart(*tensors->out, batch, tensors->device, *message); !s.ok()) {
      return s;
    }
  }
  return CheckPlacement(devices, caches, batch, tensors->device, tensors->out);
}

}  // namespace

absl::StatusOr<StepEntry> CheckPassLayerBatch(wire::StepBatchView& batch, int64_t rows,
                                              int device, const ServerConfig& config,
                                              const CacheSet& caches, const RegionAccess& regions,
                                              wire::MessageBytes* message) {
  const uint64_t id = batch.pass_id;
  for (const auto& [count, field] :
       {std::pair{batch.sequence_ids.size(), "batch.sequence_ids"},
        std::pair{batch.num_tokens.size(), "batch.num_tokens"},
        std::pair{batch.token_ids.size(), "batch.token_ids"}}) {
    if (count != 0) {
      return Invalid(absl::StrCat(field, " has ", count, " values; a step of pass ", id,
                                  " after layer 0 must leave it empty (the pass's layer-0 step "
                                  "named the sequences and their tokens)"));
    }
  }
  BatchTensors tensors;
  if (auto s = CheckBatchTensors(batch, rows, kPassRows, {device}, config.model, caches, regions,
                                 message, &tensors);
      !s.ok()) {
    return s;
  }
  StepEntry e;
  e.num_tokens = static_cast<int>(rows);
  e.device = device;
  e.q = batch.q.data;
  e.k = batch.k.data;
  e.v = batch.v.data;
  e.q_device = tensors.device[0];
  e.k_device = tensors.device[1];
  e.v_device = tensors.device[2];
  e.out_region = tensors.out;
  if (e.out_region) e.out_slice = batch.out;
  return e;
}

absl::StatusOr<std::vector<StepEntry>> CheckStepBatch(
    wire::StepBatchView& batch, const ServerConfig& config, const CacheSet& caches,
    const RegionAccess& regions, const Tenant& tenant, wire::MessageBytes* message) {
  const ModelShape& m = config.model;
  absl::StatusOr<std::vector<int>> counts = TokenCounts(batch, config.limits);
  if (!counts.ok()) return counts.status();
  const size_t n = counts->size();
  int64_t total = 0;
  for (int c : *counts) total += c;

  // Ids: well formed, held by the tenant, distinct (one directory lookup for the batch, which
  // also finds a repeated id).
  std::vector<std::string> scoped(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& id = batch.sequence_ids[i];
    if (!CheckSequenceId(id, "").ok()) {
      return CheckSequenceId(id, absl::StrCat("batch.sequence_ids[", i, "]"));
    }
    scoped[i] = ScopedSequenceId(tenant, id);
  }
  std::vector<int> device_of;
  const std::optional<std::pair<size_t, size_t>> repeat = caches.DevicesOf(scoped, &device_of);
  std::vector<int> devices;  // distinct, for the placement checks
  for (size_t i = 0; i < n; ++i) {
    if (device_of[i] < 0) {
      return absl::NotFoundError(absl::StrCat("batch.sequence_ids[", i, "]: sequence '",
                                              batch.sequence_ids[i], "' does not exist"));
    }
    if (repeat.has_value() && repeat->second == i) {
      return Invalid(absl::StrCat("batch.sequence_ids[", i, "] '", batch.sequence_ids[i],
                                  "' repeats [", repeat->first, "]"));
    }
    if (std::find(devices.begin(), devices.end(), device_of[i]) == devices.end()) {
      devices.push_back(device_of[i]);
    }
  }

  BatchTensors tensors;
  if (auto s = CheckBatchTensors(batch, total, kBatchRows, devices, config.model, caches, regions,
                                 message, &tensors);
      !s.ok()) {
    return s;
  }
  const std::optional<RegionBytes>* device = tensors.device;
  const std::optional<RegionBytes>* out = &tensors.out;
  const size_t q_row = tensors.q_row, kv_row = tensors.kv_row;

  std::vector<StepEntry> entries(n);
  int64_t row = 0;
  for (size_t i = 0; i < n; ++i) {
    StepEntry& e = entries[i];
    const int t = (*counts)[i];
    e.sequence_id = std::move(scoped[i]);
    e.num_tokens = t;
    e.device = device_of[i];
    e.q = RowSpan(batch.q.data, row, t, q_row);
    e.k = RowSpan(batch.k.data, row, t, kv_row);
    e.v = RowSpan(batch.v.data, row, t, kv_row);
    e.q_device = RowBytes(device[0], row, t, q_row);
    e.k_device = RowBytes(device[1], row, t, kv_row);
    e.v_device = RowBytes(device[2], row, t, kv_row);
    e.out_region = RowBytes(*out, row, t, q_row);
    if (e.out_region) {
      e.out_slice = wire::RegionSliceView{true, batch.out.region_id,
                                          batch.out.offset + static_cast<uint64_t>(row) * q_row};
    }
    if (!batch.token_ids.empty()) {
      e.token_ids.assign(batch.token_ids.begin() + row, batch.token_ids.begin() + row + t);
    }
    row += t;
  }
  return entries;
}

}  // namespace flashkv::server
