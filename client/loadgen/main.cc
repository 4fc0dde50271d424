// flashkv-loadgen: simulated model runners against a flashkv server, every checked answer
// recomputed locally. Flags are parsed here into LoadgenConfig; see docs/client.md.

#include <unistd.h>

#include <csignal>
#include <fstream>
#include <iostream>
#include <random>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "connection_flags.h"
#include "flashkv/cpu_backend.h"
#include "loadgen.h"

namespace {

constexpr int kExitClean = 0;
constexpr int kExitCannotRun = 1;
constexpr int kExitUsage = 2;
constexpr int kExitMismatch = 3;
constexpr int kExitUnexpectedErrors = 4;

constexpr char kFooter[] = R"(Exit codes:
  0  clean: every checked output matched and no unexpected error
  1  could not run (server unreachable, unusable model, report not writable)
  2  usage error
  3  at least one output differed from the CPU recomputation
  4  unexpected RPC errors (and no mismatch))";

std::atomic<bool> g_interrupted{false};
void OnSignal(int) { g_interrupted.store(true); }

absl::StatusOr<double> ParseVerify(const std::string& text) {
  if (text == "all") return 1.0;
  if (text == "none" || text == "off") return 0.0;
  double f;
  if (absl::SimpleAtod(text, &f) && f >= 0 && f <= 1) return f;
  return absl::InvalidArgumentError("--verify must be all, none or a fraction in [0, 1]");
}

absl::StatusOr<std::set<absl::StatusCode>> ParseCodes(const std::vector<std::string>& names) {
  std::set<absl::StatusCode> codes;
  for (const std::string& name : names) {
    bool found = false;
    for (int c = 1; c <= 16; ++c) {
      const auto code = static_cast<absl::StatusCode>(c);
      if (absl::StatusCodeToString(code) == absl::AsciiStrToUpper(name)) {
        codes.insert(code);
        found = true;
      }
    }
    if (!found) return absl::InvalidArgumentError("--expect: unknown status code '" + name + "'");
  }
  return codes;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace flashkv;
  CLI::App app(
      "flashkv-loadgen: simulated model runners against a flashkv server; every "
      "checked output is recomputed with the CPU implementation",
      "flashkv-loadgen");
  app.footer(kFooter);
  tools::ConnectionFlags connection;
  tools::AddConnectionFlags(&app, &connection);
  loadgen::LoadgenConfig config;
  int connections = 1;
  double duration_s = 30, rpc_timeout_s = 60, progress_interval_s = 5;
  std::string prompt_len = "128", output_len = "32", prefix_len = "256", verify = "0.1";
  std::string out_file, progress = "auto";
  std::vector<std::string> expect;
  bool json_stdout = false, no_token_ids = false;
  int cpu_threads = 0;
  auto* c = &config;

  app.add_option("--connections", connections, "TCP connections the runners spread over")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--runners", c->runners, "simulated model runners (one stream each)")
      ->capture_default_str();
  app.add_option("--max-batch", c->max_batch, "sequences a runner steps together")
      ->capture_default_str();
  app.add_option("--rate", c->rate, "open loop: Poisson arrivals per second (0: closed loop)")
      ->capture_default_str();
  app.add_option("--duration", duration_s, "seconds to run (0: until --requests are done)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--requests", c->requests, "requests to run (0: no bound)")->capture_default_str();
  app.add_option("--prompt-len", prompt_len,
                 "N | uniform:A:B | lognormal:MEDIAN:SIGMA[:MAX] | chat-prompt[:SCALE]")
      ->capture_default_str();
  app.add_option("--output-len", output_len, "same forms; chat-output[:SCALE] for chat answers")
      ->capture_default_str();
  app.add_option("--prefill-chunk", c->prefill_chunk, "prompt tokens per sequence per pass")
      ->capture_default_str();
  app.add_option("--max-pass-tokens", c->max_pass_tokens, "tokens per pass over all sequences")
      ->capture_default_str();
  app.add_option("--pipeline-depth", c->pipeline_depth,
                 "layer requests in flight per runner (1: like a real model)")
      ->capture_default_str();
  std::string data_plane = "bytes";
  app.add_option("--data-plane", data_plane,
                 "bytes: tensors inside the Step messages; shm: in a shared-memory region per "
                 "runner, only descriptors in the messages (server on this host)")
      ->capture_default_str()
      ->check(CLI::IsMember({"bytes", "shm"}));
  std::string step_format = "entries";
  app.add_option("--step-format", step_format,
                 "entries: one StepEntry per sequence; batch: the pass as one StepBatch (q, k, v "
                 "and out one descriptor each for all sequences); pass: batch, as a decode pass "
                 "(the sequences named at layer 0 only, StepBatch.pass_id)")
      ->capture_default_str()
      ->check(CLI::IsMember({"entries", "batch", "pass"}));
  std::string region_memory = "auto";
  app.add_option("--region-memory", region_memory,
                 "shm regions in host memory (a sealed memfd) or CUDA device memory (CUDA IPC, "
                 "read and written by the server's kernels in place); auto: cuda when the server "
                 "computes on one CUDA device and this build has CUDA")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "host", "cuda"}));
  app.add_option("--region-cuda-device", c->region_cuda_device,
                 "this process's CUDA ordinal of the server's device (CUDA regions)")
      ->capture_default_str();
  std::string inputs = "host";
  app.add_option("--inputs", inputs,
                 "where q, k and v are made: host (generated here, copied into CUDA regions) or "
                 "device (CUDA regions: a kernel writes them in the region, as a model runner's "
                 "projections do; the host regenerates only what it verifies)")
      ->capture_default_str()
      ->check(CLI::IsMember({"host", "device"}));
  double layer_gap_us = 0;
  app.add_option("--layer-gap-us", layer_gap_us,
                 "the runner's own work between a layer's response and the next layer's request "
                 "(the rest of a model layer), waited out busily, microseconds")
      ->capture_default_str();
  app.add_option("--prefix-pool", c->prefix_pool, "shared prompt prefixes (0: none)")
      ->capture_default_str();
  app.add_option("--prefix-len", prefix_len, "length distribution of the shared prefixes")
      ->capture_default_str();
  app.add_option("--prefix-fraction", c->prefix_fraction,
                 "requests that start with a shared prefix")
      ->capture_default_str();
  app.add_flag("--no-token-ids", no_token_ids, "send no token ids (no prefix caching)");
  app.add_option("--verify", verify, "all | none | fraction of Step calls recomputed")
      ->capture_default_str();
  app.add_option("--atol", c->atol, "absolute tolerance (default per dtype)");
  app.add_option("--rtol", c->rtol, "relative tolerance (default per dtype)");
  app.add_option("--expect", expect,
                 "status codes that are expected, e.g. RESOURCE_EXHAUSTED under deliberate "
                 "memory pressure (repeatable)");
  app.add_option("--rpc-timeout", rpc_timeout_s, "deadline of each call and step, seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", c->seed, "seed of lengths, prompts and queries")->capture_default_str();
  app.add_option("--run-id", c->run_id, "prefix of sequence ids (default: random)");
  app.add_option("--cpu-threads", cpu_threads, "threads of the CPU verifier (0: all cores)");
  app.add_option("--out", out_file, "write the JSON report here");
  app.add_flag("--json", json_stdout, "print the JSON report instead of the table");
  app.add_option("--progress", progress, "auto | bar | lines | none")->capture_default_str();
  app.add_option("--progress-interval", progress_interval_s, "seconds between progress lines")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
#ifdef NDEBUG
  // As in the server: Debian's abseil tracks every absl::Mutex's lock order (gRPC's too), which
  // costs each lock on the call path; release binaries turn it off.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif

  auto usage = [](const absl::Status& s) {
    std::cerr << "flashkv-loadgen: " << s.message() << "\n";
    return kExitUsage;
  };
  for (auto [text, target] : {std::pair{&prompt_len, &c->prompt_len},
                              {&output_len, &c->output_len},
                              {&prefix_len, &c->prefix_len}}) {
    absl::StatusOr<loadgen::LengthDistribution> d = loadgen::LengthDistribution::Parse(*text);
    if (!d.ok()) return usage(d.status());
    *target = *std::move(d);
  }
  absl::StatusOr<double> fraction = ParseVerify(verify);
  if (!fraction.ok()) return usage(fraction.status());
  c->verify_fraction = *fraction;
  absl::StatusOr<std::set<absl::StatusCode>> codes = ParseCodes(expect);
  if (!codes.ok()) return usage(codes.status());
  c->expected_codes = *codes;
  c->duration = absl::Seconds(duration_s);
  c->rpc_timeout = absl::Seconds(rpc_timeout_s);
  c->send_token_ids = !no_token_ids;
  c->data_plane = data_plane == "shm" ? loadgen::DataPlane::kShm : loadgen::DataPlane::kBytes;
  c->batched_steps = step_format == "batch" || step_format == "pass";
  c->pass_steps = step_format == "pass";
  c->region_memory = region_memory == "host"   ? loadgen::RegionMemory::kHost
                     : region_memory == "cuda" ? loadgen::RegionMemory::kCuda
                                               : loadgen::RegionMemory::kAuto;
  c->inputs = inputs == "device" ? loadgen::InputSource::kDevice : loadgen::InputSource::kHost;
  c->layer_gap = absl::Microseconds(layer_gap_us);
  if (c->run_id.empty())
    c->run_id = absl::StrCat("lg", absl::Hex(std::random_device()() & 0xffffff));
  if (absl::Status s = c->Validate(); !s.ok()) return usage(s);
  if (progress != "auto" && progress != "bar" && progress != "lines" && progress != "none") {
    return usage(absl::InvalidArgumentError("--progress must be auto, bar, lines or none"));
  }
  if (cpu_threads > 0) cpu::SetNumThreads(cpu_threads);

  absl::StatusOr<ClientConfig> client_config = tools::MakeClientConfig(connection);
  if (!client_config.ok()) return usage(client_config.status());
  client_config->channel.dedicated_connection = connections > 1;
  std::vector<std::unique_ptr<Client>> owned;
  std::vector<Client*> clients;
  for (int i = 0; i < connections; ++i) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(*client_config);
    if (!client.ok()) return usage(client.status());
    clients.push_back(client->get());
    owned.push_back(*std::move(client));
  }

  loadgen::ProgressOptions progress_options;
  const bool tty = isatty(STDERR_FILENO);
  if (progress != "none") progress_options.out = &std::cerr;
  progress_options.tty = progress == "bar" || (progress == "auto" && tty);
  progress_options.interval = absl::Seconds(progress_interval_s);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);

  absl::StatusOr<loadgen::Report> report =
      loadgen::RunLoadgen(config, clients, progress_options, &g_interrupted);
  if (!report.ok()) {
    std::cerr << "flashkv-loadgen: " << report.status() << "\n";
    return kExitCannotRun;
  }
  report->target = connection.target;
  if (json_stdout) {
    std::cout << report->ToJson().dump(2) << "\n";
  } else {
    report->PrintTable(std::cout);
  }
  if (!out_file.empty()) {
    std::ofstream out(out_file);
    out << report->ToJson().dump(2) << "\n";
    if (!out) {
      std::cerr << "flashkv-loadgen: cannot write " << out_file << "\n";
      return kExitCannotRun;
    }
  }
  if (report->mismatches() > 0) return kExitMismatch;
  if (report->unexpected_errors() > 0) return kExitUnexpectedErrors;
  return kExitClean;
}
