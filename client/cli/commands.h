#pragma once

// The `flashkv` CLI's commands. Each runs against a Client, writes its result to `out` (JSON when
// asked, text otherwise) and errors to `err`, and returns the process exit code:
//   0  success (SERVING; attention output matched the CPU implementation)
//   1  the call failed (server unreachable, error status); the code and message are printed
//   2  usage error: bad flags or unreadable input files
//   3  health: the server (or service) is not SERVING
//   4  attention: the server's output differs from the CPU implementation beyond tolerance

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>

#include "flashkv/client/client.h"

namespace flashkv::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRpcFailed = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNotServing = 3;
inline constexpr int kExitMismatch = 4;

struct OutputOptions {
  bool json = false;
};

struct HealthCommand {
  std::string service;
  // Poll until SERVING or this many seconds pass (0: ask once).
  double wait_s = 0;
};

struct AttentionCommand {
  std::string dtype = "fp16";
  int batch = 1;
  int seqlen_q = 16;
  int seqlen_kv = 128;
  int heads_q = 8;
  int heads_kv = 2;
  int head_dim = 128;
  bool causal = false;
  std::optional<float> softmax_scale;
  bool return_lse = false;
  uint64_t seed = 1;
  // Input files (.npy or raw); all three or none (random inputs).
  std::string q_file, k_file, v_file;
  std::string save_out;
  std::optional<double> atol, rtol;
  int repeat = 1;
};

int RunHealth(Client& client, const HealthCommand& command, const OutputOptions& output,
              std::ostream& out, std::ostream& err);
int RunInfo(Client& client, const OutputOptions& output, std::ostream& out, std::ostream& err);
int RunStats(Client& client, const OutputOptions& output, std::ostream& out, std::ostream& err);
int RunAttention(Client& client, const AttentionCommand& command, const OutputOptions& output,
                 std::ostream& out, std::ostream& err);

}  // namespace flashkv::cli
