#include "flashkv/server/config.h"

#include <string>

#include "flashkv/attention.h"
#include "flashkv/server/cpu_affinity.h"

namespace flashkv::server {
namespace {

absl::Status Invalid(const std::string& field, const std::string& value, const std::string& limit) {
  return absl::InvalidArgumentError(field + " (" + value + ") " + limit);
}

bool IsSupportedHeadDim(int head_dim) {
  for (int d : kSupportedHeadDims) {
    if (d == head_dim) return true;
  }
  return false;
}

absl::Status ValidateModel(const ModelShape& m) {
  if (m.num_layers < 1 || m.num_layers > 4096) {
    return Invalid("layers", std::to_string(m.num_layers), "must be in [1, 4096]");
  }
  if (m.num_kv_heads < 1 || m.num_kv_heads > 1024) {
    return Invalid("kv-heads", std::to_string(m.num_kv_heads), "must be in [1, 1024]");
  }
  if (m.num_q_heads < 1 || m.num_q_heads > 1024 || m.num_q_heads % m.num_kv_heads != 0) {
    return Invalid(
        "q-heads", std::to_string(m.num_q_heads),
        "must be in [1, 1024] and a multiple of kv-heads (" + std::to_string(m.num_kv_heads) + ")");
  }
  if (!IsSupportedHeadDim(m.head_dim)) {
    return Invalid("head-dim", std::to_string(m.head_dim),
                   "must be one of 32, 64, 96, 128, 192, 256");
  }
  if (m.page_size < 1 || m.page_size > 4096) {
    return Invalid("page-size", std::to_string(m.page_size), "must be in [1, 4096]");
  }
  return absl::OkStatus();
}

absl::Status ValidateScheduler(const SchedulerConfig& s) {
  if (s.batch_window < absl::ZeroDuration() || s.batch_window > absl::Seconds(1)) {
    return Invalid("batch-window", absl::FormatDuration(s.batch_window), "must be in [0, 1s]");
  }
  if (s.max_batch_tokens < 1) {
    return Invalid("max-batch-tokens", std::to_string(s.max_batch_tokens), "must be >= 1");
  }
  if (s.inline_launch_tokens < 0) {
    return Invalid("inline-launch-tokens", std::to_string(s.inline_launch_tokens), "must be >= 0");
  }
  if (s.inline_pass_tokens < 0) {
    return Invalid("inline-pass-tokens", std::to_string(s.inline_pass_tokens), "must be >= 0");
  }
  if (s.prefill_chunk_tokens < 1 || s.prefill_chunk_tokens > s.max_batch_tokens) {
    return Invalid("prefill-chunk", std::to_string(s.prefill_chunk_tokens),
                   "must be in [1, max-batch-tokens (" + std::to_string(s.max_batch_tokens) + ")]");
  }
  return absl::OkStatus();
}

absl::Status ValidateDevices(const ServerConfig& c) {
  if (c.cpu_devices < 1 || c.cpu_devices > 64) {
    return Invalid("cpu-devices", std::to_string(c.cpu_devices), "must be in [1, 64]");
  }
  for (int cpu : c.cpus) {
    if (cpu < 0 || cpu >= kMaxCpus) {
      return Invalid("cpus", std::to_string(cpu),
                     "must be in [0, " + std::to_string(kMaxCpus) + ")");
    }
  }
  if (c.cpu_threads < 0 || c.cpu_threads > 1024) {
    return Invalid("cpu-threads", std::to_string(c.cpu_threads), "must be in [0, 1024]");
  }
  for (size_t i = 0; i < c.cuda_devices.size(); ++i) {
    if (c.cuda_devices[i] < 0) {
      return Invalid("devices[" + std::to_string(i) + "]", std::to_string(c.cuda_devices[i]),
                     "must be >= 0");
    }
    for (size_t j = 0; j < i; ++j) {
      if (c.cuda_devices[j] == c.cuda_devices[i]) {
        return Invalid("devices[" + std::to_string(i) + "]", std::to_string(c.cuda_devices[i]),
                       "is listed twice");
      }
    }
  }
  if (!c.cuda_devices.empty() && c.backend == BackendChoice::kCpu) {
    return absl::InvalidArgumentError("devices lists CUDA devices but backend is cpu");
  }
  return absl::OkStatus();
}

absl::Status ValidateMemory(const ServerConfig& c) {
  if (c.kv_cache_bytes < 0) {
    return Invalid("kv-cache-bytes", std::to_string(c.kv_cache_bytes), "must be >= 0");
  }
  if (c.kv_cache_fraction < 0.0 || c.kv_cache_fraction > 0.98) {
    return Invalid("kv-cache-fraction", std::to_string(c.kv_cache_fraction),
                   "must be in [0, 0.98]");
  }
  if (c.kv_cache_bytes > 0 && c.kv_cache_fraction > 0.0) {
    return absl::InvalidArgumentError("set at most one of kv-cache-bytes and kv-cache-fraction");
  }
  if (c.swap_bytes < 0) return Invalid("swap-bytes", std::to_string(c.swap_bytes), "must be >= 0");
  if (c.max_context < 0)
    return Invalid("max-context", std::to_string(c.max_context), "must be >= 0");
  return absl::OkStatus();
}

absl::Status ValidateService(const ServerConfig& c) {
  if (c.listen_address.empty()) return absl::InvalidArgumentError("listen must not be empty");
  const TransportOptions& t = c.transport;
  if (t.max_receive_message_bytes < 1024) {
    return Invalid("max-receive-message-bytes", std::to_string(t.max_receive_message_bytes),
                   "must be >= 1024");
  }
  if (t.max_send_message_bytes < 1024) {
    return Invalid("max-send-message-bytes", std::to_string(t.max_send_message_bytes),
                   "must be >= 1024");
  }
  if (t.keepalive_time_ms < 0 || t.keepalive_timeout_ms < 1) {
    return absl::InvalidArgumentError("keepalive-time must be >= 0 and keepalive-timeout > 0");
  }
  if (c.sequence_ttl < absl::ZeroDuration()) {
    return Invalid("sequence-ttl", absl::FormatDuration(c.sequence_ttl), "must be >= 0");
  }
  if (c.drain_deadline < absl::ZeroDuration()) {
    return Invalid("drain-deadline", absl::FormatDuration(c.drain_deadline), "must be >= 0");
  }
  if (c.attention_threads < 1 || c.attention_threads > 256) {
    return Invalid("attention-threads", std::to_string(c.attention_threads), "must be in [1, 256]");
  }
  static const char* const kLevels[] = {"trace", "debug",    "info", "warn",
                                        "error", "critical", "off"};
  for (const char* level : kLevels) {
    if (c.log_level == level) return absl::OkStatus();
  }
  return Invalid("log-level", c.log_level,
                 "must be one of trace, debug, info, warn, error, critical, off");
}

absl::Status ValidateSecurity(const SecurityConfig& s) {
  if (s.tls_cert_file.empty() != s.tls_key_file.empty()) {
    return absl::InvalidArgumentError("tls-cert and tls-key must be given together");
  }
  if (!s.tls_client_ca_file.empty() && s.tls_cert_file.empty()) {
    return absl::InvalidArgumentError(
        "tls-client-ca (mutual TLS) needs the server's own tls-cert and tls-key");
  }
  if (s.tls_cert_file.empty() && !s.plaintext) {
    return absl::InvalidArgumentError(
        "no TLS: give tls-cert and tls-key (and tls-client-ca for mutual TLS), or plaintext to "
        "serve without TLS (trusted networks only, e.g. behind a TLS-terminating proxy)");
  }
  if (!s.tls_cert_file.empty() && s.plaintext) {
    return absl::InvalidArgumentError("plaintext contradicts tls-cert: give one or the other");
  }
  if (s.tenant_max_sequences < 0) {
    return Invalid("tenant-max-sequences", std::to_string(s.tenant_max_sequences),
                   "must be >= 0 (0: no limit)");
  }
  if (s.tenant_max_kv_blocks < 0) {
    return Invalid("tenant-max-kv-blocks", std::to_string(s.tenant_max_kv_blocks),
                   "must be >= 0 (0: no limit)");
  }
  return absl::OkStatus();
}

absl::Status ValidateLimits(const RequestLimits& l) {
  for (const auto& [name, value] : {std::pair<const char*, int64_t>{"max-entries-per-step",
                                                                    l.max_entries_per_step},
                                    {"max-tokens-per-entry", l.max_tokens_per_entry},
                                    {"max-tokens-per-step", l.max_tokens_per_step},
                                    {"max-sequences", l.max_sequences},
                                    {"max-stream-steps-in-flight", l.max_stream_steps_in_flight},
                                    {"max-attention-rows", l.max_attention_rows},
                                    {"max-attention-batch", l.max_attention_batch},
                                    {"max-attention-work", l.max_attention_work}}) {
    if (value < 1) return Invalid(name, std::to_string(value), "must be >= 1");
  }
  if (l.max_tokens_per_entry > l.max_tokens_per_step) {
    return Invalid("max-tokens-per-entry", std::to_string(l.max_tokens_per_entry),
                   "must be <= max-tokens-per-step (" + std::to_string(l.max_tokens_per_step) +
                       ")");
  }
  return absl::OkStatus();
}

}  // namespace

const char* BackendChoiceName(BackendChoice choice) {
  switch (choice) {
    case BackendChoice::kAuto:
      return "auto";
    case BackendChoice::kCpu:
      return "cpu";
    case BackendChoice::kCuda:
      return "cuda";
  }
  return "unknown";
}

absl::Status ValidateConfig(const ServerConfig& config) {
  if (auto s = ValidateModel(config.model); !s.ok()) return s;
  if (auto s = ValidateScheduler(config.scheduler); !s.ok()) return s;
  if (auto s = ValidateDevices(config); !s.ok()) return s;
  if (auto s = ValidateMemory(config); !s.ok()) return s;
  if (auto s = ValidateSecurity(config.security); !s.ok()) return s;
  if (auto s = ValidateLimits(config.limits); !s.ok()) return s;
  return ValidateService(config);
}

}  // namespace flashkv::server
