#include "length_distribution.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace flashkv::loadgen {
namespace {

absl::Status Bad(const std::string& spec, const std::string& why) {
  return absl::InvalidArgumentError(
      absl::StrCat("length distribution '", spec, "': ", why,
                   " (use N, fixed:N, uniform:A:B, lognormal:MEDIAN:SIGMA[:MAX], "
                   "chat-prompt[:SCALE] or chat-output[:SCALE])"));
}

}  // namespace

LengthDistribution LengthDistribution::Fixed(int64_t n) {
  LengthDistribution d;
  d.spec_ = absl::StrCat(n);
  d.components_.push_back(Component{1, false, n, n, 0, 0});
  return d;
}

absl::StatusOr<LengthDistribution> LengthDistribution::Parse(const std::string& spec) {
  std::vector<std::string> parts = absl::StrSplit(spec, ':');
  std::vector<double> numbers;
  for (size_t i = 1; i < parts.size(); ++i) {
    double x;
    if (!absl::SimpleAtod(parts[i], &x) || !(x > 0)) return Bad(spec, "numbers must be > 0");
    numbers.push_back(x);
  }
  LengthDistribution d;
  d.spec_ = spec;
  const std::string& kind = parts[0];
  int64_t n;
  if (parts.size() == 1 && absl::SimpleAtoi(kind, &n)) {
    if (n < 1) return Bad(spec, "a length must be >= 1");
    d.components_.push_back(Component{1, false, n, n, 0, 0});
  } else if (kind == "fixed" && numbers.size() == 1) {
    const auto v = static_cast<int64_t>(numbers[0]);
    if (v < 1) return Bad(spec, "a length must be >= 1");
    d.components_.push_back(Component{1, false, v, v, 0, 0});
  } else if (kind == "uniform" && numbers.size() == 2) {
    const auto lo = static_cast<int64_t>(numbers[0]), hi = static_cast<int64_t>(numbers[1]);
    if (lo < 1 || hi < lo) return Bad(spec, "needs 1 <= A <= B");
    d.components_.push_back(Component{1, false, lo, hi, 0, 0});
  } else if (kind == "lognormal" && (numbers.size() == 2 || numbers.size() == 3)) {
    const double median = numbers[0];
    const auto hi = static_cast<int64_t>(numbers.size() == 3 ? numbers[2] : 100 * median);
    d.components_.push_back(Component{1, true, 1, std::max<int64_t>(hi, 1), median, numbers[1]});
  } else if ((kind == "chat-prompt" || kind == "chat-output") && numbers.size() <= 1) {
    const double scale = numbers.empty() ? 1.0 : numbers[0];
    // Shapes seen in chat traffic: most turns short, a long tail of pasted documents (prompts)
    // or long answers (outputs). The log-normal spread keeps each mode wide.
    struct Mode {
      double weight, median, sigma;
    };
    const std::vector<Mode> modes =
        kind == "chat-prompt"
            ? std::vector<Mode>{{0.70, 128, 0.8}, {0.25, 1024, 0.5}, {0.05, 4096, 0.3}}
            : std::vector<Mode>{{0.60, 64, 0.8}, {0.35, 256, 0.5}, {0.05, 1024, 0.4}};
    for (const Mode& m : modes) {
      const double median = std::max(1.0, m.median * scale);
      d.components_.push_back(Component{
          m.weight, true, 1, static_cast<int64_t>(std::ceil(median * 8)), median, m.sigma});
    }
  } else {
    return Bad(spec, "unknown form");
  }
  return d;
}

int64_t LengthDistribution::Sample(std::mt19937_64& rng) const {
  size_t pick = 0;
  if (components_.size() > 1) {
    double total = 0;
    for (const Component& c : components_) total += c.weight;
    double u = std::uniform_real_distribution<double>(0, total)(rng);
    while (pick + 1 < components_.size() && u >= components_[pick].weight) {
      u -= components_[pick].weight;
      ++pick;
    }
  }
  const Component& c = components_[pick];
  if (!c.lognormal) return std::uniform_int_distribution<int64_t>(c.lo, c.hi)(rng);
  const double x = std::lognormal_distribution<double>(std::log(c.median), c.sigma)(rng);
  return std::clamp<int64_t>(std::llround(x), c.lo, c.hi);
}

int64_t LengthDistribution::max() const {
  int64_t m = 1;
  for (const Component& c : components_) m = std::max(m, c.hi);
  return m;
}

}  // namespace flashkv::loadgen
