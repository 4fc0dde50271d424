// flashkv-server: parses flags into a ServerConfig, starts the server, and drains it on SIGTERM or
// SIGINT (a second signal exits at once). Every flag is described in docs/operations.md.

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "flashkv/server/config.h"
#include "flashkv/server/server.h"

namespace {

using flashkv::server::BackendChoice;
using flashkv::server::ServerConfig;

// Accepts absl duration syntax ("250us", "2ms", "30s", "10m", "1h30m", "0").
CLI::Option* AddDuration(CLI::App& app, const std::string& name, absl::Duration* target,
                         const std::string& help) {
  return app
      .add_option_function<std::string>(
          name,
          [target, name](const std::string& text) {
            if (!absl::ParseDuration(text, target)) {
              throw CLI::ValidationError(name,
                                         "'" + text + "' is not a duration (e.g. 250us, 30s, 10m)");
            }
          },
          help + " [default: " + absl::FormatDuration(*target) + "]")
      ->type_name("DURATION");
}

void AddFlags(CLI::App& app, ServerConfig& c, std::string& dtype, std::string& backend,
              bool& transport_defaults) {
  auto& m = c.model;
  app.add_option("--layers", m.num_layers, "Model layers")->capture_default_str();
  app.add_option("--q-heads", m.num_q_heads, "Query heads")->capture_default_str();
  app.add_option("--kv-heads", m.num_kv_heads, "Key/value heads")->capture_default_str();
  app.add_option("--head-dim", m.head_dim, "Head dimension")->capture_default_str();
  app.add_option("--dtype", dtype, "fp16, bf16 or fp32")->capture_default_str();
  app.add_option("--page-size", m.page_size, "Tokens per KV block")->capture_default_str();

  app.add_option("--backend", backend, "cpu, cuda or auto")->capture_default_str();
  app.add_option("--devices", c.cuda_devices, "CUDA device ids, comma separated (default: all)")
      ->delimiter(',');
  app.add_option("--cpu-devices", c.cpu_devices, "CPU backend: independent caches (devices)")
      ->capture_default_str();
  app.add_option("--cpu-threads", c.cpu_threads, "CPU kernel threads (0: all cores)")
      ->capture_default_str();
  app.add_option("--kv-cache-bytes", c.kv_cache_bytes, "KV pool bytes per device (e.g. 4GiB)")
      ->transform(CLI::AsSizeValue(false));
  app.add_option("--kv-cache-fraction", c.kv_cache_fraction,
                 "KV pools as a fraction of free GPU / physical host memory");
  app.add_option("--swap-bytes", c.swap_bytes, "Host swap space per device (0: no swapping)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  app.add_option("--max-context", c.max_context, "Longest context per sequence (0: pool size)")
      ->capture_default_str();

  AddDuration(app, "--batch-window", &c.scheduler.batch_window,
              "How long an idle scheduler waits to merge more steps");
  app.add_option("--max-batch-tokens", c.scheduler.max_batch_tokens, "New tokens per launch")
      ->capture_default_str();
  app.add_option("--prefill-chunk", c.scheduler.prefill_chunk_tokens,
                 "Most tokens of one step per launch")
      ->capture_default_str();
  AddDuration(app, "--sequence-ttl", &c.sequence_ttl, "Free sequences idle this long (0: never)");

  app.add_option("--listen", c.listen_address, "host:port or unix:/path")->capture_default_str();
  app.add_option("--max-receive-message-bytes", c.transport.max_receive_message_bytes,
                 "Largest request")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  app.add_option("--max-send-message-bytes", c.transport.max_send_message_bytes, "Largest response")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  app.add_option("--keepalive-time-ms", c.transport.keepalive_time_ms,
                 "Ping idle connections this often (0: off)")
      ->capture_default_str();
  app.add_option("--keepalive-timeout-ms", c.transport.keepalive_timeout_ms,
                 "Close a connection whose ping is unanswered this long")
      ->capture_default_str();
  app.add_flag("--transport-defaults", transport_defaults,
               "Use gRPC's default HTTP/2 windows, frames and reads (for comparison)");
  app.add_option("--max-entries-per-step", c.max_entries_per_step, "Entries in one Step request")
      ->capture_default_str();
  app.add_option_function<std::string>(
         "--metrics-address",
         [&c](const std::string& value) { c.metrics_address = value == "off" ? "" : value; },
         "Prometheus endpoint host:port, or off [default: " + c.metrics_address + "]")
      ->type_name("ADDRESS");
  AddDuration(app, "--drain-deadline", &c.drain_deadline,
              "On SIGTERM, time in-flight calls get to finish");
  app.add_option("--attention-threads", c.attention_threads, "Threads for stateless Attention RPCs")
      ->capture_default_str();
  app.add_option("--log-level", c.log_level, "trace, debug, info, warn, error, critical, off")
      ->capture_default_str();
}

// Blocks SIGTERM and SIGINT in this thread and every thread it starts later, so that only the
// sigwait below sees them.
sigset_t BlockShutdownSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

}  // namespace

int main(int argc, char** argv) {
  ServerConfig config;
  std::string dtype = "fp16";
  std::string backend = "auto";
  bool transport_defaults = false;
  CLI::App app{"flashkv-server: attention over a paged KV cache, served with gRPC"};
  app.set_config("--config", "", "Read flags from a TOML/INI file");
  AddFlags(app, config, dtype, backend, transport_defaults);
  CLI11_PARSE(app, argc, argv);

  const std::optional<flashkv::DType> parsed_dtype = flashkv::ParseDType(dtype);
  if (!parsed_dtype) {
    std::fprintf(stderr, "--dtype: '%s' must be fp16, bf16 or fp32\n", dtype.c_str());
    return 2;
  }
  config.model.dtype = *parsed_dtype;
  if (backend == "cpu") {
    config.backend = BackendChoice::kCpu;
  } else if (backend == "cuda") {
    config.backend = BackendChoice::kCuda;
  } else if (backend != "auto") {
    std::fprintf(stderr, "--backend: '%s' must be cpu, cuda or auto\n", backend.c_str());
    return 2;
  }
  config.transport.tuned = !transport_defaults;

  spdlog::set_level(spdlog::level::from_str(config.log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ %v");
  const sigset_t signals = BlockShutdownSignals();

  absl::StatusOr<std::unique_ptr<flashkv::server::Server>> server =
      flashkv::server::Server::Create(config);
  if (!server.ok()) {
    spdlog::critical("cannot start: {}", server.status().ToString());
    return 1;
  }
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("received {}", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  // A second signal during the drain ends the process at once.
  std::thread([signals] {
    int second = 0;
    sigset_t copy = signals;
    sigwait(&copy, &second);
    spdlog::warn("second signal during drain: exiting now");
    std::_Exit(1);
  }).detach();
  (*server)->Shutdown(config.drain_deadline);
  return 0;
}
