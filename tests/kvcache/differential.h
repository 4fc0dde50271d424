#pragma once

// The differential scenario shared by the CPU and GPU step tests: one sequence built plainly, one
// built through a prefix hit, a fork (copy-on-write) and a swap round trip, from the same K/V;
// their attention over whole steps is compared with each other and with a float64 reference.

#include <cstdint>
#include <string>
#include <vector>

#include "harness.h"

namespace flashkv::kvcache::kvtest {

inline constexpr int kStepLayers = 2;
inline constexpr int kStepKvHeads = 2;
inline constexpr int kStepQHeads = 4;

CacheConfig StepConfig(Backend backend, DType dtype, int page_size, int head_dim);

// Queries [rows, kStepQHeads, head_dim] in [-1, 1), already rounded to `dtype`.
std::vector<float> RandomQ(DType dtype, int rows, int head_dim, uint32_t seed);

// One committed step (append + attention) with queries `q`; returns the outputs, packed, as
// floats. Outputs are poisoned (NaN) before the run.
std::vector<float> RunStep(Harness& h, int layer, const std::vector<Step>& steps,
                           const std::vector<float>& q);

// float64 attention of the last n of `len` positions of `id` at `layer` (causal, bottom-right).
std::vector<double> Reference(const Harness& h, const std::string& id, int layer, int n, int len,
                              const std::vector<float>& q);

double Tolerance(DType dtype);

// The scenario. `bit_exact`: the two sequences' outputs must be identical bit for bit (CPU);
// otherwise within Tolerance of each other. Both are always checked against the reference.
void RunDifferential(const CacheConfig& config, bool bit_exact);

}  // namespace flashkv::kvcache::kvtest
