#include "flashkv/server/step_stream.h"

#include <spdlog/spdlog.h>

#include <utility>

#include "flashkv/base/handoff.h"

#include "flashkv/server/kvcache_service.h"
#include "flashkv/server/status.h"

namespace flashkv::server {

constexpr const char* kRpc = "StepStream";

StepStreamReactor::StepStreamReactor(KvCacheService* service,
                                     std::shared_ptr<const Tenant> tenant)
    : service_(service), tenant_(std::move(tenant)) {
  HandOff(this);  // (gRPC's reactions to this reactor take it back: handoff.h)
  StartRead(&request_);
  service_->Register(this);
}

void StepStreamReactor::OnReadDone(bool ok) {
  TakeBack(this);
  if (!ok) {  // the client half-closed, or the call is over
    {
      MutexLock lock(&mu_);
      client_done_ = true;
    }
    Advance();
    return;
  }
  const absl::Time received = service_->clock().Now();
  std::shared_ptr<StepState> step;
  {
    MutexLock lock(&mu_);
    if (!Open()) {
      // Draining, failing or cancelled: this request is not taken; the stream's final status
      // tells the client.
    } else {
      service_->metrics().CallStarted(kRpc);
      slots_.push_back(std::make_unique<Slot>());
      Slot* slot = slots_.back().get();
      slot->received = received;
      absl::StatusOr<std::shared_ptr<StepState>> created = service_->NewStep(
          request_, *tenant_, received, [this, slot](const absl::Status& s, grpc::ByteBuffer r) {
            StepDone(slot, s, std::move(r));
          },
          &passes_);
      if (!created.ok()) {
        // A request that cannot even start ends the stream, in order, like a failed step.
        slot->done = true;
        slot->status = UnscopeStatus(created.status(), *tenant_);
        service_->metrics().CallFinished(kRpc);
        service_->metrics().RecordRpc(kRpc, ToGrpcStatus(created.status()).error_code(),
                                      absl::ZeroDuration());
      } else {
        step = *std::move(created);
        step->set_predecessor(last_step_);
        last_step_ = step;
        slot->step = step;
        submitting_ = true;
      }
    }
    request_.Clear();
  }
  if (step != nullptr) {
    // Submit before the next read, so that this stream's steps reach the schedulers in request
    // order (the next OnReadDone cannot run before StartRead). Until `submitting_` clears, the
    // stream does not finish: StartRead must not follow Finish.
    service_->Submit(step);
    bool read;
    {
      MutexLock lock(&mu_);
      read = slots_.size() < static_cast<size_t>(service_->limits().max_stream_steps_in_flight);
      read_paused_ = !read;
      if (!read) submitting_ = false;
    }
    if (read) {
      HandOff(this);
      StartRead(&request_);
      MutexLock lock(&mu_);
      submitting_ = false;
    }
  }
  Advance();
}

void StepStreamReactor::StepDone(Slot* slot, const absl::Status& status,
                                 grpc::ByteBuffer response) {
  const grpc::Status grpc_status = ToGrpcStatus(status);
  spdlog::debug("StepStream request: {}", status.ok() ? "OK" : status.ToString());
  service_->metrics().CallFinished(kRpc);
  service_->metrics().RecordRpc(kRpc, grpc_status.error_code(),
                                service_->clock().Now() - slot->received);
  {
    MutexLock lock(&mu_);
    slot->done = true;
    slot->status = UnscopeStatus(status, *tenant_);
    slot->response = std::move(response);
    // Once the lock is released another thread may write this answer and finish the stream;
    // the hold keeps it from finishing (and OnDone from deleting this reactor) until the
    // Advance below has run.
    ++holds_;
  }
  Advance(/*release_hold=*/true);
}

void StepStreamReactor::CancelSteps() {
  for (const auto& slot : slots_) {
    if (!slot->done && slot->step != nullptr) service_->Cancel(*slot->step);
  }
}

void StepStreamReactor::Advance(bool release_hold) {
  grpc::ByteBuffer* write = nullptr;
  bool finish = false;
  bool resume_reading = false;
  grpc::Status final_status;
  std::vector<std::shared_ptr<DecodePass>> ended_passes;
  {
    MutexLock lock(&mu_);
    if (release_hold) --holds_;
    if (finished_) return;
    // Answered requests at the head: write one, or drop it when the stream is failing.
    while (!writing_ && !slots_.empty() && slots_.front()->done) {
      Slot& head = *slots_.front();
      if (head.status.ok() && end_status_.ok() && !cancelled_) {
        writing_ = true;
        write = &head.response;
        break;
      }
      if (end_status_.ok() && !cancelled_) {
        end_status_ = head.status;
        CancelSteps();
      }
      slots_.pop_front();
    }
    if (read_paused_ && Open() &&
        slots_.size() < static_cast<size_t>(service_->limits().max_stream_steps_in_flight)) {
      // Below the limit again: read on. (submitting_ keeps the stream from finishing before the
      // read is started.)
      read_paused_ = false;
      submitting_ = true;
      resume_reading = true;
    }
    if (write == nullptr && !writing_ && slots_.empty() && !Open() && !submitting_ &&
        holds_ == 0) {
      finished_ = true;
      finish = true;
      ended_passes = passes_.TakeAll();
      if (cancelled_) {
        final_status = grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled");
      } else if (!end_status_.ok()) {
        final_status = ToGrpcStatus(end_status_);
      } else if (draining_ && !client_done_) {
        final_status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
      }
    }
  }
  if (resume_reading) {
    HandOff(this);
    StartRead(&request_);
    {
      MutexLock lock(&mu_);
      submitting_ = false;
    }
    Advance();  // (a finish that waited for the read to start)
  }
  if (write != nullptr) {
    HandOff(this);
    StartWrite(write);
  }
  if (finish) {
    // Every step has resolved: a pass still live never got its last layer. It is aborted before
    // the client can see the stream end.
    for (const auto& pass : ended_passes) pass->Abort(absl::CancelledError("its stream ended"));
    spdlog::debug("StepStream ends: {}", final_status.ok() ? "OK" : final_status.error_message());
    HandOff(this);
    Finish(final_status);
  }
}

void StepStreamReactor::OnWriteDone(bool ok) {
  TakeBack(this);
  {
    MutexLock lock(&mu_);
    writing_ = false;
    slots_.pop_front();
    if (!ok && !cancelled_) {  // the client is gone
      cancelled_ = true;
      CancelSteps();
    }
  }
  Advance();
}

void StepStreamReactor::OnCancel() {
  TakeBack(this);
  {
    MutexLock lock(&mu_);
    cancelled_ = true;
    CancelSteps();
  }
  Advance();
}

void StepStreamReactor::Drain() {
  {
    MutexLock lock(&mu_);
    draining_ = true;
  }
  Advance();
}

void StepStreamReactor::OnDone() {
  TakeBack(this);
  service_->Unregister(this);
  delete this;
}

}  // namespace flashkv::server
