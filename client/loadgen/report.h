#pragma once

// The load generator's report: throughput, latency percentiles, errors by code, verification
// counts and the server's own figures (GetStats before and after the run). Printed as a table
// and written as JSON (the schema benchmarks/loadgen_plot.py reads; docs/client.md lists it).

#include <optional>
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "config.h"
#include "flashkv/v1/kvcache.pb.h"
#include "nlohmann/json.hpp"
#include "run_stats.h"
#include "runner.h"
#include "verify.h"

namespace flashkv::loadgen {

struct Report {
  std::string target;
  std::string backend;
  std::string region_memory;  // shm: "host" or "cuda" (ChooseRegionMemory); "" for bytes
  LoadgenConfig config;
  ModelShape shape;
  tools::Tolerance tolerance;
  double duration_s = 0;
  // CPU seconds the load generator's process used during the run (generation, verification,
  // gRPC): on a shared machine, what the server did not get.
  double client_cpu_s = 0;
  RunStats totals;
  std::optional<v1::ServerStats> server_before;
  std::optional<v1::ServerStats> server_after;
  absl::Status server_stats_status;  // why the server figures are missing, if they are

  uint64_t mismatches() const { return totals.verification.mismatched_entries; }
  uint64_t unexpected_errors() const;
  // Zero mismatches and zero unexpected errors.
  bool clean() const { return mismatches() == 0 && unexpected_errors() == 0; }

  nlohmann::json ToJson() const;
  void PrintTable(std::ostream& out) const;
};

}  // namespace flashkv::loadgen
