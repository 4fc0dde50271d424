#pragma once

// The load generator's configuration (filled from flags in main.cc).

#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "length_distribution.h"

namespace flashkv::loadgen {

// How a runner's tensors reach the server: inside the Step messages, or in a shared-memory region
// it registered (same host only), with only descriptors in the messages.
enum class DataPlane { kBytes, kShm };
const char* DataPlaneName(DataPlane plane);

// Where a shm runner's region lives: host memory (a sealed memfd), or device memory on the
// server's CUDA device (a CUDA IPC region, which the server's kernels read and write in place).
// kAuto: CUDA when the server computes on CUDA with one device and this build has CUDA (with
// several devices a runner's sequences spread over them, and a region lives on one).
enum class RegionMemory { kAuto, kHost, kCuda };
const char* RegionMemoryName(RegionMemory memory);

// Where a runner's q, k and v are made: generated on the host (and copied into a CUDA region), or
// (kDevice, CUDA regions only) by a kernel straight into the region, as a co-located model
// runner's projections write them; the host then regenerates only what it verifies.
enum class InputSource { kHost, kDevice };
const char* InputSourceName(InputSource source);

struct LoadgenConfig {
  // Simulated model runners, each with its own StepStream, owning up to `max_batch` sequences
  // that it steps together (continuous batching: prefill chunks and decodes in one pass).
  int runners = 4;
  int max_batch = 4;
  // Open loop when > 0: requests arrive as a Poisson process at this rate (per second) and wait
  // for a runner with a free slot. Closed loop otherwise: every free slot starts a request at once.
  double rate = 0;
  // Bounds: stop admitting after `duration` (0: none) or after `requests` requests (0: none).
  // At the duration, sequences still running are freed and counted incomplete; with only a
  // request bound, the run ends when every request has finished.
  absl::Duration duration = absl::Seconds(30);
  int64_t requests = 0;

  LengthDistribution prompt_len = LengthDistribution::Fixed(128);
  LengthDistribution output_len = LengthDistribution::Fixed(32);
  // Prompt tokens of one sequence per pass, and tokens of one pass over all its sequences.
  int prefill_chunk = 256;
  int max_pass_tokens = 1024;
  // Layer requests a runner keeps in flight on its stream: 1 behaves like a real model (layer
  // l + 1 needs layer l's output); more overlaps the round trips (the server must accept a
  // layer that arrives while the previous one is still in flight).
  int pipeline_depth = 1;
  DataPlane data_plane = DataPlane::kBytes;
  // Each layer's request as one StepBatch (one descriptor per tensor for the whole pass) instead
  // of one StepEntry per sequence.
  bool batched_steps = false;
  // With batched_steps: each pass through the layers as a decode pass (StepBatch.pass_id): the
  // sequences named at layer 0 only, later layers carrying only the tensors.
  bool pass_steps = false;
  RegionMemory region_memory = RegionMemory::kAuto;
  // The CUDA ordinal (as this process numbers devices) of the server's device, for CUDA regions.
  int region_cuda_device = 0;
  InputSource inputs = InputSource::kHost;
  // The runner's own work between a layer's response and the next layer's request (the rest of a
  // model's layer: projections, MLP), spent waiting as a runner waits on its GPU: the server then
  // sees the gaps a real model runner leaves between layer steps.
  absl::Duration layer_gap = absl::ZeroDuration();

  // Shared-prefix pool: `prefix_pool` prompt prefixes (lengths from `prefix_len`); a request
  // starts with one of them with probability `prefix_fraction`, then its own prompt_len tokens.
  int prefix_pool = 0;
  LengthDistribution prefix_len = LengthDistribution::Fixed(256);
  double prefix_fraction = 0.5;
  // Send prompt and generated token ids (CreateSequence, StepEntry) so the prefix cache works.
  bool send_token_ids = true;

  // Fraction of Step calls whose every output is recomputed on the CPU (1 = all, 0 = none).
  double verify_fraction = 0.1;
  std::optional<double> atol, rtol;  // override the per-dtype tolerances

  // Status codes that count as expected (e.g. RESOURCE_EXHAUSTED under deliberate pressure).
  std::set<absl::StatusCode> expected_codes;
  absl::Duration rpc_timeout = absl::Seconds(60);
  uint64_t seed = 1;
  // Sequence ids are "<run_id>-r<runner>-<n>"; a runner's routing key is "<run_id>-r<runner>".
  std::string run_id;

  absl::Status Validate() const;
};

}  // namespace flashkv::loadgen
