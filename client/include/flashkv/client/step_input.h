#pragma once

// The typed form of a Step entry and the server's timing of a step, shared by Client::Step and
// StepSession. Tensors are views: their bytes are encoded straight from the caller's memory into
// the request (no copy into a protobuf message), or, for tensors in a SharedRegion, only their
// descriptors travel (flashkv/client/region.h).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "flashkv/client/tensor.h"
#include "flashkv/v1/kvcache.pb.h"

namespace flashkv {

// n new tokens of one sequence. q [n,Hq,D]; k, v [n,Hkv,D].
struct StepInput {
  std::string sequence_id;
  TensorView q;
  TensorView k;
  TensorView v;
  std::vector<int64_t> token_ids;  // n of them, or none
  // Shared-memory data plane: the server writes this entry's output [n,Hq,D] (q's dtype) here
  // instead of into the response.
  std::optional<RegionSlice> out;
};

// A whole batch in one descriptor per tensor (StepRequest.batch, docs/api.md#batched-steps):
// entry i is sequence_ids[i] with num_tokens[i] new tokens (all 1 when num_tokens is empty) and
// owns rows [sum(num_tokens[0..i)), + num_tokens[i]) of q [T,Hq,D], k and v [T,Hkv,D]. Tensors in a
// SharedRegion travel as descriptors, others as bytes. The server checks the batch once and
// answers with one output [T,Hq,D] (StepResponse.batch_out): written to `out` when set.
struct StepBatchInput {
  std::vector<std::string> sequence_ids;
  std::vector<int64_t> num_tokens;  // empty: one token each (a decode batch)
  TensorView q;
  TensorView k;
  TensorView v;
  std::optional<RegionSlice> out;
  std::vector<int64_t> token_ids;  // T of them, or none
  // A decode pass of the stream (docs/api.md#decode-passes; StepSession::SendPass): non-zero at
  // layer 0 with the sequences begins it, at later layers (no sequence_ids, num_tokens or
  // token_ids) runs its next layer.
  uint64_t pass_id = 0;
};

// StepResponse.kernel_ns / server_ns: the step's attention kernels, and its whole time in the
// server (arrival to response). Round-trip latency minus `kernel` is the service overhead;
// minus `server` is what the transport and the client cost.
struct StepTiming {
  absl::Duration kernel;
  absl::Duration server;
  absl::Duration queue;   // StepResponse.queue_ns: arrival to the first launch
  absl::Duration launch;  // StepResponse.launch_ns: the launches, kernels included
};
StepTiming TimingOf(const v1::StepResponse& response);

}  // namespace flashkv
