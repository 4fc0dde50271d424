#include "flashkv/server/config.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>

namespace flashkv::server {
namespace {

// Plaintext only when asked for: the defaults alone name no TLS files, so they are refused.
TEST(ConfigTest, DefaultsNeedTlsOrPlaintext) {
  const absl::Status status = ValidateConfig(ServerConfig{});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("no TLS: give tls-cert and tls-key"), std::string::npos)
      << status;
  ServerConfig plaintext;
  plaintext.security.plaintext = true;
  EXPECT_TRUE(ValidateConfig(plaintext).ok());
  ServerConfig tls;
  tls.security.tls_cert_file = "server.pem";
  tls.security.tls_key_file = "server.key";
  EXPECT_TRUE(ValidateConfig(tls).ok());
}

TEST(ConfigTest, EveryBadFieldIsNamedWithItsLimit) {
  const struct {
    std::function<void(ServerConfig&)> mutate;
    const char* message;
  } cases[] = {
      {[](ServerConfig& c) { c.model.num_layers = 0; }, "layers (0) must be in [1, 4096]"},
      {[](ServerConfig& c) { c.model.num_kv_heads = 0; }, "kv-heads (0)"},
      {[](ServerConfig& c) { c.model.num_q_heads = 12; },
       "q-heads (12) must be in [1, 1024] and a multiple of kv-heads (8)"},
      {[](ServerConfig& c) { c.model.head_dim = 80; }, "head-dim (80) must be one of"},
      {[](ServerConfig& c) { c.model.page_size = 0; }, "page-size (0)"},
      {[](ServerConfig& c) { c.scheduler.batch_window = absl::Seconds(2); },
       "batch-window (2s) must be in [0, 1s]"},
      {[](ServerConfig& c) { c.scheduler.max_batch_tokens = 0; }, "max-batch-tokens (0)"},
      {[](ServerConfig& c) { c.scheduler.inline_launch_tokens = -1; }, "inline-launch-tokens (-1)"},
      {[](ServerConfig& c) { c.scheduler.inline_pass_tokens = -1; }, "inline-pass-tokens (-1)"},
      {[](ServerConfig& c) { c.scheduler.prefill_chunk_tokens = 9000; },
       "prefill-chunk (9000) must be in [1, max-batch-tokens (8192)]"},
      {[](ServerConfig& c) { c.cpu_devices = 0; }, "cpu-devices (0)"},
      {[](ServerConfig& c) {
         c.cuda_devices = {0, 1, 0};
       },
       "devices[2] (0) is listed twice"},
      {[](ServerConfig& c) { c.cuda_devices = {-1}; }, "devices[0] (-1) must be >= 0"},
      {[](ServerConfig& c) {
         c.backend = BackendChoice::kCpu;
         c.cuda_devices = {0};
       },
       "backend is cpu"},
      {[](ServerConfig& c) {
         c.kv_cache_bytes = 1;
         c.kv_cache_fraction = 0.5;
       },
       "at most one of kv-cache-bytes"},
      {[](ServerConfig& c) { c.kv_cache_fraction = 1.5; }, "kv-cache-fraction"},
      {[](ServerConfig& c) { c.swap_bytes = -1; }, "swap-bytes (-1)"},
      {[](ServerConfig& c) { c.listen_address.clear(); }, "listen must not be empty"},
      {[](ServerConfig& c) { c.transport.max_receive_message_bytes = 10; },
       "max-receive-message-bytes (10)"},
      {[](ServerConfig& c) { c.limits.max_entries_per_step = 0; }, "max-entries-per-step (0)"},
      {[](ServerConfig& c) { c.limits.max_tokens_per_entry = 0; }, "max-tokens-per-entry (0)"},
      {[](ServerConfig& c) { c.limits.max_tokens_per_step = 0; }, "max-tokens-per-step (0)"},
      {[](ServerConfig& c) { c.limits.max_tokens_per_entry = 70000; },
       "max-tokens-per-entry (70000) must be <= max-tokens-per-step (65536)"},
      {[](ServerConfig& c) { c.limits.max_sequences = 0; }, "max-sequences (0)"},
      {[](ServerConfig& c) { c.limits.max_stream_steps_in_flight = 0; },
       "max-stream-steps-in-flight (0)"},
      {[](ServerConfig& c) { c.limits.max_attention_rows = 0; }, "max-attention-rows (0)"},
      {[](ServerConfig& c) { c.limits.max_attention_batch = 0; }, "max-attention-batch (0)"},
      {[](ServerConfig& c) { c.limits.max_attention_work = 0; }, "max-attention-work (0)"},
      {[](ServerConfig& c) { c.security.tls_key_file = ""; c.security.tls_cert_file = "c.pem"; },
       "tls-cert and tls-key must be given together"},
      {[](ServerConfig& c) { c.security.tls_client_ca_file = "ca.pem"; },
       "tls-client-ca (mutual TLS) needs the server's own tls-cert"},
      {[](ServerConfig& c) {
         c.security.tls_cert_file = "c.pem";
         c.security.tls_key_file = "k.pem";
       },
       "plaintext contradicts tls-cert"},
      {[](ServerConfig& c) { c.security.tenant_max_sequences = -1; },
       "tenant-max-sequences (-1)"},
      {[](ServerConfig& c) { c.security.tenant_max_kv_blocks = -2; },
       "tenant-max-kv-blocks (-2)"},
      {[](ServerConfig& c) { c.sequence_ttl = absl::Seconds(-1); }, "sequence-ttl (-1s)"},
      {[](ServerConfig& c) { c.attention_threads = 0; }, "attention-threads (0)"},
      {[](ServerConfig& c) { c.log_level = "loud"; }, "log-level (loud) must be one of"},
  };
  for (const auto& c : cases) {
    ServerConfig config;
    config.security.plaintext = true;
    c.mutate(config);
    const absl::Status status = ValidateConfig(config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_NE(status.message().find(c.message), std::string::npos) << status;
  }
}

}  // namespace
}  // namespace flashkv::server
