#pragma once

// Everything that configures one flashkv-server process. Flags are parsed into it in main only
// (server/main.cc); tests and embedders fill it directly. ValidateConfig checks every field.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "flashkv/dtype.h"
#include "flashkv/server/clock.h"
#include "flashkv/transport.h"

namespace flashkv::server {

enum class BackendChoice {
  kAuto,  // CUDA when a device is visible and flashkv was built with CUDA, else CPU
  kCpu,
  kCuda,
};

const char* BackendChoiceName(BackendChoice choice);

// The one model shape a server instance serves.
struct ModelShape {
  int num_layers = 32;
  int num_q_heads = 32;
  int num_kv_heads = 8;
  int head_dim = 128;
  DType dtype = DType::kFloat16;
  int page_size = 16;  // tokens per KV block
};

struct SchedulerConfig {
  // How long a device's scheduler may wait for more Step calls to merge once it has work and is
  // idle. Zero: launch at once (work that arrives during a launch still merges into the next).
  absl::Duration batch_window = absl::ZeroDuration();
  // Most new tokens (rows of q) in one launch.
  int max_batch_tokens = 8192;
  // A Step's rows are computed in launches of at most this many tokens, so that decodes of other
  // calls run between the chunks of a long prefill. See docs/api.md ("Long prefills").
  int prefill_chunk_tokens = 512;
  // A small step that finds its device's scheduler idle (nothing queued, nothing running, no
  // batching window) and has at most this many tokens is launched on the thread that received
  // it, instead of waking the scheduler's thread: that wake-up is most of a small decode step's
  // time in the server. Zero: every launch runs on the scheduler's thread.
  int inline_launch_tokens = 16;
  // The same for a decode pass's layer steps (layers 1..L-1) on CUDA devices, up to this many
  // tokens: such a step launches alone anyway (nothing to merge it with), and on a GPU the
  // receiving thread is held only for its two kernels (tens of µs at decode sizes), while the
  // wake-up it saves was a third of a pass layer step's fixed path (docs/performance.md, "Decode
  // passes"). CPU devices keep inline_launch_tokens: there the thread would run the kernel.
  int inline_pass_tokens = 512;
};

inline constexpr int64_t kDefaultCpuKvCacheBytes = int64_t{1} << 30;

// Transport security and authentication (docs/reliability.md#security).
struct SecurityConfig {
  // TLS: the server's PEM certificate chain and private key, both or neither.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Mutual TLS: clients must present a certificate signed by a CA in this PEM file.
  std::string tls_client_ca_file;
  // Serve without TLS. Plaintext only when asked for: without TLS files this must be set.
  bool plaintext = false;
  // Bearer tokens -> tenants (flashkv/server/auth.h), re-read on SIGHUP. Empty: no
  // authentication, every call is the tenant "default".
  std::string tokens_file;
  // Quotas of tenants whose token-file lines give none (and of "default"); 0: unlimited.
  int64_t tenant_max_sequences = 0;
  int64_t tenant_max_kv_blocks = 0;
};

// Limits on every size a client controls, each checked before anything is allocated for it
// (message bytes: TransportOptions::max_receive_message_bytes; context: max_context).
struct RequestLimits {
  int max_entries_per_step = 4096;  // entries of one Step request
  int max_tokens_per_entry = 32768;  // new tokens (q rows) of one entry
  int max_tokens_per_step = 65536;   // new tokens of all entries of one Step request
  int64_t max_sequences = 65536;     // live sequences on the server, all tenants together
  // Requests of one StepStream taken and not yet answered (computing, or answered and waiting
  // for the client to read): past it the server stops reading the stream until one is written,
  // so HTTP/2 flow control holds the client back instead of the server's memory.
  int max_stream_steps_in_flight = 256;
  // Stateless attention: rows of q (B*Sq or Tq) and of k/v (B*Skv or Tkv); sequences (B, or
  // varlen's cu_seqlens entries - 1); and work, sum over sequences of Hq * Sq * Skv * D (the
  // multiply-adds of q.k^T, as many again for p.v), which bounds the compute one call can ask.
  int64_t max_attention_rows = int64_t{1} << 20;
  int max_attention_batch = 65536;
  int64_t max_attention_work = int64_t{1} << 38;
};

struct ServerConfig {
  ModelShape model;

  // Devices. With kCuda, `cuda_devices` lists the ordinals (empty: every visible device). With
  // kCpu, `cpu_devices` independent caches ("devices") share the host: one is the normal setting,
  // several exercise multi-device placement without GPUs.
  BackendChoice backend = BackendChoice::kAuto;
  std::vector<int> cuda_devices;
  int cpu_devices = 1;
  int cpu_threads = 0;  // worker threads of the CPU kernels; 0: one per CPU the server may use
  // CPUs every thread of the server runs on (cpu_affinity.h; the whole process: set at the start
  // of Server::Create); empty: wherever the process was started to run.
  std::vector<int> cpus;

  // KV memory (K and V pools of all layers) per device: at most one of `kv_cache_bytes` or a
  // fraction of free device memory (CUDA) / of physical host memory (CPU). Neither set: 90% of
  // free device memory with CUDA, kDefaultCpuKvCacheBytes on the CPU backend.
  int64_t kv_cache_bytes = 0;
  double kv_cache_fraction = 0.0;
  // Host memory per device for sequences swapped out under pressure; 0 disables swapping.
  int64_t swap_bytes = 0;
  // Longest context a sequence may reach; 0: as many tokens as the pool holds.
  int max_context = 0;

  SchedulerConfig scheduler;
  // Sequences not stepped for this long are freed; zero disables expiry.
  absl::Duration sequence_ttl = absl::Minutes(30);

  // gRPC listening address: "host:port" (port 0 picks one) or "unix:/path/to.sock".
  std::string listen_address = "0.0.0.0:50051";
  TransportOptions transport;
  SecurityConfig security;
  RequestLimits limits;
  // Prometheus pull endpoint "host:port" (port 0 picks one); empty disables it.
  std::string metrics_address = "0.0.0.0:9464";
  // On SIGTERM/SIGINT: stop accepting calls, then give in-flight calls this long to finish.
  absl::Duration drain_deadline = absl::Seconds(30);
  // Threads running the stateless Attention RPCs (each call also uses the CPU kernels' pool).
  int attention_threads = 2;
  // spdlog level: trace, debug, info, warn, error, critical, off.
  std::string log_level = "info";
  // Time source of the scheduler and sequence expiry; null: the real clock. (Tests only.)
  std::shared_ptr<Clock> clock;
  // Run on Create's thread the moment the gRPC server accepts connections, before the KV pools
  // are allocated and warmed; start-up waits for it to return. Tests hold start-up here to probe
  // the server while it is not ready. Null: nothing. (Tests only.)
  std::function<void()> on_listening;
};

// Every field checked; errors name the flag-level field and its limit (INVALID_ARGUMENT).
absl::Status ValidateConfig(const ServerConfig& config);

}  // namespace flashkv::server
