#pragma once

// Distributions of prompt and output lengths, parsed from flag strings:
//   "N" or "fixed:N"               always N
//   "uniform:A:B"                  uniform integers in [A, B]
//   "lognormal:MEDIAN:SIGMA[:MAX]" long-tailed, clipped to [1, MAX] (MAX default 100 * MEDIAN)
//   "chat-prompt[:SCALE]"          a chat-like prompt mix: 70% short (median 128), 25% long
//   "chat-output[:SCALE]"          (median 1024), 5% document-sized (median 4096); outputs 60%
//                                  median 64, 35% median 256, 5% median 1024. SCALE multiplies
//                                  every median (e.g. 0.125 for a CPU server).
// Thread-safety: immutable after parsing; Sample() takes the caller's generator.

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace flashkv::loadgen {

class LengthDistribution {
 public:
  static absl::StatusOr<LengthDistribution> Parse(const std::string& spec);
  static LengthDistribution Fixed(int64_t n);

  // A length >= 1.
  int64_t Sample(std::mt19937_64& rng) const;
  // The spec it was parsed from, for reports.
  const std::string& spec() const { return spec_; }
  // Largest value Sample() can return.
  int64_t max() const;

 private:
  // A mixture of clipped log-normal / uniform components, chosen by weight.
  struct Component {
    double weight = 1;
    bool lognormal = false;
    int64_t lo = 1, hi = 1;  // uniform bounds (fixed: lo == hi); lognormal: clip [lo, hi]
    double median = 0, sigma = 0;
  };
  std::string spec_;
  std::vector<Component> components_;
};

}  // namespace flashkv::loadgen
