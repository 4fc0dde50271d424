#pragma once

// The parameter space of the attention sweeps. Every suite covers the full cross product of the
// small axes (backend x dtype x head dim x causal) and, for each point, a few variants; a variant
// picks a shape set, GQA group, page size, layout and softmax scale by rotation, so that every
// choice of those meets every dtype and head dim without running the whole product.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/testbed.h"

namespace flashkv::testbed {

inline constexpr DType kAllDTypes[] = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};
inline constexpr int kSweepVariants = 3;

struct SweepParam {
  Backend backend = Backend::kCpu;
  DType dtype = DType::kFloat16;
  int head_dim = 64;
  bool causal = false;
  int variant = 0;
};

std::vector<SweepParam> SweepParams(Backend backend);
void PrintTo(const SweepParam& param, std::ostream* os);
// "fp16_d64_causal_v1" (the backend is the instantiation's prefix).
std::string SweepParamName(const ::testing::TestParamInfo<SweepParam>& info);

// The rotation index of a point: head-dim index + dtype index + 3 * variant. With up to 9
// options, every head dim and every dtype meets every option.
int SweepRotation(const SweepParam& param);

template <typename T>
const T& Pick(const std::vector<T>& options, int rotation) {
  return options[static_cast<size_t>(rotation) % options.size()];
}

// The config of a point: its dtype, head dim and causal flag, Hq = group * num_heads_kv, and a
// rotated layout set, softmax scale (default, 0.3, or 1.0 for peaked scores) and LSE request.
AttentionConfig SweepConfig(const SweepParam& param, int group, int num_heads_kv);

inline const std::vector<int> kSweepPageSizes = {1, 16, 19, 256};

// The random problem of a sweep point, its shape (and page size) chosen by rotation from the
// case tables in sweep.cc. `description` receives the shape for failure messages.
FixedProblem SweepFixedProblem(const SweepParam& param, Rng& rng, std::string* description);
VarlenProblem SweepVarlenProblem(const SweepParam& param, Rng& rng, std::string* description);
PagedProblem SweepPagedProblem(const SweepParam& param, Rng& rng, std::string* description);

}  // namespace flashkv::testbed
