// flashkv_cpu_bench: GFLOP/s of the CPU attention kernel (flashkv::cpu::Attention) beside the plain
// triple-loop reference on the same inputs and beside the machine's FMA peak, all measured here.
//
//   flashkv_cpu_bench                 B=1 Hq=32 Hkv=8 D=128 S=2048 causal, fp32 and bf16
//   flashkv_cpu_bench --quick         the same at S=512, fewer repetitions (seconds)
//   flashkv_cpu_bench --help          every option

#include <algorithm>
#include <chrono>
#include <time.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "cpu/reference_attention.h"
#include "fma_peak.h"
#include "flashkv/cpu_backend.h"

namespace flashkv::bench {
namespace {

struct Config {
  int batch = 1;
  int heads_q = 32;
  int heads_kv = 8;
  int head_dim = 128;
  int seqlen_q = 2048;
  int seqlen_kv = 2048;
  bool causal = true;
  std::vector<DType> dtypes = {DType::kFloat32, DType::kBFloat16};
  std::vector<cpu::Isa> isas;  // empty: the active (best) one
  int threads = 0;             // 0: the pool's default
  int repeats = 3;
  int naive_heads = 2;
  double peak_seconds = 0.3;
};

void PrintHelp() {
  std::printf(
      "flashkv_cpu_bench: CPU attention GFLOP/s beside a naive loop and the FMA peak\n"
      "  --batch N          (1)      --heads-q N (32)   --heads-kv N (8)   --head-dim N (128)\n"
      "  --seqlen N         (2048)   sets both --seqlen-q and --seqlen-kv\n"
      "  --seqlen-q N, --seqlen-kv N\n"
      "  --causal | --no-causal      (causal)\n"
      "  --dtypes LIST      (fp32,bf16) of fp32, bf16, fp16\n"
      "  --isa LIST         (the best available) of generic, avx2, avx512, or all\n"
      "  --threads N        (all CPUs of this process)\n"
      "  --repeats N        (3) timed runs per row; the best is reported\n"
      "  --naive-heads N    (2) query heads the single-threaded naive loop computes\n"
      "  --quick            seqlen 512, 1 repeat, 1 naive head, short peak measurement\n"
      "FLOPs = 4 * B * Hq * Sq * Skv * D, halved when causal.\n");
}

bool ParseInt(const char* text, int min_value, int* out) {
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || v < min_value || v > (1 << 30)) return false;
  *out = static_cast<int>(v);
  return true;
}

std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    parts.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return parts;
}

// Parses argv into *config; prints the problem and returns false on a bad or unknown flag.
bool ParseArgs(int argc, char** argv, Config* c, bool* help) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    auto int_flag = [&](int min_value, int* out) {
      if (value == nullptr || !ParseInt(value, min_value, out)) {
        std::fprintf(stderr, "%s needs an integer >= %d\n", flag.c_str(), min_value);
        return false;
      }
      ++i;
      return true;
    };
    int seqlen = 0;
    if (flag == "--help" || flag == "-h") {
      *help = true;
    } else if (flag == "--quick") {
      c->seqlen_q = c->seqlen_kv = 512;
      c->repeats = 1;
      c->naive_heads = 1;
      c->peak_seconds = 0.1;
    } else if (flag == "--causal") {
      c->causal = true;
    } else if (flag == "--no-causal") {
      c->causal = false;
    } else if (flag == "--batch") {
      if (!int_flag(1, &c->batch)) return false;
    } else if (flag == "--heads-q") {
      if (!int_flag(1, &c->heads_q)) return false;
    } else if (flag == "--heads-kv") {
      if (!int_flag(1, &c->heads_kv)) return false;
    } else if (flag == "--head-dim") {
      if (!int_flag(1, &c->head_dim)) return false;
    } else if (flag == "--seqlen") {
      if (!int_flag(1, &seqlen)) return false;
      c->seqlen_q = c->seqlen_kv = seqlen;
    } else if (flag == "--seqlen-q") {
      if (!int_flag(1, &c->seqlen_q)) return false;
    } else if (flag == "--seqlen-kv") {
      if (!int_flag(1, &c->seqlen_kv)) return false;
    } else if (flag == "--threads") {
      if (!int_flag(1, &c->threads)) return false;
    } else if (flag == "--repeats") {
      if (!int_flag(1, &c->repeats)) return false;
    } else if (flag == "--naive-heads") {
      if (!int_flag(0, &c->naive_heads)) return false;
    } else if (flag == "--dtypes" && value != nullptr) {
      c->dtypes.clear();
      for (const std::string& name : SplitCommas(value)) {
        const std::optional<DType> dtype = ParseDType(name);
        if (!dtype) {
          std::fprintf(stderr, "--dtypes: unknown dtype '%s'\n", name.c_str());
          return false;
        }
        c->dtypes.push_back(*dtype);
      }
      ++i;
    } else if (flag == "--isa" && value != nullptr) {
      c->isas.clear();
      for (const std::string& name : SplitCommas(value)) {
        bool known = false;
        for (cpu::Isa isa : {cpu::Isa::kGeneric, cpu::Isa::kAvx2, cpu::Isa::kAvx512}) {
          if (name == "all" || name == cpu::IsaName(isa)) {
            known = true;
            if (name != "all" || cpu::IsaAvailable(isa)) c->isas.push_back(isa);
          }
        }
        if (!known) {
          std::fprintf(stderr, "--isa: unknown instruction set '%s'\n", name.c_str());
          return false;
        }
      }
      ++i;
    } else {
      std::fprintf(stderr, "unknown or incomplete flag '%s' (see --help)\n", flag.c_str());
      return false;
    }
  }
  c->naive_heads = std::min(c->naive_heads, c->heads_q);
  return true;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

std::string LoadAverage() {
  std::ifstream file("/proc/loadavg");
  std::string one, five;
  if (!(file >> one >> five)) return "unknown";
  return one + " (1 min), " + five + " (5 min)";
}

template <class T>
std::vector<T> RandomTensor(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<T> t(n);
  for (T& x : t) x = FromFloat<T>(normal(rng));
  return t;
}

double ProcessCpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

struct Row {
  double kernel_seconds = 0;
  double kernel_gflops = 0;
  // FLOPs per CPU-second of the process (pool workers park on a condition variable, so CPU time
  // is compute time), times the thread count.
  double kernel_gflops_cpu_time = 0;
  double naive_gflops = 0;  // per CPU time, one thread
  double max_diff = 0;  // kernel vs naive on the naive slice
};

// Times the kernel (best of `repeats`) and the naive loop on heads [0, naive_heads).
template <class T>
bool RunRow(const Config& c, DType dtype, Row* row) {
  std::mt19937 rng(2024);
  const size_t q_elems = size_t{1} * c.batch * c.seqlen_q * c.heads_q * c.head_dim;
  const size_t kv_elems = size_t{1} * c.batch * c.seqlen_kv * c.heads_kv * c.head_dim;
  const std::vector<T> q = RandomTensor<T>(q_elems, rng);
  const std::vector<T> k = RandomTensor<T>(kv_elems, rng);
  const std::vector<T> v = RandomTensor<T>(kv_elems, rng);
  std::vector<T> out(q_elems);
  std::vector<T> naive_out(q_elems);
  AttentionOptions options;
  options.causal = c.causal;
  FixedAttentionArgs args =
      MakeDenseFixedArgs(dtype, c.batch, c.seqlen_q, c.seqlen_kv, c.heads_q, c.heads_kv,
                         c.head_dim, q.data(), k.data(), v.data(), out.data(), nullptr, options);
  const double flops_per_head = 4.0 * c.batch * c.seqlen_q * c.seqlen_kv * c.head_dim *
                                (c.causal ? 0.5 : 1.0);

  KernelStatus status = cpu::Attention(args);  // warm-up: pool threads, workspaces, caches
  if (!status.ok()) {
    std::fprintf(stderr, "cpu::Attention: %s\n", status.ToString().c_str());
    return false;
  }
  row->kernel_seconds = 1e30;
  double cpu_seconds = 1e30;
  for (int r = 0; r < c.repeats; ++r) {
    const double cpu_start = ProcessCpuSeconds();
    const auto start = std::chrono::steady_clock::now();
    status = cpu::Attention(args);
    row->kernel_seconds = std::min(row->kernel_seconds, Seconds(start));
    cpu_seconds = std::min(cpu_seconds, ProcessCpuSeconds() - cpu_start);
  }
  const double flops = flops_per_head * c.heads_q;
  row->kernel_gflops = flops / row->kernel_seconds / 1e9;
  row->kernel_gflops_cpu_time = flops / cpu_seconds * cpu::NumThreads() / 1e9;

  if (c.naive_heads > 0) {
    FixedAttentionArgs naive_args = args;
    naive_args.out = naive_out.data();
    const double cpu_start = ProcessCpuSeconds();
    cpu::NaiveAttention(naive_args, 0, c.naive_heads);  // one thread: process CPU time is its own
    row->naive_gflops = flops_per_head * c.naive_heads / (ProcessCpuSeconds() - cpu_start) / 1e9;
    for (int b = 0; b < c.batch; ++b) {
      for (int i = 0; i < c.seqlen_q; ++i) {
        for (int h = 0; h < c.naive_heads; ++h) {
          const size_t base = ((size_t{1} * b * c.seqlen_q + i) * c.heads_q + h) * c.head_dim;
          for (int d = 0; d < c.head_dim; ++d) {
            const double diff = std::fabs(static_cast<double>(ToFloat(out[base + d])) -
                                          ToFloat(naive_out[base + d]));
            row->max_diff = std::max(row->max_diff, diff);
          }
        }
      }
    }
  }
  return true;
}

}  // namespace
}  // namespace flashkv::bench

int main(int argc, char** argv) {
  using namespace flashkv;
  using namespace flashkv::bench;
  Config c;
  bool help = false;
  if (!ParseArgs(argc, argv, &c, &help)) return 2;
  if (help) {
    PrintHelp();
    return 0;
  }
  if (c.threads > 0) cpu::SetNumThreads(c.threads);
  const int threads = cpu::NumThreads();
  if (c.isas.empty()) c.isas.push_back(cpu::ActiveIsa());

  std::printf("flashkv CPU attention: B=%d Hq=%d Hkv=%d D=%d Sq=%d Skv=%d %s, %d threads\n",
              c.batch, c.heads_q, c.heads_kv, c.head_dim, c.seqlen_q, c.seqlen_kv,
              c.causal ? "causal" : "non-causal", threads);
  std::printf("load average before the run: %s\n", LoadAverage().c_str());
  const FmaPeak peak = MeasureFmaPeak(threads, c.peak_seconds);
  std::printf("FMA peak (%s, %d threads, float32): %.2f GFLOP/s wall clock, %.2f GFLOP/s per "
              "CPU time\n",
              peak.isa, peak.threads, peak.gflops, peak.gflops_cpu_time);
  if (c.naive_heads > 0) {
    std::printf("naive = plain triple loop (cpu::NaiveAttention), 1 thread, query heads [0, %d) "
                "of the same inputs, GFLOP/s of that slice per CPU time; speed-up = kernel (all "
                "threads) / naive, both per CPU time\n",
                c.naive_heads);
  }
  std::printf("(wall: elapsed time; CPU time: FLOPs per CPU-second x threads, unaffected by "
              "other processes taking turns on the cores)\n");
  std::printf("\n| dtype | isa     | time (ms) | GFLOP/s | %% of peak | CPU-time GFLOP/s | "
              "%% of peak | naive GFLOP/s | speedup | max abs(kernel - naive) |\n");
  std::printf("|-------|---------|----------:|--------:|----------:|-----------------:|"
              "----------:|--------------:|--------:|------------------------:|\n");
  int failures = 0;
  for (cpu::Isa isa : c.isas) {
    const KernelStatus set = cpu::SetIsa(isa);
    if (!set.ok()) {
      std::fprintf(stderr, "%s\n", set.ToString().c_str());
      ++failures;
      continue;
    }
    for (DType dtype : c.dtypes) {
      Row row;
      bool ok = false;
      switch (dtype) {
        case DType::kFloat32:
          ok = RunRow<float>(c, dtype, &row);
          break;
        case DType::kBFloat16:
          ok = RunRow<BFloat16>(c, dtype, &row);
          break;
        case DType::kFloat16:
          ok = RunRow<Float16>(c, dtype, &row);
          break;
      }
      if (!ok) {
        ++failures;
        continue;
      }
      std::printf("| %-5s | %-7s | %9.1f | %7.1f | %8.1f%% | %16.1f | %8.1f%% |", DTypeName(dtype),
                  cpu::IsaName(isa), row.kernel_seconds * 1e3, row.kernel_gflops,
                  peak.gflops > 0 ? 100.0 * row.kernel_gflops / peak.gflops : 0.0,
                  row.kernel_gflops_cpu_time,
                  peak.gflops_cpu_time > 0
                      ? 100.0 * row.kernel_gflops_cpu_time / peak.gflops_cpu_time
                      : 0.0);
      if (c.naive_heads > 0) {
        std::printf(" %13.2f | %6.0fx | %23.2e |\n", row.naive_gflops,
                    row.kernel_gflops_cpu_time / row.naive_gflops, row.max_diff);
      } else {
        std::printf(" %13s | %7s | %23s |\n", "-", "-", "-");
      }
      std::fflush(stdout);
    }
  }
  std::printf("\nload average after the run: %s\n", LoadAverage().c_str());
  return failures == 0 ? 0 : 1;
}
