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

namespace flashkv::loadgen {

inline uint64_t SplitMix64(uint64_t x) {
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

// Writes `count` values of `dtype` to `dst`, a function of `seed` only.
void FillValues(DType dtype, uint64_t seed, int64_t count, void* dst);

// K and V rows ([Hkv, D] each, `row_elements` values) of the token whose chain hash is `chain`,
// at `layer`.
inline uint64_t KeySeed(uint64_t chain, int layer) { return SplitMix64(chain + 2 * layer + 1); }
inline uint64_t ValueSeed(uint64_t chain, int layer) { return SplitMix64(chain + 2 * layer + 2); }

}  // namespace flashkv::loadgen
