#include "run_stats.h"

#include <algorithm>

namespace flashkv::loadgen {

constexpr size_t kMaxExamples = 8;

void VerificationStats::Merge(const VerificationStats& o) {
  steps_seen += o.steps_seen;
  steps_checked += o.steps_checked;
  entries_checked += o.entries_checked;
  elements_checked += o.elements_checked;
  mismatched_entries += o.mismatched_entries;
  mismatched_elements += o.mismatched_elements;
  max_abs_error = std::max(max_abs_error, o.max_abs_error);
  for (const std::string& e : o.examples) {
    if (examples.size() < kMaxExamples) examples.push_back(e);
  }
}

TimelineBucket& RunStats::At(double seconds) {
  const size_t i = static_cast<size_t>(std::max(0.0, seconds));
  if (timeline.size() <= i) timeline.resize(i + 1);
  return timeline[i];
}

void RunStats::Merge(const RunStats& o) {
  for (const auto& [name, h] : o.latency) latency[name].Merge(h);
  for (const auto& [key, n] : o.expected_errors) expected_errors[key] += n;
  for (const auto& [key, n] : o.unexpected_errors) unexpected_errors[key] += n;
  for (const std::string& e : o.error_examples) {
    if (error_examples.size() < kMaxExamples) error_examples.push_back(e);
  }
  requests_started += o.requests_started;
  requests_completed += o.requests_completed;
  requests_aborted += o.requests_aborted;
  requests_preempted += o.requests_preempted;
  requests_rejected += o.requests_rejected;
  requests_incomplete += o.requests_incomplete;
  prompt_tokens += o.prompt_tokens;
  cached_tokens += o.cached_tokens;
  prefill_tokens += o.prefill_tokens;
  decode_tokens += o.decode_tokens;
  steps += o.steps;
  passes += o.passes;
  verification.Merge(o.verification);
  if (timeline.size() < o.timeline.size()) timeline.resize(o.timeline.size());
  for (size_t i = 0; i < o.timeline.size(); ++i) {
    timeline[i].prefill_tokens += o.timeline[i].prefill_tokens;
    timeline[i].decode_tokens += o.timeline[i].decode_tokens;
    timeline[i].steps += o.timeline[i].steps;
    timeline[i].completed += o.timeline[i].completed;
    timeline[i].errors += o.timeline[i].errors;
  }
}

}  // namespace flashkv::loadgen
