#include "histogram.h"

#include <algorithm>
#include <cmath>

namespace flashkv::loadgen {
namespace {
constexpr int kOctaves = 48;  // up to 2^48 ns, ~3 days
}

LatencyHistogram::LatencyHistogram() : buckets_(kOctaves << kSubBits, 0) {}

int LatencyHistogram::BucketOf(int64_t ns) {
  if (ns < (1 << kSubBits)) return static_cast<int>(std::max<int64_t>(ns, 0));
  const int octave = 63 - __builtin_clzll(static_cast<uint64_t>(ns));  // >= kSubBits
  const int sub = static_cast<int>((ns >> (octave - kSubBits)) & ((1 << kSubBits) - 1));
  const int bucket = ((octave - kSubBits + 1) << kSubBits) + sub;
  return std::min(bucket, (kOctaves << kSubBits) - 1);
}

double LatencyHistogram::BucketValueMs(int bucket) {
  if (bucket < (1 << kSubBits)) return bucket * 1e-6;
  const int octave = (bucket >> kSubBits) + kSubBits - 1;
  const int sub = bucket & ((1 << kSubBits) - 1);
  const double width = std::ldexp(1.0, octave - kSubBits);
  const double low = std::ldexp(1.0, octave) + sub * width;
  return (low + width / 2) * 1e-6;
}

void LatencyHistogram::Record(absl::Duration d) {
  const int64_t ns = std::max<int64_t>(absl::ToInt64Nanoseconds(d), 0);
  ++buckets_[BucketOf(ns)];
  min_ns_ = count_ == 0 ? ns : std::min(min_ns_, ns);
  max_ns_ = std::max(max_ns_, ns);
  sum_ns_ += static_cast<double>(ns);
  ++count_;
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  if (other.count_ == 0) return;
  for (size_t i = 0; i < buckets_.size(); ++i) buckets_[i] += other.buckets_[i];
  min_ns_ = count_ == 0 ? other.min_ns_ : std::min(min_ns_, other.min_ns_);
  max_ns_ = std::max(max_ns_, other.max_ns_);
  sum_ns_ += other.sum_ns_;
  count_ += other.count_;
}

double LatencyHistogram::MeanMs() const { return count_ ? sum_ns_ / count_ * 1e-6 : 0; }
double LatencyHistogram::MaxMs() const { return max_ns_ * 1e-6; }
double LatencyHistogram::MinMs() const { return min_ns_ * 1e-6; }

double LatencyHistogram::PercentileMs(double q) const {
  if (count_ == 0) return 0;
  const auto rank = static_cast<uint64_t>(std::ceil(std::clamp(q, 0.0, 1.0) * count_));
  uint64_t seen = 0;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    seen += buckets_[i];
    // Clamp to the exact extremes so p0/p100 and single samples report true values.
    if (seen >= std::max<uint64_t>(rank, 1)) {
      return std::clamp(BucketValueMs(static_cast<int>(i)), MinMs(), MaxMs());
    }
  }
  return MaxMs();
}

std::vector<std::pair<double, double>> LatencyHistogram::Cdf() const {
  std::vector<std::pair<double, double>> points;
  uint64_t seen = 0;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    if (buckets_[i] == 0) continue;
    seen += buckets_[i];
    points.emplace_back(std::clamp(BucketValueMs(static_cast<int>(i)), MinMs(), MaxMs()),
                        static_cast<double>(seen) / count_);
  }
  return points;
}

}  // namespace flashkv::loadgen
