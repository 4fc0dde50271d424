#pragma once

// A log-linear latency histogram: 32 sub-buckets per power of two of nanoseconds, so any
// percentile is within ~3% of the recorded value, in fixed memory however long the run. Exact
// count, sum, min and max. Mergeable, for per-runner histograms combined at the end.
//
// Thread-safety: none; each runner owns its histograms.

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/time/time.h"

namespace flashkv::loadgen {

class LatencyHistogram {
 public:
  LatencyHistogram();

  void Record(absl::Duration d);
  void Merge(const LatencyHistogram& other);

  uint64_t count() const { return count_; }
  // In milliseconds; 0 when empty.
  double MeanMs() const;
  double MaxMs() const;
  double MinMs() const;
  // q in [0, 1]: the smallest recorded bucket value with at least q of the samples at or below.
  double PercentileMs(double q) const;
  // (value ms, fraction of samples <= value) at each non-empty bucket, for CDF plots.
  std::vector<std::pair<double, double>> Cdf() const;

 private:
  static constexpr int kSubBits = 5;  // 32 sub-buckets per octave
  static int BucketOf(int64_t ns);
  static double BucketValueMs(int bucket);  // the bucket's midpoint

  std::vector<uint64_t> buckets_;
  uint64_t count_ = 0;
  double sum_ns_ = 0;
  int64_t min_ns_ = 0;
  int64_t max_ns_ = 0;
};

}  // namespace flashkv::loadgen
