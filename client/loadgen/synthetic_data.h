#pragma once

// The data a simulated model runner sends. K and V of a token are a fixed function of the token
// ids up to and including it (a chained hash) and of the layer, as in a real model, so that two
// sequences sharing a prompt prefix send identical K/V for it and the server's prefix cache may
// serve one sequence's K/V to another: the load generator can then still recompute every answer.
// The function has no run seed, so prefixes cached by an earlier run stay consistent too.
// Queries are fresh random values from the runner's generator.
//
// Values are uniform in (-1, 1), never zero (a zero input would hide indexing errors), with 16
// random bits each; four values per 64-bit draw keeps generation cheap beside the server's work.

#include <cstdint>

#include "flashkv/dtype.h"

// Host and device (device_inputs.cu generates the same values on the GPU).
#ifdef __CUDACC__
#define FLASHKV_SYNTHETIC_FN __host__ __device__ inline
#else
#define FLASHKV_SYNTHETIC_FN inline
#endif

namespace flashkv::loadgen {

FLASHKV_SYNTHETIC_FN uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Hash of a token prefix: Chain(chain of the previous tokens, this token id).
inline uint64_t ChainHash(uint64_t previous, int64_t token_id) {
  return SplitMix64(previous ^ SplitMix64(static_cast<uint64_t>(token_id)));
}
// The chain value before the first token.
inline constexpr uint64_t kChainStart = 0x6a09e667f3bcc908ull;

// Writes `count` values of `dtype` to `dst`, a function of `seed` only: values 4g .. 4g + 3 are
// SyntheticValue of the four 16-bit fields of SyntheticBits(seed, g), lowest first.
void FillValues(DType dtype, uint64_t seed, int64_t count, void* dst);

FLASHKV_SYNTHETIC_FN uint64_t SyntheticBits(uint64_t seed, int64_t group) {
  return SplitMix64(seed + static_cast<uint64_t>(group + 1) * 0x9e3779b97f4a7c15ull);
}
// (u + 0.5) / 32768 - 1 for u in [0, 65535]: symmetric around zero, never zero, exact in float.
FLASHKV_SYNTHETIC_FN float SyntheticValue(uint32_t u) {
  return (static_cast<float>(u & 0xffff) + 0.5f) * (1.0f / 32768.0f) - 1.0f;
}

// K and V rows ([Hkv, D] each, `row_elements` values) of the token whose chain hash is `chain`,
// at `layer`.
inline uint64_t KeySeed(uint64_t chain, int layer) { return SplitMix64(chain + 2 * layer + 1); }
inline uint64_t ValueSeed(uint64_t chain, int layer) { return SplitMix64(chain + 2 * layer + 2); }

}  // namespace flashkv::loadgen
