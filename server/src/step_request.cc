#include "flashkv/server/step_request.h"

#include <utility>

#include "absl/container/flat_hash_map.h"
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

absl::StatusOr<StepEntry> CheckEntry(const wire::StepEntryView& view, size_t index,
                                     const ServerConfig& config, const CacheSet& caches) {
  const ModelShape& m = config.model;
  const std::string name = "entries[" + std::to_string(index) + "]";
  if (auto s = CheckSequenceId(view.sequence_id, name + ".sequence_id"); !s.ok()) return s;
  const TensorSpec q_spec{name + ".q",
                          {Rows("n"), DimSpec{"Hq", m.num_q_heads, "the model's q heads"},
                           DimSpec{"D", m.head_dim, "the model's head dim"}},
                          m.dtype,
                          "the model's dtype"};
  if (auto s = CheckTensor(view.q, q_spec); !s.ok()) return s.status();
  const int64_t n = view.q.shape[0];
  if (n < 1) return Invalid(name + ".q.shape[0] (n) = 0 must be >= 1");
  for (const auto& [tensor, field] : {std::pair{&view.k, ".k"}, std::pair{&view.v, ".v"}}) {
    const TensorSpec spec{name + field,
                          {DimSpec{"n", n, name + ".q.shape[0]"},
                           DimSpec{"Hkv", m.num_kv_heads, "the model's kv heads"},
                           DimSpec{"D", m.head_dim, "the model's head dim"}},
                          m.dtype,
                          "the model's dtype"};
    if (auto s = CheckTensor(*tensor, spec); !s.ok()) return s.status();
  }
  if (!view.token_ids.empty() && static_cast<int64_t>(view.token_ids.size()) != n) {
    return Invalid(name + ".token_ids has " + std::to_string(view.token_ids.size()) +
                   " ids; it must be empty or have one per new token (" + std::to_string(n) + ")");
  }
  const std::optional<int> device = caches.DeviceOf(view.sequence_id);
  if (!device.has_value()) {
    return absl::NotFoundError(name + ": sequence '" + view.sequence_id + "' does not exist");
  }
  StepEntry entry;
  entry.sequence_id = view.sequence_id;
  entry.num_tokens = static_cast<int>(n);
  entry.q = view.q.data;
  entry.k = view.k.data;
  entry.v = view.v.data;
  entry.token_ids = view.token_ids;
  entry.device = *device;
  return entry;
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

absl::StatusOr<std::vector<StepEntry>> CheckStepRequest(const wire::StepRequestView& request,
                                                        const ServerConfig& config,
                                                        const CacheSet& caches) {
  if (request.layer >= static_cast<uint32_t>(config.model.num_layers)) {
    return Invalid("layer (" + std::to_string(request.layer) + ") must be < the model's layers (" +
                   std::to_string(config.model.num_layers) + ")");
  }
  if (request.entries.empty()) return Invalid("entries is empty");
  if (request.entries.size() > static_cast<size_t>(config.max_entries_per_step)) {
    return Invalid("entries has " + std::to_string(request.entries.size()) + " items; at most " +
                   std::to_string(config.max_entries_per_step) + " (--max-entries-per-step)");
  }
  std::vector<StepEntry> entries;
  entries.reserve(request.entries.size());
  absl::flat_hash_map<std::string, size_t> first_index;
  for (size_t i = 0; i < request.entries.size(); ++i) {
    const wire::StepEntryView& view = request.entries[i];
    const auto [it, inserted] = first_index.emplace(view.sequence_id, i);
    if (!inserted) {
      return Invalid("entries[" + std::to_string(i) + "].sequence_id '" + view.sequence_id +
                     "' repeats entries[" + std::to_string(it->second) + "]");
    }
    absl::StatusOr<StepEntry> entry = CheckEntry(view, i, config, caches);
    if (!entry.ok()) return entry.status();
    entries.push_back(*std::move(entry));
  }
  return entries;
}

}  // namespace flashkv::server
