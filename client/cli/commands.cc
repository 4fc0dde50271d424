#include "commands.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "flashkv/client/status.h"
#include "nlohmann/json.hpp"
#include "npy.h"
#include "verify.h"

namespace flashkv::cli {
namespace {

using nlohmann::json;

// A failed call: code and message to `err`, and as {"error": ...} on `out` in JSON mode so a
// script reading stdout always gets an object.
int Fail(const absl::Status& status, int exit_code, const OutputOptions& output, std::ostream& out,
         std::ostream& err) {
  err << "flashkv: " << absl::StatusCodeToString(status.code()) << ": " << status.message() << "\n";
  if (output.json) {
    out << json{{"error",
                 {{"code", absl::StatusCodeToString(status.code())},
                  {"message", std::string(status.message())}}}}
               .dump(2)
        << "\n";
  }
  return exit_code;
}

// Two aligned columns.
void PrintRows(const std::vector<std::pair<std::string, std::string>>& rows, std::ostream& out) {
  size_t width = 0;
  for (const auto& row : rows) width = std::max(width, row.first.size());
  for (const auto& [key, value] : rows) {
    out << key << std::string(width + 2 - key.size(), ' ') << value << "\n";
  }
}

std::string Percent(double part, double whole) {
  return whole > 0 ? absl::StrFormat("%.1f%%", 100.0 * part / whole) : "-";
}

const char* DTypeLabel(int proto_dtype) {
  absl::StatusOr<DType> dtype = FromProtoDType(proto_dtype, "dtype");
  return dtype.ok() ? DTypeName(*dtype) : "unspecified";
}

}  // namespace

int RunHealth(Client& client, const HealthCommand& command, const OutputOptions& output,
              std::ostream& out, std::ostream& err) {
  const absl::Time deadline = absl::Now() + absl::Seconds(command.wait_s);
  absl::StatusOr<HealthState> state;
  // Poll: a starting server refuses connections, then answers NOT_SERVING until warmed up.
  while (true) {
    CallOptions options;
    options.timeout = std::clamp(deadline - absl::Now(), absl::Seconds(1), absl::Seconds(10));
    state = client.CheckHealth(command.service, options);
    if ((state.ok() && *state == HealthState::kServing) || absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  if (!state.ok()) return Fail(state.status(), kExitRpcFailed, output, out, err);
  const std::string name(HealthStateName(*state));
  if (output.json) {
    out << json{{"service", command.service}, {"status", name}}.dump(2) << "\n";
  } else {
    out << (command.service.empty() ? "server" : command.service) << ": " << name << "\n";
  }
  return *state == HealthState::kServing ? kExitOk : kExitNotServing;
}

int RunInfo(Client& client, const OutputOptions& output, std::ostream& out, std::ostream& err) {
  absl::StatusOr<v1::CacheInfo> info = client.GetCacheInfo();
  if (!info.ok()) return Fail(info.status(), kExitRpcFailed, output, out, err);
  const uint64_t used = info->blocks_total() - std::min(info->blocks_total(), info->blocks_free());
  const absl::StatusOr<DType> dtype = FromProtoDType(info->dtype(), "dtype");
  // One block holds page_size tokens of K and V for every layer.
  const uint64_t block_bytes = dtype.ok()
                                   ? 2ull * info->num_layers() * info->num_kv_heads() *
                                         info->page_size() * info->head_dim() * DTypeSize(*dtype)
                                   : 0;
  if (output.json) {
    out << json{{"num_layers", info->num_layers()},
                {"num_q_heads", info->num_q_heads()},
                {"num_kv_heads", info->num_kv_heads()},
                {"head_dim", info->head_dim()},
                {"dtype", DTypeLabel(info->dtype())},
                {"page_size", info->page_size()},
                {"max_context", info->max_context()},
                {"backend", info->backend()},
                {"num_devices", info->num_devices()},
                {"blocks_total", info->blocks_total()},
                {"blocks_free", info->blocks_free()},
                {"blocks_cached", info->blocks_cached()},
                {"blocks_used", used},
                {"block_bytes", block_bytes},
                {"token_capacity", info->blocks_total() * info->page_size()}}
               .dump(2)
        << "\n";
    return kExitOk;
  }
  PrintRows(
      {{"model", absl::StrFormat("%u layers, %u q heads, %u kv heads, head dim %u, %s",
                                 info->num_layers(), info->num_q_heads(), info->num_kv_heads(),
                                 info->head_dim(), DTypeLabel(info->dtype()))},
       {"backend", absl::StrCat(info->backend(), " (", info->num_devices(), " device",
                                info->num_devices() == 1 ? "" : "s", ")")},
       {"page size", absl::StrCat(info->page_size(), " tokens")},
       {"max context", absl::StrCat(info->max_context(), " tokens")},
       {"blocks", absl::StrFormat("%u total, %u used (%s), %u free, of which %u hold "
                                  "cached prefixes",
                                  info->blocks_total(), used, Percent(used, info->blocks_total()),
                                  info->blocks_free(), info->blocks_cached())},
       {"capacity",
        absl::StrFormat("%u tokens, %.1f MiB of KV", info->blocks_total() * info->page_size(),
                        block_bytes * double(info->blocks_total()) / (1 << 20))}},
      out);
  return kExitOk;
}

int RunStats(Client& client, const OutputOptions& output, std::ostream& out, std::ostream& err) {
  absl::StatusOr<v1::ServerStats> s = client.GetStats();
  if (!s.ok()) return Fail(s.status(), kExitRpcFailed, output, out, err);
  const double mean_entries = s->batches() ? double(s->batched_entries()) / s->batches() : 0;
  const double mean_tokens = s->batches() ? double(s->batched_tokens()) / s->batches() : 0;
  const double hit_rate =
      s->prefix_query_tokens() ? double(s->prefix_hit_tokens()) / s->prefix_query_tokens() : 0;
  if (output.json) {
    json devices = json::array();
    for (const v1::DeviceStats& d : s->devices()) {
      devices.push_back({{"device", d.device()},
                         {"sequences", d.sequences()},
                         {"blocks_total", d.blocks_total()},
                         {"blocks_used", d.blocks_used()}});
    }
    out << json{{"sequences", s->sequences()},
                {"blocks_total", s->blocks_total()},
                {"blocks_free", s->blocks_free()},
                {"blocks_cached", s->blocks_cached()},
                {"blocks_used", s->blocks_used()},
                {"prefix_hit_tokens", s->prefix_hit_tokens()},
                {"prefix_query_tokens", s->prefix_query_tokens()},
                {"prefix_hit_rate", hit_rate},
                {"swaps_out", s->swaps_out()},
                {"swaps_in", s->swaps_in()},
                {"swap_bytes_out", s->swap_bytes_out()},
                {"swap_bytes_in", s->swap_bytes_in()},
                {"steps", s->steps()},
                {"batches", s->batches()},
                {"batched_entries", s->batched_entries()},
                {"batched_tokens", s->batched_tokens()},
                {"max_batch_entries", s->max_batch_entries()},
                {"mean_batch_entries", mean_entries},
                {"mean_batch_tokens", mean_tokens},
                {"devices", devices}}
               .dump(2)
        << "\n";
    return kExitOk;
  }
  std::vector<std::pair<std::string, std::string>> rows = {
      {"sequences", absl::StrCat(s->sequences())},
      {"blocks", absl::StrFormat("%u total, %u used (%s), %u free, %u cached", s->blocks_total(),
                                 s->blocks_used(), Percent(s->blocks_used(), s->blocks_total()),
                                 s->blocks_free(), s->blocks_cached())},
      {"prefix cache", absl::StrFormat("%u of %u prompt tokens hit (%s)", s->prefix_hit_tokens(),
                                       s->prefix_query_tokens(),
                                       Percent(s->prefix_hit_tokens(), s->prefix_query_tokens()))},
      {"swaps", absl::StrFormat("%u out (%.1f MiB), %u in (%.1f MiB)", s->swaps_out(),
                                s->swap_bytes_out() / double(1 << 20), s->swaps_in(),
                                s->swap_bytes_in() / double(1 << 20))},
      {"steps", absl::StrCat(s->steps())},
      {"batches",
       absl::StrFormat("%u, mean %.2f entries / %.1f tokens, max %u entries", s->batches(),
                       mean_entries, mean_tokens, s->max_batch_entries())}};
  for (const v1::DeviceStats& d : s->devices()) {
    rows.push_back({absl::StrCat("device ", d.device()),
                    absl::StrFormat("%u sequences, %u of %u blocks used", d.sequences(),
                                    d.blocks_used(), d.blocks_total())});
  }
  PrintRows(rows, out);
  return kExitOk;
}

namespace {

struct AttentionInputs {
  HostTensor q, k, v;
};

absl::StatusOr<AttentionInputs> MakeInputs(const AttentionCommand& c, DType dtype) {
  const Shape q_shape = {c.batch, c.seqlen_q, c.heads_q, c.head_dim};
  const Shape kv_shape = {c.batch, c.seqlen_kv, c.heads_kv, c.head_dim};
  const int files = !c.q_file.empty() + !c.k_file.empty() + !c.v_file.empty();
  if (files != 0 && files != 3) {
    return absl::InvalidArgumentError("--q, --k and --v must be given together");
  }
  AttentionInputs inputs;
  if (files == 3) {
    absl::StatusOr<HostTensor> q = ReadTensorFile(c.q_file, dtype, q_shape);
    if (!q.ok()) return q.status();
    absl::StatusOr<HostTensor> k = ReadTensorFile(c.k_file, dtype, kv_shape);
    if (!k.ok()) return k.status();
    absl::StatusOr<HostTensor> v = ReadTensorFile(c.v_file, dtype, kv_shape);
    if (!v.ok()) return v.status();
    return AttentionInputs{*std::move(q), *std::move(k), *std::move(v)};
  }
  // Fresh random values in [-1, 1): never zeros, which would hide indexing errors.
  std::mt19937_64 rng(c.seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  auto random = [&](const Shape& shape) {
    std::vector<float> values(static_cast<size_t>(NumElements(shape)));
    for (float& x : values) x = dist(rng);
    return *HostTensor::FromFloats(dtype, shape, values);
  };
  inputs.q = random(q_shape);
  inputs.k = random(kv_shape);
  inputs.v = random(kv_shape);
  return inputs;
}

json ComparisonJson(const tools::Comparison& c, tools::Tolerance t) {
  json j = {{"elements", c.elements},
            {"mismatches", c.mismatches},
            {"max_abs_error", c.max_abs_error},
            {"atol", t.atol},
            {"rtol", t.rtol}};
  if (c.first_index) {
    j["first_mismatch"] = {{"index", *c.first_index}, {"got", c.first_got}, {"want", c.first_want}};
  }
  return j;
}

}  // namespace

int RunAttention(Client& client, const AttentionCommand& c, const OutputOptions& output,
                 std::ostream& out, std::ostream& err) {
  const std::optional<DType> dtype = ParseDType(c.dtype);
  if (!dtype) {
    return Fail(absl::InvalidArgumentError("--dtype must be fp16, bf16 or fp32"), kExitUsage,
                output, out, err);
  }
  if (c.repeat < 1) {
    return Fail(absl::InvalidArgumentError("--repeat must be >= 1"), kExitUsage, output, out, err);
  }
  absl::StatusOr<AttentionInputs> inputs = MakeInputs(c, *dtype);
  if (!inputs.ok()) return Fail(inputs.status(), kExitUsage, output, out, err);

  AttentionInput request;
  request.q = inputs->q.view();
  request.k = inputs->k.view();
  request.v = inputs->v.view();
  request.causal = c.causal;
  request.softmax_scale = c.softmax_scale;
  request.return_lse = c.return_lse;
  absl::StatusOr<AttentionResult> result;
  std::vector<double> server_ms;
  for (int i = 0; i < c.repeat; ++i) {
    const absl::Time start = absl::Now();
    result = client.Attention(request);
    server_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
    if (!result.ok()) return Fail(result.status(), kExitRpcFailed, output, out, err);
  }
  std::sort(server_ms.begin(), server_ms.end());

  HostTensor lse;
  const absl::Time cpu_start = absl::Now();
  absl::StatusOr<HostTensor> want = tools::CpuAttention(
      request.q, request.k, request.v, c.causal, c.softmax_scale, c.return_lse ? &lse : nullptr);
  const double cpu_ms = absl::ToDoubleMilliseconds(absl::Now() - cpu_start);
  // The server accepted the call, so a local refusal is this tool's limitation (e.g. a head dim
  // not compiled into the CPU implementation): say so rather than claim a mismatch.
  if (!want.ok()) {
    return Fail(absl::Status(want.status().code(),
                             absl::StrCat("local CPU implementation: ", want.status().message())),
                kExitUsage, output, out, err);
  }
  tools::Tolerance tolerance = tools::DefaultTolerance(*dtype);
  if (c.atol) tolerance.atol = *c.atol;
  if (c.rtol) tolerance.rtol = *c.rtol;
  const tools::Comparison comparison = tools::Compare(result->out.view(), want->view(), tolerance);
  std::optional<tools::Comparison> lse_comparison;
  // LSE is float32 on both sides; scores differ only by accumulation order and input rounding.
  const tools::Tolerance lse_tolerance{1e-3, 1e-4};
  if (c.return_lse) {
    lse_comparison = tools::Compare(result->lse->view(), lse.view(), lse_tolerance);
  }
  const bool match = comparison.ok() && (!lse_comparison || lse_comparison->ok());
  if (!c.save_out.empty()) {
    if (absl::Status s = WriteTensorFile(c.save_out, result->out); !s.ok()) {
      return Fail(s, kExitUsage, output, out, err);
    }
  }

  if (output.json) {
    json j = {
        {"dtype", DTypeName(*dtype)},
        {"q_shape", std::vector<int64_t>(request.q.shape().begin(), request.q.shape().end())},
        {"kv_shape", std::vector<int64_t>(request.k.shape().begin(), request.k.shape().end())},
        {"causal", c.causal},
        {"calls", c.repeat},
        {"server_ms_min", server_ms.front()},
        {"server_ms_p50", server_ms[server_ms.size() / 2]},
        {"cpu_ms", cpu_ms},
        {"out", ComparisonJson(comparison, tolerance)},
        {"match", match}};
    if (lse_comparison) j["lse"] = ComparisonJson(*lse_comparison, lse_tolerance);
    out << j.dump(2) << "\n";
  } else {
    out << absl::StrFormat(
        "attention %s q %s kv %s%s: server %.3f ms (p50 of %d), local CPU %.3f ms\n",
        DTypeName(*dtype), ShapeString(request.q.shape()), ShapeString(request.k.shape()),
        c.causal ? " causal" : "", server_ms[server_ms.size() / 2], c.repeat, cpu_ms);
    out << absl::StrFormat(
        "out: %d of %d elements beyond atol %.1e + rtol %.1e, max |error| %.3e\n",
        comparison.mismatches, comparison.elements, tolerance.atol, tolerance.rtol,
        comparison.max_abs_error);
    if (lse_comparison) {
      out << absl::StrFormat("lse: %d of %d elements beyond tolerance, max |error| %.3e\n",
                             lse_comparison->mismatches, lse_comparison->elements,
                             lse_comparison->max_abs_error);
    }
    out << (match ? "MATCH" : "MISMATCH") << "\n";
  }
  if (!match && comparison.first_index) {
    err << absl::StrFormat("flashkv: out[%d] = %g, CPU implementation %g\n",
                           *comparison.first_index, comparison.first_got, comparison.first_want);
  }
  return match ? kExitOk : kExitMismatch;
}

}  // namespace flashkv::cli
