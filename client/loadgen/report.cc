#include "report.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace flashkv::loadgen {
namespace {

using nlohmann::json;

// Latency rows in report order, with their table labels.
const std::vector<std::pair<std::string, std::string>>& LatencyRows() {
  static const auto* rows = new std::vector<std::pair<std::string, std::string>>{
      {"Step", "Step (one layer)"},
      {"Step kernel", "  kernels (server)"},
      {"Step overhead", "  overhead"},
      {"Step server overhead", "  server overhead"},
      {"Step server queue", "    queue (to launch)"},
      {"Step server launch host", "    launch host work"},
      {"Step server completion", "    completion"},
      {"decode Step", "decode Step"},
      {"decode Step kernel", "  kernels (server)"},
      {"decode Step overhead", "  overhead"},
      {"decode Step server overhead", "  server overhead"},
      {"decode Step server queue", "    queue (to launch)"},
      {"decode Step server launch host", "    launch host work"},
      {"decode Step server completion", "    completion"},
      {"CreateSequence", "CreateSequence"},
      {"FreeSequence", "FreeSequence"},
      {"ttft", "time to first token"},
      {"tpot", "time per output token"},
      {"request", "request (end to end)"},
      {"queue", "queue wait"}};
  return *rows;
}

json HistogramJson(const LatencyHistogram& h) {
  json cdf = json::array();
  for (const auto& [ms, fraction] : h.Cdf()) cdf.push_back({ms, fraction});
  return {{"count", h.count()},
          {"mean_ms", h.MeanMs()},
          {"p50_ms", h.PercentileMs(0.5)},
          {"p90_ms", h.PercentileMs(0.9)},
          {"p99_ms", h.PercentileMs(0.99)},
          {"max_ms", h.MaxMs()},
          {"cdf", cdf}};
}

json StatsJson(const v1::ServerStats& s) {
  return {{"sequences", s.sequences()},
          {"blocks_total", s.blocks_total()},
          {"blocks_free", s.blocks_free()},
          {"blocks_cached", s.blocks_cached()},
          {"blocks_used", s.blocks_used()},
          {"prefix_hit_tokens", s.prefix_hit_tokens()},
          {"prefix_query_tokens", s.prefix_query_tokens()},
          {"swaps_out", s.swaps_out()},
          {"swaps_in", s.swaps_in()},
          {"steps", s.steps()},
          {"batches", s.batches()},
          {"batched_entries", s.batched_entries()},
          {"batched_tokens", s.batched_tokens()},
          {"max_batch_entries", s.max_batch_entries()}};
}

// Batch and prefix figures over the run: differences of the server's counters.
struct ServerDelta {
  uint64_t steps = 0, batches = 0, entries = 0, tokens = 0, hit = 0, query = 0;
  double MeanEntries() const { return batches ? double(entries) / batches : 0; }
  double MeanTokens() const { return batches ? double(tokens) / batches : 0; }
  double HitRate() const { return query ? double(hit) / query : 0; }
};

ServerDelta Delta(const v1::ServerStats& a, const v1::ServerStats& b) {
  return {b.steps() - a.steps(),
          b.batches() - a.batches(),
          b.batched_entries() - a.batched_entries(),
          b.batched_tokens() - a.batched_tokens(),
          b.prefix_hit_tokens() - a.prefix_hit_tokens(),
          b.prefix_query_tokens() - a.prefix_query_tokens()};
}

std::string Errors(const std::map<std::string, uint64_t>& errors) {
  std::vector<std::string> parts;
  for (const auto& [key, n] : errors) parts.push_back(absl::StrCat(key, " ", n));
  return parts.empty() ? "none" : absl::StrJoin(parts, ", ");
}

std::string VerifyLabel(double fraction) {
  if (fraction >= 1) return "all";
  if (fraction <= 0) return "none";
  return absl::StrFormat("%.3g", fraction);
}

}  // namespace

uint64_t Report::unexpected_errors() const {
  uint64_t n = 0;
  for (const auto& [key, count] : totals.unexpected_errors) n += count;
  return n;
}

json Report::ToJson() const {
  const RunStats& t = totals;
  const double d = std::max(duration_s, 1e-9);
  json latency = json::object();
  for (const auto& [key, label] : LatencyRows()) {
    auto it = t.latency.find(key);
    if (it != t.latency.end() && it->second.count() > 0) latency[key] = HistogramJson(it->second);
  }
  json timeline = json::array();
  for (size_t i = 0; i < t.timeline.size(); ++i) {
    const TimelineBucket& b = t.timeline[i];
    timeline.push_back({{"t", i},
                        {"prefill_tokens", b.prefill_tokens},
                        {"decode_tokens", b.decode_tokens},
                        {"steps", b.steps},
                        {"completed", b.completed},
                        {"errors", b.errors}});
  }
  const VerificationStats& v = t.verification;
  json server = json::object();
  if (server_before) server["before"] = StatsJson(*server_before);
  if (server_after) server["after"] = StatsJson(*server_after);
  if (server_before && server_after) {
    const ServerDelta delta = Delta(*server_before, *server_after);
    server["run"] = {{"steps", delta.steps},
                     {"batches", delta.batches},
                     {"mean_batch_entries", delta.MeanEntries()},
                     {"mean_batch_tokens", delta.MeanTokens()},
                     {"prefix_hit_rate", delta.HitRate()}};
  }
  if (!server_stats_status.ok()) server["error"] = server_stats_status.ToString();
  return {{"target", target},
          {"backend", backend},
          {"model",
           {{"num_layers", shape.num_layers},
            {"num_q_heads", shape.num_q_heads},
            {"num_kv_heads", shape.num_kv_heads},
            {"head_dim", shape.head_dim},
            {"dtype", DTypeName(shape.dtype)},
            {"page_size", shape.page_size},
            {"max_context", shape.max_context}}},
          {"config",
           {{"runners", config.runners},
            {"max_batch", config.max_batch},
            {"mode", config.rate > 0 ? "open" : "closed"},
            {"rate", config.rate},
            {"duration_s", absl::ToDoubleSeconds(config.duration)},
            {"requests", config.requests},
            {"prompt_len", config.prompt_len.spec()},
            {"output_len", config.output_len.spec()},
            {"prefill_chunk", config.prefill_chunk},
            {"max_pass_tokens", config.max_pass_tokens},
            {"pipeline_depth", config.pipeline_depth},
            {"data_plane", DataPlaneName(config.data_plane)},
            {"step_format", config.pass_steps      ? "pass"
                            : config.batched_steps ? "batch"
                                                   : "entries"},
            {"region_memory", region_memory},
            {"inputs", InputSourceName(config.inputs)},
            {"layer_gap_us", absl::ToDoubleMicroseconds(config.layer_gap)},
            {"prefix_pool", config.prefix_pool},
            {"prefix_len", config.prefix_len.spec()},
            {"prefix_fraction", config.prefix_fraction},
            {"verify", config.verify_fraction},
            {"seed", config.seed}}},
          {"duration_s", duration_s},
          {"client_cpu_s", client_cpu_s},
          {"requests",
           {{"started", t.requests_started},
            {"completed", t.requests_completed},
            {"aborted", t.requests_aborted},
            {"preempted", t.requests_preempted},
            {"rejected", t.requests_rejected},
            {"incomplete", t.requests_incomplete}}},
          {"tokens",
           {{"prompt", t.prompt_tokens},
            {"cached", t.cached_tokens},
            {"prefill", t.prefill_tokens},
            {"decode", t.decode_tokens}}},
          {"throughput",
           {{"prefill_tokens_per_s", t.prefill_tokens / d},
            {"decode_tokens_per_s", t.decode_tokens / d},
            {"steps_per_s", t.steps / d},
            {"passes_per_s", t.passes / d},
            {"requests_per_s", t.requests_completed / d}}},
          {"latency", latency},
          {"errors",
           {{"expected", t.expected_errors},
            {"unexpected", t.unexpected_errors},
            {"examples", t.error_examples}}},
          {"verification",
           {{"fraction", config.verify_fraction},
            {"atol", tolerance.atol},
            {"rtol", tolerance.rtol},
            {"steps", v.steps_seen},
            {"steps_checked", v.steps_checked},
            {"entries_checked", v.entries_checked},
            {"elements_checked", v.elements_checked},
            {"mismatched_entries", v.mismatched_entries},
            {"mismatched_elements", v.mismatched_elements},
            {"max_abs_error", v.max_abs_error},
            {"examples", v.examples}}},
          {"server", server},
          {"timeline", timeline},
          {"clean", clean()}};
}

void Report::PrintTable(std::ostream& out) const {
  const RunStats& t = totals;
  const double d = std::max(duration_s, 1e-9);
  out << absl::StrFormat(
      "flashkv-loadgen: %.1f s against %s (%s; %d layers, %d/%d heads, head dim %d, %s, page %d)\n",
      duration_s, target, backend, shape.num_layers, shape.num_q_heads, shape.num_kv_heads,
      shape.head_dim, DTypeName(shape.dtype), shape.page_size);
  out << absl::StrFormat(
      "%s loop%s, %d runners x %d sequences; prompt %s, output %s; chunk %d, pipeline %d; "
      "data plane %s%s%s%s%s\n",
      config.rate > 0 ? "open" : "closed",
      config.rate > 0 ? absl::StrFormat(" at %.3g req/s", config.rate) : "", config.runners,
      config.max_batch, config.prompt_len.spec(), config.output_len.spec(), config.prefill_chunk,
      config.pipeline_depth, DataPlaneName(config.data_plane),
      region_memory.empty() ? "" : absl::StrCat(" (", region_memory, " memory)"),
      config.batched_steps ? ", batched steps" : "",
      config.inputs == InputSource::kDevice ? ", inputs made on the device" : "",
      config.layer_gap > absl::ZeroDuration()
          ? absl::StrFormat(", %.0f us between layers", absl::ToDoubleMicroseconds(config.layer_gap))
          : "");
  out << absl::StrFormat(
      "requests      %d started, %d completed, %d aborted, %d preempted, %d rejected, %d "
      "incomplete\n",
      t.requests_started, t.requests_completed, t.requests_aborted, t.requests_preempted,
      t.requests_rejected, t.requests_incomplete);
  out << absl::StrFormat(
      "throughput    prefill %.1f tok/s, decode %.1f tok/s, %.1f steps/s, %.2f passes/s, "
      "%.2f req/s\n",
      t.prefill_tokens / d, t.decode_tokens / d, t.steps / d, t.passes / d,
      t.requests_completed / d);
  out << absl::StrFormat(
      "client        %.1f CPU seconds (%.2f cores) generating, sending and "
      "verifying\n",
      client_cpu_s, client_cpu_s / d);
  out << absl::StrFormat(
      "tokens        %d prompt (%d from the prefix cache), %d prefilled, %d decoded\n",
      t.prompt_tokens, t.cached_tokens, t.prefill_tokens, t.decode_tokens);
  out << absl::StrFormat("%-24s %9s %9s %9s %9s %9s %9s\n", "latency (ms)", "count", "p50", "p90",
                         "p99", "max", "mean");
  // Overhead rows: the round trip (or the server's time) minus the step's kernels, per step.
  for (const auto& [key, label] : LatencyRows()) {
    auto it = t.latency.find(key);
    if (it == t.latency.end() || it->second.count() == 0) continue;
    const LatencyHistogram& h = it->second;
    out << absl::StrFormat("  %-22s %9d %9.3f %9.3f %9.3f %9.3f %9.3f\n", label, h.count(),
                           h.PercentileMs(0.5), h.PercentileMs(0.9), h.PercentileMs(0.99),
                           h.MaxMs(), h.MeanMs());
  }
  out << "errors        unexpected: " << Errors(t.unexpected_errors)
      << "; expected: " << Errors(t.expected_errors) << "\n";
  for (const std::string& e : t.error_examples) out << "  " << e << "\n";
  const VerificationStats& v = t.verification;
  out << absl::StrFormat(
      "verification  %d of %d steps checked (verify=%s), %d entries, %d elements; %d mismatched "
      "entries; max |error| %.3g (atol %.1e, rtol %.1e)\n",
      v.steps_checked, v.steps_seen, VerifyLabel(config.verify_fraction), v.entries_checked,
      v.elements_checked, v.mismatched_entries, v.max_abs_error, tolerance.atol, tolerance.rtol);
  for (const std::string& e : v.examples) out << "  MISMATCH " << e << "\n";
  if (server_before && server_after) {
    const ServerDelta delta = Delta(*server_before, *server_after);
    const v1::ServerStats& a = *server_after;
    out << absl::StrFormat(
        "server        %d steps in %d batches: mean %.2f entries / %.1f tokens per batch, max %d "
        "entries; prefix hits %.1f%%\n",
        delta.steps, delta.batches, delta.MeanEntries(), delta.MeanTokens(), a.max_batch_entries(),
        100 * delta.HitRate());
    out << absl::StrFormat(
        "server KV     %d blocks: %d used, %d free (%d cached); %d sequences; swaps %d out, %d "
        "in\n",
        a.blocks_total(), a.blocks_used(), a.blocks_free(), a.blocks_cached(), a.sequences(),
        a.swaps_out(), a.swaps_in());
  } else {
    out << "server        stats unavailable: " << server_stats_status.ToString() << "\n";
  }
  out << (clean() ? "RESULT        clean: every checked output matched, no unexpected error\n"
                  : "RESULT        NOT CLEAN: see mismatches and unexpected errors above\n");
}

}  // namespace flashkv::loadgen
