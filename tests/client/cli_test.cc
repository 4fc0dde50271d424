// The `flashkv` and `flashkv-loadgen` binaries run as subprocesses against the fake server:
// exit codes and JSON output as documented.

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "fake_service.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "npy.h"
#include "test_util.h"

namespace flashkv::testing {
namespace {

struct RunResult {
  int exit_code = -1;
  std::string out;
};

// Runs `command` (stderr discarded), returning its exit code and stdout.
RunResult RunCommand(const std::string& command) {
  RunResult result;
  FILE* pipe = popen((command + " 2>/dev/null").c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.out.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

nlohmann::json Json(const RunResult& r) {
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << r.out;
  return j;
}

class CliTest : public ::testing::Test {
 protected:
  std::string Cli(const std::string& args) {
    return std::string(FLASHKV_CLI) + " --target " + server_.target() + " " + args;
  }
  FakeServer server_;
  const std::filesystem::path dir_ =
      std::filesystem::path(::testing::TempDir()) / ("flashkv_cli_" + std::to_string(getpid()));
  void SetUp() override { std::filesystem::create_directories(dir_); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
};

TEST_F(CliTest, HealthExitCodes) {
  RunResult r = RunCommand(Cli("--json health"));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(Json(r)["status"], "SERVING");
  server_.SetServing(false);
  r = RunCommand(Cli("--json health"));
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(Json(r)["status"], "NOT_SERVING");
  r = RunCommand(std::string(FLASHKV_CLI) + " --target 127.0.0.1:1 --timeout 2 --json health");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(Json(r)["error"]["code"], "UNAVAILABLE");
}

TEST_F(CliTest, InfoAndStatsJson) {
  RunResult r = RunCommand(Cli("--json info"));
  ASSERT_EQ(r.exit_code, 0);
  nlohmann::json info = Json(r);
  const FakeModel model;
  EXPECT_EQ(info["num_layers"], model.num_layers);
  EXPECT_EQ(info["head_dim"], model.head_dim);
  EXPECT_EQ(info["dtype"], "fp16");
  EXPECT_EQ(info["token_capacity"], model.blocks_total * model.page_size);
  r = RunCommand(Cli("info"));  // the table form works too
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("page size"), std::string::npos) << r.out;

  r = RunCommand(Cli("--json stats"));
  ASSERT_EQ(r.exit_code, 0);
  nlohmann::json stats = Json(r);
  for (const char* key : {"sequences", "blocks_used", "batches", "mean_batch_entries",
                          "prefix_hit_rate", "devices"}) {
    EXPECT_TRUE(stats.contains(key)) << key;
  }
}

TEST_F(CliTest, AttentionMatchesOrSaysMismatch) {
  const std::string shape = "--heads-q 4 --heads-kv 2 --seqlen-q 5 --seqlen-kv 9 --head-dim ";
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    const int head_dim = CompiledHeadDim(dtype);
    if (head_dim == 0) continue;  // not in this build's CPU implementation
    RunResult r = RunCommand(Cli(std::string("--json attention --causal --dtype ") +
                                 DTypeName(dtype) + " " + shape + std::to_string(head_dim)));
    EXPECT_EQ(r.exit_code, 0) << DTypeName(dtype) << r.out;
    nlohmann::json j = Json(r);
    EXPECT_TRUE(j["match"].get<bool>()) << r.out;
    EXPECT_GT(j["out"]["elements"].get<int>(), 0);
  }
  const std::string fp16_shape = shape + std::to_string(CompiledHeadDim(DType::kFloat16));
  server_.service().PerturbAttention(0.5f);
  RunResult r = RunCommand(Cli("--json attention " + fp16_shape));
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_EQ(Json(r)["out"]["mismatches"], 1);
}

TEST_F(CliTest, AttentionFromNpyFilesAndSavedOutput) {
  std::mt19937 rng(5);
  const int64_t d = CompiledHeadDim(DType::kFloat16);
  const std::string q = dir_ / "q.npy", k = dir_ / "k.npy", v = dir_ / "v.npy", o = dir_ / "o.npy";
  ASSERT_TRUE(cli::WriteTensorFile(q, RandomTensor(DType::kFloat16, {2, 3, 4, d}, rng)).ok());
  ASSERT_TRUE(cli::WriteTensorFile(k, RandomTensor(DType::kFloat16, {2, 7, 2, d}, rng)).ok());
  ASSERT_TRUE(cli::WriteTensorFile(v, RandomTensor(DType::kFloat16, {2, 7, 2, d}, rng)).ok());
  const std::string shape =
      "--batch 2 --seqlen-q 3 --seqlen-kv 7 --heads-q 4 --heads-kv 2 --head-dim " +
      std::to_string(d);
  RunResult r = RunCommand(
      Cli("attention " + shape + " --q " + q + " --k " + k + " --v " + v + " --save-out " + o));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  absl::StatusOr<HostTensor> out = cli::ReadTensorFile(o, DType::kFloat16, {2, 3, 4, d});
  ASSERT_TRUE(out.ok()) << out.status();
  // A shape that disagrees with the file is a usage error naming the file.
  r = RunCommand(Cli("attention --seqlen-q 4 --heads-q 4 --heads-kv 2 --head-dim " +
                     std::to_string(d) + " --q " + q + " --k " + k + " --v " + v));
  EXPECT_EQ(r.exit_code, 2);
}

TEST_F(CliTest, UsageErrors) {
  EXPECT_EQ(RunCommand(Cli("")).exit_code, 2);
  EXPECT_EQ(RunCommand(Cli("frobnicate")).exit_code, 2);
  EXPECT_EQ(RunCommand(Cli("attention --dtype fp8")).exit_code, 2);
  EXPECT_EQ(RunCommand(Cli("--token-file /nonexistent health")).exit_code, 2);
  EXPECT_EQ(RunCommand(std::string(FLASHKV_CLI) + " --help").exit_code, 0);
}

TEST_F(CliTest, LoadgenBinaryExitCodesAndReport) {
  const std::string report = dir_ / "report.json";
  const std::string loadgen = std::string(FLASHKV_LOADGEN) + " --target " + server_.target();
  RunResult r = RunCommand(
      loadgen +
      " --connections 2 --runners 2 --max-batch 2 --requests 8 --duration 0 --prompt-len "
      "uniform:4:20 --output-len 3 --prefill-chunk 8 --verify all --out " +
      report);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("RESULT        clean"), std::string::npos) << r.out;
  std::ifstream in(report);
  nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["requests"]["completed"], 8);
  EXPECT_TRUE(j["clean"].get<bool>());
  // The plot script reads it: a PNG with matplotlib (exit 0), a text summary without (exit 2).
  if (RunCommand("command -v python3").exit_code == 0) {
    r = RunCommand("python3 " FLASHKV_PLOT_SCRIPT " " + report + " -o " +
                   (dir_ / "report.png").string());
    EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 2) << r.exit_code << r.out;
    EXPECT_NE(r.out.find(r.exit_code == 0 ? "wrote" : "steps/s"), std::string::npos) << r.out;
  }

  server_.service().PerturbStep(server_.service().steps() + 3, 1.0f);
  r = RunCommand(loadgen + " --requests 4 --duration 0 --prompt-len 6 --output-len 2 --verify all");
  EXPECT_EQ(r.exit_code, 3) << r.out;
  EXPECT_NE(r.out.find("MISMATCH"), std::string::npos) << r.out;

  EXPECT_EQ(RunCommand(loadgen + " --verify sometimes").exit_code, 2);
  EXPECT_EQ(RunCommand(loadgen + " --duration 0").exit_code, 2);  // unbounded
  EXPECT_EQ(RunCommand(std::string(FLASHKV_LOADGEN) +
                       " --target 127.0.0.1:1 --rpc-timeout 2 --requests 1")
                .exit_code,
            1);
}

}  // namespace
}  // namespace flashkv::testing

namespace flashkv::testing {
namespace {

TEST_F(CliTest, ModelRunnerExampleMatches) {
  RunResult r = RunCommand(std::string(FLASHKV_MODEL_RUNNER) + " --target " + server_.target() +
                           " --sequences 3 --prompt 9 --decode 3");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("max |server - CPU|"), std::string::npos) << r.out;
  EXPECT_EQ(server_.service().live_sequences(), 0);
}

}  // namespace
}  // namespace flashkv::testing
