#include "flashkv/server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "flashkv/cpu_backend.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/server/attention_backend.h"
#include "flashkv/server/attention_service.h"
#include "flashkv/server/executor.h"
#include "flashkv/server/metrics.h"
#include "flashkv/server/metrics_endpoint.h"
#include "flashkv/server/region_service.h"
#include "flashkv/server/status.h"

namespace flashkv::server {
namespace {

constexpr const char* kAttentionServiceName = "flashkv.v1.AttentionService";
constexpr const char* kKvCacheServiceName = "flashkv.v1.KvCacheService";
// Stateless calls allowed to wait for an executor thread before new ones are refused.
constexpr size_t kMaxQueuedAttentionCalls = 1024;

struct DevicePlan {
  bool cuda = false;
  std::vector<int> ids;  // CUDA ordinals, or CPU device ids -1, -2, ...
};

absl::StatusOr<DevicePlan> PlanDevices(const ServerConfig& config) {
  DevicePlan plan;
  const int visible = cuda::DeviceCount();
  const bool want_cuda = config.backend == BackendChoice::kCuda ||
                         (config.backend == BackendChoice::kAuto && cuda::IsBuilt() && visible > 0);
  if (want_cuda) {
    if (!cuda::IsBuilt()) {
      return absl::FailedPreconditionError("backend cuda: flashkv was built without CUDA");
    }
    if (visible == 0)
      return absl::FailedPreconditionError("backend cuda: no CUDA device is visible");
    plan.cuda = true;
    plan.ids = config.cuda_devices;
    if (plan.ids.empty()) {
      for (int i = 0; i < visible; ++i) plan.ids.push_back(i);
    }
    for (int id : plan.ids) {
      if (id >= visible) {
        return absl::InvalidArgumentError("devices: CUDA device " + std::to_string(id) +
                                          " does not exist (" + std::to_string(visible) +
                                          " visible)");
      }
    }
    return plan;
  }
  for (int i = 0; i < config.cpu_devices; ++i) plan.ids.push_back(-1 - i);
  return plan;
}

// Runs a small attention on `backend` with the model's dtype and head dim and checks the output
// is finite: proves the kernels for this shape are compiled in and the device works.
absl::Status WarmUp(AttentionBackend* backend, const ModelShape& model) {
  if (!backend->IsCompiled(model.dtype, model.head_dim)) {
    return absl::FailedPreconditionError(
        std::string("the model's dtype ") + DTypeName(model.dtype) + " with head dim " +
        std::to_string(model.head_dim) + " is not compiled into " + backend->name());
  }
  const int s = 4;
  const size_t q_elems = size_t(s) * model.num_q_heads * model.head_dim;
  const size_t kv_elems = size_t(s) * model.num_kv_heads * model.head_dim;
  const size_t elem = DTypeSize(model.dtype);
  std::vector<uint8_t> q(q_elems * elem), k(kv_elems * elem), v(kv_elems * elem), out(q.size());
  // Bytes of 0x10 are small finite normal numbers in all three dtypes.
  for (size_t i = 0; i < q.size(); ++i) q[i] = 0x10;
  for (size_t i = 0; i < k.size(); ++i) k[i] = v[i] = 0x10;
  FixedAttentionArgs args = MakeDenseFixedArgs(
      model.dtype, 1, s, s, model.num_q_heads, model.num_kv_heads, model.head_dim, q.data(),
      k.data(), v.data(), out.data(), nullptr, AttentionOptions{true, std::nullopt});
  if (auto status = backend->RunFixed(args); !status.ok()) {
    return absl::Status(status.code(), "warm-up launch on " + backend->name() + ": " +
                                           std::string(status.message()));
  }
  return absl::OkStatus();
}

}  // namespace

class Server::Impl {
 public:
  explicit Impl(const ServerConfig& config) : config_(config) {}

  ~Impl() { Shutdown(absl::ZeroDuration()); }

  absl::Status Start() {
    absl::StatusOr<DevicePlan> plan = PlanDevices(config_);
    if (!plan.ok()) return plan.status();
    plan_ = *std::move(plan);
    if (config_.cpu_threads > 0) cpu::SetNumThreads(config_.cpu_threads);
    if (auto s = StartMetrics(); !s.ok()) return s;
    if (auto s = CreateBackends(); !s.ok()) return s;
    executor_ = std::make_unique<Executor>(config_.attention_threads, kMaxQueuedAttentionCalls);
    std::vector<AttentionBackend*> backends;
    for (auto& b : attention_backends_) backends.push_back(b.get());
    attention_service_ =
        std::make_unique<AttentionService>(backends, executor_.get(), &metrics_, &regions_);
    if (auto s = StartGrpc(); !s.ok()) return s;
    // Serving only once every device has run a launch.
    for (auto& backend : attention_backends_) {
      if (auto s = WarmUp(backend.get(), config_.model); !s.ok()) return s;
    }
    SetServing(true);
    spdlog::info("serving on {} ({} backend, {} device(s)); metrics on {}", listening_address(),
                 backend_name(), plan_.ids.size(),
                 metrics_endpoint_ ? metrics_endpoint_->address() : std::string("(off)"));
    return absl::OkStatus();
  }

  void Shutdown(absl::Duration deadline) {
    {
      absl::MutexLock lock(&mu_);
      if (shut_down_) return;
      shut_down_ = true;
    }
    if (grpc_server_ != nullptr) {
      SetServing(false);
      // Ends the region streams, which would otherwise hold the drain for its whole deadline;
      // calls in flight keep the mappings they resolved.
      regions_.ReleaseAll();
      spdlog::info("draining: no new calls; in-flight calls have {} to finish",
                   absl::FormatDuration(deadline));
      grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + deadline));
      grpc_server_->Wait();
    }
    executor_.reset();  // runs anything still queued (their calls are already cancelled)
    metrics_endpoint_.reset();
    spdlog::info("stopped");
    absl::MutexLock lock(&mu_);
    stopped_ = true;
  }

  void Wait() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&stopped_));
  }

  int port() const { return port_; }
  // The listen address with the port actually bound.
  std::string listening_address() const {
    if (port_ == 0) return config_.listen_address;
    return config_.listen_address.substr(0, config_.listen_address.rfind(':') + 1) +
           std::to_string(port_);
  }
  std::string metrics_address() const {
    return metrics_endpoint_ ? metrics_endpoint_->address() : std::string();
  }
  std::string backend_name() const { return plan_.cuda ? "cuda" : "cpu"; }
  int num_devices() const { return static_cast<int>(plan_.ids.size()); }
  Metrics& metrics() { return metrics_; }

 private:
  absl::Status StartMetrics() {
    if (config_.metrics_address.empty()) return absl::OkStatus();
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
        MetricsEndpoint::Start(config_.metrics_address, metrics_.registry());
    if (!endpoint.ok()) return endpoint.status();
    metrics_endpoint_ = *std::move(endpoint);
    return absl::OkStatus();
  }

  absl::Status CreateBackends() {
    for (int id : plan_.ids) {
      if (!plan_.cuda) {
        attention_backends_.push_back(NewCpuAttentionBackend());
        continue;
      }
      absl::StatusOr<std::unique_ptr<AttentionBackend>> backend = NewCudaAttentionBackend(id);
      if (!backend.ok()) return backend.status();
      attention_backends_.push_back(*std::move(backend));
    }
    return absl::OkStatus();
  }

  absl::Status StartGrpc() {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    ApplyServerTransportOptions(config_.transport, &builder);
    int selected_port = 0;
    builder.AddListeningPort(config_.listen_address, grpc::InsecureServerCredentials(),
                             &selected_port);
    builder.RegisterService(attention_service_.get());
    builder.RegisterService(&region_service_);
    grpc_server_ = builder.BuildAndStart();
    if (grpc_server_ == nullptr) {
      return absl::UnavailableError("listen " + config_.listen_address +
                                    ": cannot bind (address in use or invalid?)");
    }
    port_ = absl::StartsWith(config_.listen_address, "unix:") ? 0 : selected_port;
    SetServing(false);
    return absl::OkStatus();
  }

  void SetServing(bool serving) {
    grpc::HealthCheckServiceInterface* health = grpc_server_->GetHealthCheckService();
    if (health == nullptr) return;
    health->SetServingStatus("", serving);
    health->SetServingStatus(kAttentionServiceName, serving);
    health->SetServingStatus(kKvCacheServiceName, serving);
  }

  const ServerConfig config_;
  DevicePlan plan_;
  Metrics metrics_;
  std::unique_ptr<MetricsEndpoint> metrics_endpoint_;
  std::vector<std::unique_ptr<AttentionBackend>> attention_backends_;
  std::unique_ptr<Executor> executor_;
  RegionRegistry regions_;
  RegionService region_service_{&regions_};
  std::unique_ptr<AttentionService> attention_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  int port_ = 0;

  absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerConfig& config) {
  if (auto s = ValidateConfig(config); !s.ok()) return s;
  auto impl = std::make_unique<Impl>(config);
  if (auto s = impl->Start(); !s.ok()) return s;
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;
int Server::port() const { return impl_->port(); }
std::string Server::metrics_address() const { return impl_->metrics_address(); }
std::string Server::backend_name() const { return impl_->backend_name(); }
int Server::num_devices() const { return impl_->num_devices(); }
Metrics& Server::metrics() { return impl_->metrics(); }
void Server::Shutdown(absl::Duration deadline) { impl_->Shutdown(deadline); }
void Server::Wait() { impl_->Wait(); }

}  // namespace flashkv::server
