#include "split_heuristic.h"

#include <algorithm>
#include <vector>

namespace flashkv::cuda {

int ChooseNumSplits(const SplitProblem& problem) {
  if (problem.ctas <= 0 || problem.slots <= 0 || problem.key_tiles <= 1) return 1;
  if (problem.ctas >= static_cast<int64_t>(0.8 * problem.slots)) return 1;
  const int max_splits = std::max(
      1, std::min<int>({problem.max_splits, problem.key_tiles,
                        static_cast<int>((2 * static_cast<int64_t>(problem.slots)) /
                                         std::max<int64_t>(1, problem.ctas))}));
  auto tiles_per_split = [&](int s) { return (problem.key_tiles + s - 1) / s; };
  // A count is worth trying only if it changes the longest split (else it adds CTAs for nothing).
  auto eligible = [&](int s) { return s == 1 || tiles_per_split(s) != tiles_per_split(s - 1); };
  std::vector<double> efficiency(max_splits + 1, 0.0);
  double best = 0.0;
  for (int s = 1; s <= max_splits; ++s) {
    if (!eligible(s)) continue;
    const double waves = static_cast<double>(problem.ctas * s) / problem.slots;
    efficiency[s] = waves / static_cast<double>(static_cast<int64_t>(waves + 0.999999));
    best = std::max(best, efficiency[s]);
  }
  for (int s = 1; s <= max_splits; ++s) {
    if (eligible(s) && efficiency[s] >= 0.85 * best) return s;
  }
  return 1;
}

}  // namespace flashkv::cuda
