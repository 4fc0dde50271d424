#pragma once

// Runs a load test: learns the model shape from GetCacheInfo, starts the runners (threads) over
// the given clients (runner i uses clients[i % size]), shows progress, stops at the bounds, and
// returns the report with the server's stats before and after.

#include <atomic>
#include <ostream>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "config.h"
#include "flashkv/client/client.h"
#include "report.h"

namespace flashkv::loadgen {

struct ProgressOptions {
  std::ostream* out = nullptr;  // nullptr: no progress output
  // A redrawn one-line bar (terminals) or plain lines every `interval`.
  bool tty = false;
  absl::Duration interval = absl::Seconds(5);
};

// Errors: the server's model cannot be learnt (GetCacheInfo failed or answered an unusable
// shape), or verification is on for a (dtype, head dim) the CPU implementation lacks.
// `interrupt` (optional) ends the run early, as the duration bound does.
absl::StatusOr<Report> RunLoadgen(const LoadgenConfig& config, absl::Span<Client* const> clients,
                                  const ProgressOptions& progress,
                                  const std::atomic<bool>* interrupt = nullptr);

}  // namespace flashkv::loadgen
