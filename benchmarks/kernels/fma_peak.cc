#include "fma_peak.h"

#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace flashkv::bench {
namespace {

using LoopFn = double (*)(long, float*);

// The widest loop this build has and this CPU runs.
LoopFn BestLoop(const char** isa) {
#if defined(FLASHKV_BENCH_HAVE_AVX512)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
    *isa = "avx512";
    return FmaLoopAvx512;
  }
#endif
#if defined(FLASHKV_BENCH_HAVE_AVX2)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    *isa = "avx2";
    return FmaLoopAvx2;
  }
#endif
  *isa = "generic";
  return FmaLoopGeneric;
}

double ThreadCpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

struct RoundResult {
  double flops_per_second = 0;      // wall clock
  double flops_per_cpu_second = 0;  // per thread, CPU time
};

// `threads` threads each running `iterations` rounds, started together.
RoundResult RunRound(LoopFn loop, int threads, long iterations) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<double> flops(static_cast<size_t>(threads));
  std::vector<double> cpu_seconds(static_cast<size_t>(threads));
  std::vector<float> sinks(static_cast<size_t>(threads));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      const double start = ThreadCpuSeconds();
      flops[static_cast<size_t>(t)] = loop(iterations, &sinks[static_cast<size_t>(t)]);
      cpu_seconds[static_cast<size_t>(t)] = ThreadCpuSeconds() - start;
    });
  }
  while (ready.load() < threads) {
  }
  const auto start = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  for (std::thread& th : pool) th.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double total = 0;
  double total_cpu = 0;
  for (int t = 0; t < threads; ++t) {
    total += flops[static_cast<size_t>(t)];
    total_cpu += cpu_seconds[static_cast<size_t>(t)];
  }
  volatile float keep = 0;
  for (float s : sinks) keep = keep + s;
  return RoundResult{total / seconds, total / total_cpu};
}

}  // namespace

double FmaLoopGeneric(long iterations, float* sink) {
  // Portable vectors of the baseline target; multiply and add where it has no FMA.
  typedef float V __attribute__((vector_size(16)));
  constexpr int kChains = 12;
  V acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = V{} + static_cast<float>(i);
  const V mul = V{} + 0.999999f;
  const V add = V{} + 1e-6f;
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * mul + add;
  }
  V total = acc[0];
  for (int i = 1; i < kChains; ++i) total += acc[i];
  *sink += total[0];
  return 2.0 * 4 * kChains * static_cast<double>(iterations);
}

FmaPeak MeasureFmaPeak(int threads, double seconds) {
  FmaPeak peak;
  peak.threads = threads;
  const LoopFn loop = BestLoop(&peak.isa);
  // Calibrate on one thread, then size each round to about `seconds`.
  long iterations = 1 << 16;
  float sink = 0;
  for (;;) {
    const auto start = std::chrono::steady_clock::now();
    loop(iterations, &sink);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (t > 0.02) {
      iterations = static_cast<long>(iterations * seconds / t);
      break;
    }
    iterations *= 4;
  }
  for (int round = 0; round < 3; ++round) {
    const RoundResult r = RunRound(loop, threads, iterations);
    peak.gflops = std::max(peak.gflops, r.flops_per_second / 1e9);
    peak.gflops_cpu_time = std::max(peak.gflops_cpu_time, r.flops_per_cpu_second * threads / 1e9);
  }
  return peak;
}

}  // namespace flashkv::bench
