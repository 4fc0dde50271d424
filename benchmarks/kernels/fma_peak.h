#pragma once

// The machine's floating-point peak as the CPU attention benchmark measures it: float32 FMA
// throughput of all threads, with the widest instruction set the running CPU has.

namespace flashkv::bench {

struct FmaPeak {
  const char* isa = "";  // "avx512", "avx2" or "generic" (multiply + add where FMA is unknown)
  int threads = 0;
  double gflops = 0;  // all threads, wall clock
  // FLOPs per second of CPU time the threads got, times the thread count: the peak of `threads`
  // cores while the benchmark runs on them, whatever else shares the machine.
  double gflops_cpu_time = 0;
};

// Runs independent FMA chains on `threads` threads for about `seconds`, best of three rounds.
FmaPeak MeasureFmaPeak(int threads, double seconds);

// Per-instruction-set loops (fma_peak_*.cc): `iterations` rounds of kChains independent FMAs on
// full vectors; return the FLOPs done (2 per lane per FMA) and fold the result into `sink` so the
// work cannot be optimised away.
double FmaLoopGeneric(long iterations, float* sink);
double FmaLoopAvx2(long iterations, float* sink);
double FmaLoopAvx512(long iterations, float* sink);

}  // namespace flashkv::bench
