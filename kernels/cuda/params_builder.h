#pragma once

// Public args (flashkv/attention.h) -> AttentionParams + LaunchInfo. Host only; the args have been
// validated (Validate*) before these run.

#include "attention_params.h"
#include "flashkv/attention.h"
#include "launch.h"

namespace flashkv::cuda {

AttentionParams BuildParams(const FixedAttentionArgs& args);
AttentionParams BuildParams(const VarlenAttentionArgs& args);
AttentionParams BuildParams(const PagedAttentionArgs& args);

// Whether every tensor pointer and stride of the launch allows 16-byte vector access.
bool IsAligned16(const AttentionParams& params, int element_size);

}  // namespace flashkv::cuda
