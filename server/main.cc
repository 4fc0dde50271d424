// flashkv-server: parses flags into a ServerConfig, starts the server, re-reads its token file on
// SIGHUP, and drains it on SIGTERM or SIGINT (a second signal exits at once). Every flag is
// described in docs/operations.md.

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "flashkv/server/config.h"
#include "flashkv/server/cpu_affinity.h"
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
  app.add_option("--cpu-threads", c.cpu_threads,
                 "CPU kernel threads (0: one per CPU the server may use)")
      ->capture_default_str();
  app.add_option_function<std::string>(
         "--cpus",
         [&c](const std::string& text) {
           absl::StatusOr<std::vector<int>> cpus = flashkv::server::ParseCpuList(text, "--cpus");
           if (!cpus.ok()) throw CLI::ValidationError(std::string(cpus.status().message()));
           c.cpus = *std::move(cpus);
         },
         "Keep every server thread on these CPUs (taskset list: 3, 2-5, 0,4-7); one core of "
         "its own keeps a co-located runner's per-layer steps on warm caches "
         "[default: as started]")
      ->type_name("LIST");
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
  app.add_option("--inline-launch-tokens", c.scheduler.inline_launch_tokens,
                 "Small steps that find the scheduler idle launch on the receiving thread (0: never)")
      ->capture_default_str();
  app.add_option("--inline-pass-tokens", c.scheduler.inline_pass_tokens,
                 "Decode-pass layer steps up to this many tokens that find a CUDA device's "
                 "scheduler idle launch on the receiving thread (0: never)")
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

void AddSecurityFlags(CLI::App& app, flashkv::server::SecurityConfig& s) {
  app.add_option("--tls-cert", s.tls_cert_file, "PEM certificate chain of the server (TLS)");
  app.add_option("--tls-key", s.tls_key_file, "PEM private key of --tls-cert");
  app.add_option("--tls-client-ca", s.tls_client_ca_file,
                 "Mutual TLS: PEM CA certificates that must sign every client's certificate");
  app.add_flag("--plaintext", s.plaintext,
               "Serve without TLS (required when no --tls-cert is given: trusted networks only)");
  app.add_option("--tokens-file", s.tokens_file,
                 "Bearer tokens -> tenants, one 'TOKEN TENANT [max_sequences=N] "
                 "[max_kv_blocks=N]' per line; re-read on SIGHUP (default: no authentication, "
                 "one tenant 'default')");
  app.add_option("--tenant-max-sequences", s.tenant_max_sequences,
                 "Live sequences per tenant unless its token lines say otherwise (0: no limit)")
      ->capture_default_str();
  app.add_option("--tenant-max-kv-blocks", s.tenant_max_kv_blocks,
                 "KV blocks per tenant unless its token lines say otherwise (0: no limit)")
      ->capture_default_str();
}

void AddLimitFlags(CLI::App& app, flashkv::server::RequestLimits& l) {
  app.add_option("--max-entries-per-step", l.max_entries_per_step, "Entries in one Step request")
      ->capture_default_str();
  app.add_option("--max-tokens-per-entry", l.max_tokens_per_entry,
                 "New tokens of one Step entry")
      ->capture_default_str();
  app.add_option("--max-tokens-per-step", l.max_tokens_per_step,
                 "New tokens of one Step request, all entries together")
      ->capture_default_str();
  app.add_option("--max-sequences", l.max_sequences, "Live sequences, all tenants together")
      ->capture_default_str();
  app.add_option("--max-stream-steps-in-flight", l.max_stream_steps_in_flight,
                 "StepStream requests taken and not yet answered; past it the stream is not read")
      ->capture_default_str();
  app.add_option("--max-attention-rows", l.max_attention_rows,
                 "Stateless attention: rows of q and of k/v per call")
      ->capture_default_str();
  app.add_option("--max-attention-batch", l.max_attention_batch,
                 "Stateless attention: sequences per call")
      ->capture_default_str();
  app.add_option("--max-attention-work", l.max_attention_work,
                 "Stateless attention: sum of Hq*Sq*Skv*D over a call's sequences")
      ->capture_default_str();
}

// Blocks SIGTERM, SIGINT and SIGHUP in this thread and every thread it starts later, so that only
// the sigwait below sees them.
sigset_t BlockSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
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
  AddSecurityFlags(app, config.security);
  AddLimitFlags(app, config.limits);
  CLI11_PARSE(app, argc, argv);
#ifdef NDEBUG
  // Debian's abseil is built to track the lock order of every absl::Mutex (gRPC's own locks
  // included): a debugging aid that costs each lock a graph lookup on the request path. Release
  // binaries turn it off.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif

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
  const sigset_t signals = BlockSignals();

  absl::StatusOr<std::unique_ptr<flashkv::server::Server>> server =
      flashkv::server::Server::Create(config);
  if (!server.ok()) {
    spdlog::critical("cannot start: {}", server.status().ToString());
    return 1;
  }
  int signal_number = 0;
  for (;;) {
    sigwait(&signals, &signal_number);
    if (signal_number != SIGHUP) break;
    // SIGHUP re-reads the token file; a bad file keeps the tokens in use.
    if (absl::Status s = (*server)->ReloadTokens(); !s.ok()) {
      spdlog::error("SIGHUP: tokens not reloaded, the previous ones stay in use: {}",
                    s.ToString());
    }
  }
  spdlog::info("received {}", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  // A second SIGTERM or SIGINT during the drain ends the process at once (SIGHUP is ignored).
  std::thread([signals] {
    int second = 0;
    sigset_t copy = signals;
    do {
      sigwait(&copy, &second);
    } while (second == SIGHUP);
    spdlog::warn("second signal during drain: exiting now");
    std::_Exit(1);
  }).detach();
  (*server)->Shutdown(config.drain_deadline);
  return 0;
}
