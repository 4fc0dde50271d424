#include "flashkv/server/region_service.h"

#include <spdlog/spdlog.h>

#include <memory>
#include <utility>

#include "flashkv/base/handoff.h"
#include "flashkv/base/mutex.h"
#include "flashkv/server/status.h"

namespace flashkv::server {
namespace {

namespace v1 = flashkv::v1;

// One AttachRegion stream. It writes the region's id once and then stays open until the region
// is released (Finish OK) or the client goes away (OnCancel). The registry's release callback
// may run on any thread at any time, so it reaches the reactor through `finish_`, which allows
// one Finish() only; OnDone (which follows Finish) deletes the reactor.
class AttachReactor : public grpc::ServerWriteReactor<v1::AttachRegionResponse> {
 public:
  AttachReactor(RegionRegistry* registry, const Authenticator& auth,
                grpc::CallbackServerContext* context, const v1::AttachRegionRequest& request)
      : registry_(registry), finish_(std::make_shared<Finisher>(this)) {
    absl::StatusOr<std::shared_ptr<const Tenant>> caller = auth.Authenticate(*context);
    if (!caller.ok()) {
      finish_->Run(ToGrpcStatus(caller.status()));
      return;
    }
    const std::string& tenant = (*caller)->name;
    auto on_release = [finish = finish_] { finish->Run(grpc::Status::OK); };
    absl::StatusOr<uint64_t> id;
    switch (request.memory_case()) {
      case v1::AttachRegionRequest::kHost:
        id = registry->AttachHost(tenant, request.host().pid(), request.host().fd(), request.size(),
                                  on_release);
        break;
      case v1::AttachRegionRequest::kCuda:
        id = registry->AttachCuda(tenant, request.cuda().handle(), request.cuda().device(),
                                  request.size(), on_release);
        break;
      default:
        id = absl::InvalidArgumentError("memory must be set (host or cuda)");
    }
    if (!id.ok()) {
      finish_->Run(ToGrpcStatus(id.status()));
      return;
    }
    id_ = *id;
    spdlog::debug("region {} attached ({} bytes)", id_, request.size());
    response_.set_region_id(id_);
    response_.set_size(request.size());
    HandOff(this);  // gRPC's reactions take the reactor back (flashkv/base/handoff.h)
    StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    TakeBack(this);
    if (!ok) Drop(grpc::Status(grpc::StatusCode::CANCELLED, "client gone"));
  }
  void OnCancel() override {
    TakeBack(this);
    Drop(grpc::Status::CANCELLED);
  }
  void OnDone() override {
    TakeBack(this);
    registry_->Forget(id_);
    delete this;
  }

 private:
  class Finisher {
   public:
    explicit Finisher(AttachReactor* reactor) : reactor_(reactor) {}
    void Run(const grpc::Status& status) {
      {
        MutexLock lock(&mu_);
        if (finished_) return;
        finished_ = true;
      }
      HandOff(reactor_);
      reactor_->Finish(status);
    }

   private:
    AttachReactor* const reactor_;
    Mutex mu_;
    bool finished_ ABSL_GUARDED_BY(mu_) = false;
  };

  // The client cancelled or disconnected: the region goes, and the stream ends.
  void Drop(const grpc::Status& status) {
    if (id_ != 0) {
      registry_->Forget(id_);
      spdlog::debug("region {} released: client gone", id_);
    }
    finish_->Run(status);
  }

  RegionRegistry* const registry_;
  std::shared_ptr<Finisher> finish_;
  uint64_t id_ = 0;
  v1::AttachRegionResponse response_;
};

}  // namespace

grpc::ServerWriteReactor<v1::AttachRegionResponse>* RegionService::AttachRegion(
    grpc::CallbackServerContext* context, const v1::AttachRegionRequest* request) {
  return new AttachReactor(registry_, *auth_, context, *request);
}

grpc::ServerUnaryReactor* RegionService::ReleaseRegion(grpc::CallbackServerContext* context,
                                                       const v1::ReleaseRegionRequest* request,
                                                       v1::ReleaseRegionResponse*) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::shared_ptr<const Tenant>> caller = auth_->Authenticate(*context);
  reactor->Finish(ToGrpcStatus(caller.ok() ? registry_->Release((*caller)->name,
                                                                request->region_id())
                                           : caller.status()));
  return reactor;
}

}  // namespace flashkv::server
