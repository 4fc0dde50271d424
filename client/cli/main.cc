// `flashkv`: operator's CLI for a flashkv server. Flags are parsed here into the commands'
// structs; exit codes are documented in commands.h and in `flashkv --help`.

#include <iostream>

#include "CLI/CLI.hpp"
#include "commands.h"
#include "connection_flags.h"

namespace {

constexpr char kFooter[] = R"(Exit codes:
  0  success (SERVING; attention output matched the local CPU implementation)
  1  the call failed (unreachable server or an error status; code and message on stderr)
  2  usage error (bad flags, unreadable input files)
  3  health: not SERVING
  4  attention: output differs from the CPU implementation beyond tolerance)";

}  // namespace

int main(int argc, char** argv) {
  using namespace flashkv;
  CLI::App app("flashkv: talk to a flashkv attention server", "flashkv");
  app.footer(kFooter);
  app.require_subcommand(1);
  tools::ConnectionFlags connection;
  tools::AddConnectionFlags(&app, &connection);
  cli::OutputOptions output;
  app.add_flag("--json", output.json, "machine-readable JSON on stdout");

  cli::HealthCommand health;
  CLI::App* health_cmd = app.add_subcommand("health", "grpc.health.v1 check");
  health_cmd->add_option("--service", health.service, "service name (empty: the server)");
  health_cmd->add_option("--wait", health.wait_s, "poll until SERVING for up to this many seconds")
      ->check(CLI::NonNegativeNumber);
  CLI::App* info_cmd = app.add_subcommand("info", "model shape and KV cache usage");
  CLI::App* stats_cmd = app.add_subcommand("stats", "server counters: batches, KV, prefix cache");

  cli::AttentionCommand attention;
  CLI::App* attention_cmd = app.add_subcommand(
      "attention", "one stateless Attention call, checked against the local CPU implementation");
  attention_cmd->add_option("--dtype", attention.dtype, "fp16, bf16 or fp32")
      ->capture_default_str();
  attention_cmd->add_option("--batch", attention.batch)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  attention_cmd->add_option("--seqlen-q", attention.seqlen_q)
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  attention_cmd->add_option("--seqlen-kv", attention.seqlen_kv)
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  attention_cmd->add_option("--heads-q", attention.heads_q)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  attention_cmd->add_option("--heads-kv", attention.heads_kv)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  attention_cmd->add_option("--head-dim", attention.head_dim)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  attention_cmd->add_flag("--causal", attention.causal, "causal mask, aligned bottom-right");
  attention_cmd->add_option("--scale", attention.softmax_scale,
                            "softmax scale (default 1/sqrt(D))");
  attention_cmd->add_flag("--lse", attention.return_lse, "also fetch and check the log-sum-exp");
  attention_cmd->add_option("--seed", attention.seed, "seed of the random inputs")
      ->capture_default_str();
  attention_cmd->add_option("--q", attention.q_file, "q [B,Sq,Hq,D] from a .npy or raw file");
  attention_cmd->add_option("--k", attention.k_file, "k [B,Skv,Hkv,D] from a .npy or raw file");
  attention_cmd->add_option("--v", attention.v_file, "v [B,Skv,Hkv,D] from a .npy or raw file");
  attention_cmd->add_option("--save-out", attention.save_out,
                            "write the server's output (.npy or raw)");
  attention_cmd->add_option("--atol", attention.atol, "absolute tolerance (default per dtype)");
  attention_cmd->add_option("--rtol", attention.rtol, "relative tolerance (default per dtype)");
  attention_cmd->add_option("--repeat", attention.repeat, "calls to time (the last is checked)")
      ->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : cli::kExitUsage;
  }

  absl::StatusOr<ClientConfig> config = tools::MakeClientConfig(connection);
  if (!config.ok()) {
    std::cerr << "flashkv: " << config.status().message() << "\n";
    return cli::kExitUsage;
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(*config);
  if (!client.ok()) {
    std::cerr << "flashkv: " << client.status().message() << "\n";
    return cli::kExitUsage;
  }
  if (health_cmd->parsed()) return cli::RunHealth(**client, health, output, std::cout, std::cerr);
  if (info_cmd->parsed()) return cli::RunInfo(**client, output, std::cout, std::cerr);
  if (stats_cmd->parsed()) return cli::RunStats(**client, output, std::cout, std::cerr);
  return cli::RunAttention(**client, attention, output, std::cout, std::cerr);
}
