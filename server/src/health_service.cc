#include "flashkv/server/health_service.h"

#include <utility>

#include "flashkv/base/handoff.h"

namespace flashkv::server {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream. Exactly one thread at a time drives it (the one that holds `busy_`): it
// starts a write of the latest status, finishes the stream, or goes idle. The service offers
// changes under its own mutex (Offer) and drives the reactor only after releasing that mutex, so
// no gRPC operation starts under the service's lock. A reactor cannot reach OnDone while someone
// holds `busy_` without having called Finish, so the service's pointer stays valid until the
// driving thread is done with it.
class HealthWatchReactor : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  using ServingStatus = HealthService::ServingStatus;

  HealthWatchReactor(HealthService* service, std::string name)
      : service_(service), name_(std::move(name)) {}

  const std::string& name() const { return name_; }

  // Records `status` (and that the stream should end once it is sent, for `last`); true when the
  // caller now drives the reactor and must call Drive() (after releasing the service's mutex).
  [[nodiscard]] bool Offer(ServingStatus status, bool last) {
    MutexLock lock(&mu_);
    wanted_ = status;
    last_ = last_ || last;
    if (busy_) return false;
    busy_ = true;
    return true;
  }

  // Writes the latest status if the client has not seen it, ends the stream when it should end,
  // or else goes idle (releasing `busy_`).
  void Drive() {
    enum class Action { kWrite, kFinish, kIdle } action;
    grpc::Status status;
    {
      MutexLock lock(&mu_);
      if (cancelled_ || (last_ && sent_ == wanted_)) {
        action = Action::kFinish;  // busy_ stays held: nothing else may start
        status = cancelled_ ? grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled")
                            : grpc::Status::OK;
      } else if (sent_ != wanted_) {
        action = Action::kWrite;
        sent_ = wanted_;
        response_.set_status(wanted_);
      } else {
        action = Action::kIdle;
        busy_ = false;
      }
    }
    if (action == Action::kWrite) {
      HandOff(this);  // gRPC's reactions take the reactor back (flashkv/base/handoff.h)
      StartWrite(&response_);
    } else if (action == Action::kFinish) {
      HandOff(this);
      Finish(status);
    }
  }

  void OnWriteDone(bool ok) override {
    TakeBack(this);
    if (!ok) {
      MutexLock lock(&mu_);
      cancelled_ = true;  // the client is gone: nothing more can be written
    }
    Drive();  // this thread still holds busy_
  }
  void OnCancel() override {
    TakeBack(this);
    {
      MutexLock lock(&mu_);
      cancelled_ = true;
      if (busy_) return;  // whoever drives it sees cancelled_ and finishes
      busy_ = true;
    }
    Drive();
  }
  void OnDone() override {
    TakeBack(this);
    service_->Forget(this);
    delete this;
  }

 private:
  HealthService* const service_;
  const std::string name_;
  Mutex mu_;
  // What the client should see next, and what it was last sent (nothing yet: UNKNOWN, which the
  // service never offers, so the first offer is always written).
  ServingStatus wanted_ ABSL_GUARDED_BY(mu_) = HealthCheckResponse::UNKNOWN;
  ServingStatus sent_ ABSL_GUARDED_BY(mu_) = HealthCheckResponse::UNKNOWN;
  bool last_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  HealthCheckResponse response_;  // touched only by the thread holding busy_, and by gRPC
};

HealthService::HealthService(const std::vector<std::string>& service_names) {
  MutexLock lock(&mu_);
  for (const std::string& name : service_names) {
    statuses_[name] = HealthCheckResponse::NOT_SERVING;
  }
}

void HealthService::SetServing(bool serving) {
  Publish(serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING,
          /*last=*/false);
}

void HealthService::Shutdown() { Publish(HealthCheckResponse::NOT_SERVING, /*last=*/true); }

void HealthService::Publish(ServingStatus status, bool last) {
  std::vector<HealthWatchReactor*> driven;
  {
    MutexLock lock(&mu_);
    if (shut_down_ && !last) return;
    shut_down_ = shut_down_ || last;
    for (auto& [name, named_status] : statuses_) named_status = status;
    for (HealthWatchReactor* w : watchers_) {
      if (w->Offer(StatusOf(w->name()), last)) driven.push_back(w);
    }
  }
  for (HealthWatchReactor* w : driven) w->Drive();
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const HealthCheckRequest* request,
                                               HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  ServingStatus status;
  {
    MutexLock lock(&mu_);
    status = StatusOf(request->service());
  }
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                 "unknown service \"" + request->service() + "\""));
    return reactor;
  }
  response->set_status(status);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext*, const HealthCheckRequest* request) {
  auto* reactor = new HealthWatchReactor(this, request->service());
  bool drive;
  {
    MutexLock lock(&mu_);
    watchers_.insert(reactor);
    drive = reactor->Offer(StatusOf(reactor->name()), shut_down_);
  }
  if (drive) reactor->Drive();
  return reactor;
}

void HealthService::Forget(HealthWatchReactor* reactor) {
  MutexLock lock(&mu_);
  watchers_.erase(reactor);
}

HealthService::ServingStatus HealthService::StatusOf(const std::string& name) const {
  auto it = statuses_.find(name);
  return it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second;
}

}  // namespace flashkv::server
