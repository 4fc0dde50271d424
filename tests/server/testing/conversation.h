#pragma once

// The client side of Step conversations, with a float64 model of every sequence's K/V per layer,
// so that every output can be checked against dense causal attention over the same K/V.

#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "flashkv/server/config.h"
#include "flashkv/v1/kvcache.pb.h"

namespace flashkv::testing {

class ReferenceCache {
 public:
  explicit ReferenceCache(const server::ModelShape& model) : model_(model) {}

  // Random q, k and v (rounded to the model's dtype) for `n` new tokens of `sequence`.
  flashkv::v1::StepEntry MakeEntry(const std::string& sequence, int n, std::mt19937_64& rng,
                                   std::vector<int64_t> token_ids = {}) const;
  // K/V rows that depend only on (token id, layer), so that two sequences with one prompt hold
  // identical caches, as prefix caching assumes; q comes from `q_rng`.
  flashkv::v1::StepEntry EntryForTokens(const std::string& sequence,
                                        const std::vector<int64_t>& token_ids, int layer,
                                        std::mt19937_64& q_rng) const;

  // The step was applied: appends the entry's K/V to `sequence` at `layer` and compares `out`
  // with dense causal attention of its queries over the layer's whole context. Returns "" when
  // every element is within the dtype's tolerance, else a description.
  std::string Apply(int layer, const flashkv::v1::StepEntry& entry, const flashkv::v1::Tensor& out);
  // Appends the entry's K/V without a step to compare (K/V the server holds by other means, such
  // as prefix-cache hits).
  void Append(int layer, const flashkv::v1::StepEntry& entry);
  // The expected output without changing the model.
  std::vector<double> Expected(int layer, const flashkv::v1::StepEntry& entry) const;

  void Fork(const std::string& parent, const std::string& child) { kv_[child] = kv_[parent]; }
  void Free(const std::string& sequence) { kv_.erase(sequence); }
  int Length(const std::string& sequence, int layer) const;

 private:
  struct LayerKv {
    std::vector<double> k, v;  // [tokens, Hkv, D]
  };
  server::ModelShape model_;
  std::map<std::string, std::map<int, LayerKv>> kv_;
};

// A StepRequest of `entries` at `layer`.
flashkv::v1::StepRequest MakeStep(int layer, std::vector<flashkv::v1::StepEntry> entries,
                                  uint64_t step_id = 0);

// The StepBatch of `entries` (ids, num_tokens, and q, k, v concatenated in entry order), with
// its tensors in bytes.
flashkv::v1::StepBatch MakeBatch(const std::vector<flashkv::v1::StepEntry>& entries);
// The rows [row, row + n) of a batch output `out` [T, H, D] (in its bytes or at `data`), as a
// tensor of their own.
flashkv::v1::Tensor OutputRows(const flashkv::v1::Tensor& out, const uint8_t* data, int64_t row,
                               int64_t n);

}  // namespace flashkv::testing
