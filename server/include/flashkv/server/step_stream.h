#pragma once

// The reactor of one StepStream call. Requests are read and submitted as they arrive (steps of
// different sequences compute concurrently; steps of one sequence apply in order), responses are
// written in request order, and steps commit in request order. At most
// RequestLimits::max_stream_steps_in_flight requests are held (computing, or answered and not yet
// written); at the limit the stream is not read until a response is written. The first request that fails ends
// the stream with its status, after every response before it has been written; the requests
// after it are not applied. A cancelled stream aborts every step not yet committed. Decode passes
// (decode_pass.h) live on one stream: when it ends, for any reason, its live passes are aborted.
// When the server drains, the stream ends (UNAVAILABLE) once the requests already read are
// answered.
//
// Ownership: deletes itself in OnDone, which gRPC calls only after Finish; Finish is called only
// when no step of this stream is unresolved and no step completion is still running (`holds_`:
// a completion marks its step answered, then goes on to Advance; until it has, no other thread
// may finish the stream and so delete the reactor under it).
// Thread-safety: reactions, step completions and Drain may run on different threads; `mu_`
// guards the state.

#include <grpcpp/support/server_callback.h>

#include <deque>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "flashkv/base/mutex.h"
#include "flashkv/server/auth.h"
#include "flashkv/server/decode_pass.h"
#include "absl/time/time.h"
#include "flashkv/server/step.h"

namespace flashkv::server {

class KvCacheService;

class StepStreamReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // The stream's requests are in `tenant`'s namespace (sequences and regions).
  StepStreamReactor(KvCacheService* service, std::shared_ptr<const Tenant> tenant);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;
  // The server is shutting down: answer what was read, then end with UNAVAILABLE.
  void Drain();

 private:
  struct Slot {
    std::shared_ptr<StepState> step;
    absl::Time received;
    bool done = false;
    absl::Status status;
    grpc::ByteBuffer response;
  };

  void StepDone(Slot* slot, const absl::Status& status, grpc::ByteBuffer response);
  // Writes the oldest answered response, or finishes the stream when its time has come.
  // `release_hold`: the caller took a hold (StepDone) and gives it up here, under the lock.
  void Advance(bool release_hold = false);
  // Stops every step not yet answered (the stream failed or was cancelled).
  void CancelSteps() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether new requests are still taken.
  bool Open() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !client_done_ && !draining_ && !cancelled_ && end_status_.ok();
  }

  KvCacheService* const service_;
  const std::shared_ptr<const Tenant> tenant_;
  grpc::ByteBuffer request_;  // the read in progress

  Mutex mu_;
  std::deque<std::unique_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);  // request order
  std::shared_ptr<StepState> last_step_ ABSL_GUARDED_BY(mu_);
  // The stream's live decode passes; those still here when the reactor goes are aborted.
  StreamPasses passes_ ABSL_GUARDED_BY(mu_);
  bool client_done_ ABSL_GUARDED_BY(mu_) = false;  // the client half-closed
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool submitting_ ABSL_GUARDED_BY(mu_) = false;  // between taking a request and the next read
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;  // at the in-flight limit: no read pending
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  int holds_ ABSL_GUARDED_BY(mu_) = 0;  // step completions between answering and Advance
  absl::Status end_status_ ABSL_GUARDED_BY(mu_);  // the first failure, ends the stream
};

}  // namespace flashkv::server
