#pragma once

// The compiled attention kernels, and the one place a call picks one of them.

#include <cstdint>

#include "cpu/attention_problem.h"
#include "cpu/tile_config.h"
#include "flashkv/dtype.h"

namespace flashkv::cpu {

struct AttentionKernelEntry {
  TileTaskFn run = nullptr;  // null: not compiled
  SplitMergeFn merge = nullptr;
  TileShape shape;
  int64_t workspace_floats = 0;
  int64_t partial_slot_floats = 0;  // one split-KV partial slot
};

// The dispatch site of the attention ops: the kernel for (isa, dtype, head_dim), or an entry with
// run == nullptr when the build left the pair out (FLASHKV_DTYPES, FLASHKV_HEAD_DIMS) or has no
// kernels for `isa`.
AttentionKernelEntry FindAttentionKernel(Isa isa, DType dtype, int head_dim);

// Whether this build compiled kernels for `isa` (whatever the running CPU supports).
bool IsaCompiled(Isa isa);

}  // namespace flashkv::cpu
