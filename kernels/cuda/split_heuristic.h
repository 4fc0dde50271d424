#pragma once

// When to split each query tile's keys across CTAs (flash-decoding). Pure host arithmetic, kept
// apart from any CUDA header so it is unit-tested on machines without a GPU.

#include <cstdint>

namespace flashkv::cuda {

struct SplitProblem {
  int64_t ctas = 0;       // CTAs with work without splitting (query tiles x head groups)
  int slots = 0;          // CTAs the GPU runs at once: multiprocessors x resident CTAs each
  int key_tiles = 0;      // key tiles of the longest sequence
  int max_splits = 128;   // bound on partial results per row (workspace and combine cost)
};

// Returns 1 when the launch already fills the GPU (>= 80% of one wave) or has a single key tile.
// Otherwise the smallest split count whose wave efficiency (work / (waves * slots)) is within 85%
// of the best count's, skipping counts that leave a split without key tiles' worth of work
// differing from fewer splits (same ceil(key_tiles / s)). Fewer splits mean less workspace
// traffic and a cheaper combine, so ties go to the smaller count.
int ChooseNumSplits(const SplitProblem& problem);

}  // namespace flashkv::cuda
