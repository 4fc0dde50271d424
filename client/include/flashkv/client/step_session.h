#pragma once

// StepSession: one KvCacheService.StepStream with pipelining. Send() queues a request and returns
// at once; Receive() returns responses in request order. A model runner sends layer l+1 (or the
// next micro-batch) while layer l is computed, hiding the round trip.
//
// Every response is checked against its request: the echoed step_id, one output per entry, each
// shaped like its entry's q and in q's dtype. A stream failure (the server's status, a deadline,
// a broken connection) fails the request that was waiting and every later one with that status;
// open a new session to continue. Because a Step is all-or-nothing on the server, requests that
// failed this way changed nothing; requests answered before the failure did.
//
// The stream runs on a completion queue of its own that the calling threads drive: Receive()
// waits in it for the response, and Send() polls it without blocking to start queued writes. No
// gRPC thread is involved, so a response costs no hand-over between threads (on a loaded host
// that hand-over is a large part of a small step's round trip). While nobody is in Receive(),
// responses wait in the transport's flow-control windows (flashkv's transport settings make them
// large), so a runner that does not read for a while stalls the server only past them.
//
// Thread-safety: Send() and Receive() may be called from different threads (one sender, one
// receiver) or from one thread. Lifetime: created by Client::OpenStepSession; must not outlive
// the Client. Destroying a session with requests in flight cancels the stream and waits for
// gRPC to release it.

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "flashkv/client/step_input.h"
#include "flashkv/client/tensor.h"
#include "flashkv/v1/kvcache.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/support/async_stream.h"

namespace flashkv {

struct StepSessionOptions {
  // Value of x-flashkv-sequence for the whole stream; empty: the first request's first entry's
  // sequence id.
  std::string routing_key;
  // Requests sent but not yet received; Send() beyond it answers FAILED_PRECONDITION rather than
  // block (a single-threaded caller would otherwise wait on itself).
  int max_in_flight = 64;
  // Deadline of the whole stream; InfiniteDuration: none.
  absl::Duration timeout = absl::InfiniteDuration();
  // Longest wait in Receive() for one response. Past it the stream is cancelled and Receive()
  // fails with DEADLINE_EXCEEDED, so a stalled server never hangs a runner.
  absl::Duration response_timeout = absl::InfiniteDuration();
  bool wait_for_ready = false;
};

// What a response must look like, derived from its request.
struct StepExpectation {
  uint64_t step_id = 0;
  std::vector<Shape> out_shapes;  // = the entries' q shapes
  std::vector<int> out_dtypes;    // = the entries' q dtypes (flashkv.v1.DType values)
  // The entries' `out` slices: such an output must come back as that slice, without bytes.
  std::vector<std::optional<RegionSlice>> out_regions;
  // A batched request: no out[], one batch_out of this shape and dtype (in the region slice when
  // set, else as bytes).
  bool batch = false;
  Shape batch_out_shape;
  int batch_out_dtype = 0;
  std::optional<RegionSlice> batch_out_region;
};
StepExpectation ExpectationFor(const v1::StepRequest& request);
StepExpectation ExpectationFor(uint64_t step_id, absl::Span<const StepInput> entries);
StepExpectation ExpectationFor(uint64_t step_id, const StepBatchInput& batch);
// INTERNAL naming the mismatch ("out[2].shape [1,8,128] != q shape [2,8,128]").
absl::Status CheckStepResponse(const StepExpectation& expected, const v1::StepResponse& response);

class StepSession {
 public:
  ~StepSession();
  StepSession(const StepSession&) = delete;
  StepSession& operator=(const StepSession&) = delete;

  // Queues `request` for writing. A zero step_id is replaced by the session's next id (1, 2, ...);
  // returns the id the response will echo. Errors: the stream's failure when it is already known,
  // FAILED_PRECONDITION when max_in_flight requests await Receive() or after Finish(),
  // INVALID_ARGUMENT when the first request has no entry to take the routing key from.
  absl::StatusOr<uint64_t> Send(v1::StepRequest request);
  // Typed form, encoded without copying tensor bytes (flashkv/client/step_input.h): the views'
  // bytes must stay valid and unchanged until Receive() has returned this request's response.
  absl::StatusOr<uint64_t> Send(uint32_t layer, absl::Span<const StepInput> entries,
                                uint64_t step_id = 0);
  // A batched request (StepRequest.batch), encoded the same way; the response's batch_out holds
  // the output [T,Hq,D] (or names batch.out's slice).
  absl::StatusOr<uint64_t> Send(uint32_t layer, const StepBatchInput& batch, uint64_t step_id = 0);
  // A step of decode pass `pass_id` (docs/api.md#decode-passes): at layer 0 `batch` names the
  // sequences and begins the pass (the server prepares it once for every layer); at layers
  // 1..L-1, in order, it carries only q, k, v and out (sequence_ids, num_tokens and token_ids
  // empty), T rows as at layer 0. The last layer's step commits the pass; a failure, or the
  // session ending first, aborts it. INVALID_ARGUMENT here for a zero id or ids at the wrong
  // layer; batch.pass_id is ignored (`pass_id` is sent).
  absl::StatusOr<uint64_t> SendPass(uint32_t layer, uint64_t pass_id, const StepBatchInput& batch,
                                    uint64_t step_id = 0);

  // The response to the oldest request not yet received; blocks until it arrives or the stream
  // fails. FAILED_PRECONDITION when nothing is in flight.
  absl::StatusOr<v1::StepResponse> Receive();

  // Send() then Receive(), for a caller with nothing else in flight.
  absl::StatusOr<v1::StepResponse> Step(v1::StepRequest request);

  // Requests sent and not yet received.
  int in_flight() const;

  // Half-closes the stream and waits for the server's final status. Responses not yet received
  // are discarded. Idempotent: later calls return the same status.
  absl::Status Finish();

  // Cancels the stream (requests in flight fail with CANCELLED) without waiting.
  void Cancel();

 private:
  friend class Client;
  class Stream;
  using Call = grpc::ClientAsyncReaderWriter<grpc::ByteBuffer, v1::StepResponse>;

  // Prepares `context` (deadline, token, routing header `routing_key`) and creates the RPC on
  // `cq`, not yet started. Called once, on the first Send().
  using Starter = std::function<absl::StatusOr<std::unique_ptr<Call>>(
      grpc::ClientContext* context, grpc::CompletionQueue* cq, const std::string& routing_key)>;
  StepSession(StepSessionOptions options, Starter start);

  // Under mu_: starts the stream on the first request (`first_sequence_id` gives the routing key
  // unless the options name one) and assigns the step id.
  absl::StatusOr<uint64_t> Prepare(uint64_t step_id, const std::string* first_sequence_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Under mu_: queues the encoded request, expecting `expectation`.
  absl::Status Write(grpc::ByteBuffer request, StepExpectation expectation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const StepSessionOptions options_;
  const Starter start_;
  // Created by the first Send(); never replaced. Lock order: mu_ before the stream's locks.
  std::unique_ptr<Stream> stream_;
  mutable absl::Mutex mu_;
  uint64_t next_step_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<StepExpectation> expected_ ABSL_GUARDED_BY(mu_);  // oldest first
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status finish_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace flashkv
