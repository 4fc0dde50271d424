#pragma once

// What the load generator measures. Each runner fills its own RunStats (no locking on the hot
// path); the orchestrator merges them into the report. LiveCounters are the few shared atomics
// the progress display reads while the run goes on.
//
// Thread-safety: RunStats none (one owner); LiveCounters atomics.

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "histogram.h"

namespace flashkv::loadgen {

// One second of the run.
struct TimelineBucket {
  uint64_t prefill_tokens = 0;
  uint64_t decode_tokens = 0;
  uint64_t steps = 0;
  uint64_t completed = 0;
  uint64_t errors = 0;
};

struct VerificationStats {
  uint64_t steps_seen = 0;     // Step calls answered
  uint64_t steps_checked = 0;  // of them, recomputed
  uint64_t entries_checked = 0;
  uint64_t elements_checked = 0;
  uint64_t mismatched_entries = 0;
  uint64_t mismatched_elements = 0;
  double max_abs_error = 0;
  std::vector<std::string> examples;  // the first few mismatches, described

  void Merge(const VerificationStats& other);
};

struct RunStats {
  // Latency by name: "Step", "CreateSequence", "FreeSequence", "ttft", "tpot", "request",
  // "queue".
  std::map<std::string, LatencyHistogram> latency;
  // Errors by "RPC CODE", split by whether the configuration expects them.
  std::map<std::string, uint64_t> expected_errors;
  std::map<std::string, uint64_t> unexpected_errors;
  std::vector<std::string> error_examples;  // first few unexpected errors with their messages

  uint64_t requests_started = 0;
  uint64_t requests_completed = 0;
  uint64_t requests_aborted = 0;     // dropped after a failed step
  uint64_t requests_preempted = 0;   // dropped to free KV memory (RESOURCE_EXHAUSTED)
  uint64_t requests_rejected = 0;    // CreateSequence failed
  uint64_t requests_incomplete = 0;  // still running when the run ended
  uint64_t prompt_tokens = 0;        // of started requests
  uint64_t cached_tokens = 0;        // served by the prefix cache
  uint64_t prefill_tokens = 0;       // sent in prefill chunks
  uint64_t decode_tokens = 0;
  uint64_t steps = 0;   // Step calls (one layer each)
  uint64_t passes = 0;  // forward passes (all layers)
  VerificationStats verification;
  std::vector<TimelineBucket> timeline;

  TimelineBucket& At(double seconds);
  void Merge(const RunStats& other);
};

struct LiveCounters {
  std::atomic<uint64_t> prefill_tokens{0};
  std::atomic<uint64_t> decode_tokens{0};
  std::atomic<uint64_t> steps{0};
  std::atomic<uint64_t> completed{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> mismatches{0};
  std::atomic<int64_t> active_sequences{0};
};

}  // namespace flashkv::loadgen
