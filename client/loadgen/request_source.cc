#include "request_source.h"

#include <algorithm>

namespace flashkv::loadgen {

RequestSource::RequestSource(const LoadgenConfig& config, int64_t max_context, absl::Time start)
    : config_(config), max_context_(max_context), rng_(config.seed), next_arrival_(start) {
  std::uniform_int_distribution<int64_t> token(0, kVocabularySize - 1);
  absl::MutexLock lock(&mu_);
  for (int i = 0; i < config.prefix_pool; ++i) {
    std::vector<int64_t> prefix(static_cast<size_t>(config.prefix_len.Sample(rng_)));
    for (int64_t& t : prefix) t = token(rng_);
    pool_.push_back(std::move(prefix));
  }
  if (config.rate > 0) {
    next_arrival_ += absl::Seconds(std::exponential_distribution<double>(config.rate)(rng_));
  }
}

Request RequestSource::Make(absl::Time arrival) {
  Request r;
  r.number = issued_++;
  r.arrival = arrival;
  std::uniform_int_distribution<int64_t> token(0, kVocabularySize - 1);
  if (!pool_.empty() && std::bernoulli_distribution(config_.prefix_fraction)(rng_)) {
    r.prompt = pool_[std::uniform_int_distribution<size_t>(0, pool_.size() - 1)(rng_)];
    r.from_pool = true;
  }
  const int64_t own = config_.prompt_len.Sample(rng_);
  for (int64_t i = 0; i < own; ++i) r.prompt.push_back(token(rng_));
  // Fit the server's context: the prompt leaves room for at least one decode's K/V.
  if (static_cast<int64_t>(r.prompt.size()) > max_context_ - 1) {
    r.prompt.resize(static_cast<size_t>(std::max<int64_t>(max_context_ - 1, 1)));
  }
  r.output_len = std::clamp<int64_t>(config_.output_len.Sample(rng_), 1,
                                     std::max<int64_t>(max_context_ - r.prompt.size(), 1));
  return r;
}

std::optional<Request> RequestSource::Next(absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (stopped_ || (config_.requests > 0 && issued_ >= config_.requests)) return std::nullopt;
  if (config_.rate <= 0) return Make(now);
  if (next_arrival_ > now) return std::nullopt;
  Request r = Make(next_arrival_);
  next_arrival_ += absl::Seconds(std::exponential_distribution<double>(config_.rate)(rng_));
  return r;
}

absl::Time RequestSource::NextAvailable(absl::Time now) const {
  absl::MutexLock lock(&mu_);
  if (stopped_ || (config_.requests > 0 && issued_ >= config_.requests)) {
    return absl::InfiniteFuture();
  }
  return config_.rate <= 0 ? now : next_arrival_;
}

bool RequestSource::Exhausted() const {
  absl::MutexLock lock(&mu_);
  return stopped_ || (config_.requests > 0 && issued_ >= config_.requests);
}

void RequestSource::Stop() {
  absl::MutexLock lock(&mu_);
  stopped_ = true;
}

int64_t RequestSource::Backlog(absl::Time now) const {
  absl::MutexLock lock(&mu_);
  if (config_.rate <= 0 || next_arrival_ > now) return 0;
  // Arrivals between next_arrival_ and now, in expectation (the schedule is drawn lazily).
  return 1 + static_cast<int64_t>(absl::ToDoubleSeconds(now - next_arrival_) * config_.rate);
}

}  // namespace flashkv::loadgen
