#pragma once

// The plain reference beside the blocked CPU kernel: the textbook triple loop (scores, softmax,
// weighted sum) in float32, one thread. Benchmarks compare the blocked kernel with it; it is easy
// to read when a blocked result looks wrong. (The tests use their own float64 reference.)

#include "flashkv/attention.h"

namespace flashkv::cpu {

// Fixed-length attention for query heads [head_begin, head_end) only (a slice keeps it affordable
// in benchmarks), with the same semantics as cpu::Attention. `args` must pass ValidateFixed.
void NaiveAttention(const FixedAttentionArgs& args, int head_begin, int head_end);

}  // namespace flashkv::cpu
