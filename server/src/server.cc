#include "flashkv/server/server.h"

#include <grpcpp/ext/health_check_service_server_builder_option.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "flashkv/base/mutex.h"
#include "flashkv/cpu_backend.h"
#include "flashkv/server/attention_backend.h"
#include "flashkv/server/attention_service.h"
#include "flashkv/server/auth.h"
#include "flashkv/server/cache_metrics.h"
#include "flashkv/server/cache_set.h"
#include "flashkv/server/cpu_affinity.h"
#include "flashkv/server/credentials.h"
#include "flashkv/server/device_scheduler.h"
#include "flashkv/server/executor.h"
#include "flashkv/server/health_service.h"
#include "flashkv/server/idle_reaper.h"
#include "flashkv/server/kvcache_service.h"
#include "flashkv/server/metrics.h"
#include "flashkv/server/metrics_endpoint.h"
#include "flashkv/server/region_service.h"
#include "flashkv/server/warm_up.h"

namespace flashkv::server {
namespace {

constexpr const char* kAttentionServiceName = "flashkv.v1.AttentionService";
constexpr const char* kKvCacheServiceName = "flashkv.v1.KvCacheService";
// Blocking work (stateless attention, forks waiting for a running step) allowed to queue before
// new calls are refused.
constexpr size_t kMaxQueuedCalls = 1024;

}  // namespace

// Members are declared in dependency order: each is destroyed before what it uses.
class Server::Impl {
 public:
  explicit Impl(const ServerConfig& config)
      : config_(config), clock_(config.clock ? config.clock : RealClock()) {}

  ~Impl() { Shutdown(absl::ZeroDuration()); }

  absl::Status Start() {
    absl::StatusOr<DevicePlan> plan = PlanDevices(config_);
    if (!plan.ok()) return plan.status();
    plan_ = *std::move(plan);
    if (!config_.cpus.empty()) {
      // Before any thread of the server starts, so that each inherits the set.
      if (auto s = PinProcessToCpus(config_.cpus); !s.ok()) return s;
      spdlog::info("threads kept on CPUs {}", FormatCpuList(config_.cpus));
    }
    // 0 resizes the pool to its default, one thread per CPU this thread may run on: after
    // pinning, one per listed CPU.
    if (config_.cpu_threads > 0 || !config_.cpus.empty()) cpu::SetNumThreads(config_.cpu_threads);
    const SecurityConfig& security = config_.security;
    absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create(
        security.tokens_file,
        TenantQuota{security.tenant_max_sequences, security.tenant_max_kv_blocks});
    if (!auth.ok()) return auth.status();
    auth_ = *std::move(auth);
    region_service_ = std::make_unique<RegionService>(&regions_, auth_.get());
    executor_ = std::make_unique<Executor>(config_.attention_threads, kMaxQueuedCalls);
    if (auto s = CreateAttentionBackends(); !s.ok()) return s;
    attention_service_ = std::make_unique<AttentionService>(
        BackendPointers(), executor_.get(), &metrics_, auth_.get(), config_.limits, &regions_);
    // Listening first, NOT_SERVING (from the first connection on: see health_service.h), so that
    // health probes see the server while the pools are allocated and checked.
    if (auto s = StartGrpc(); !s.ok()) return s;
    if (auto s = CreateCaches(); !s.ok()) return s;
    if (auto s = StartMetrics(); !s.ok()) return s;
    for (auto& backend : attention_backends_) {
      if (auto s = WarmUpAttention(backend.get(), config_.model); !s.ok()) return s;
    }
    for (int d = 0; d < caches_->num_devices(); ++d) {
      if (auto s = WarmUpSteps(kvcache_service_.get(), caches_.get(), d, config_.model); !s.ok()) {
        return s;
      }
    }
    reaper_ = std::make_unique<IdleReaper>(caches_.get(), clock_, config_.sequence_ttl, &metrics_);
    health_service_->SetServing(true);
    const kvcache::CacheStats stats = caches_->cache(0).GetStats();
    spdlog::info(
        "serving on {} ({} backend, {} device(s), {} KV blocks of {} tokens per device, {} MiB; "
        "{}; {}); metrics on {}",
        listening_address(), caches_->cuda() ? "cuda" : "cpu", caches_->num_devices(),
        stats.blocks_total, config_.model.page_size, stats.blocks_total * stats.block_bytes >> 20,
        security.plaintext                       ? "plaintext"
        : security.tls_client_ca_file.empty() ? "TLS"
                                               : "mutual TLS",
        auth_->enabled() ? "bearer tokens" : "no authentication",
        metrics_endpoint_ ? metrics_endpoint_->address() : std::string("(off)"));
    if (security.plaintext && auth_->enabled()) {
      spdlog::warn("bearer tokens travel in clear text over --plaintext: use TLS beyond a trusted "
                   "network");
    }
    return absl::OkStatus();
  }

  void Shutdown(absl::Duration deadline) {
    {
      MutexLock lock(&mu_);
      if (shut_down_) return;
      shut_down_ = true;
    }
    if (grpc_server_ != nullptr) {
      health_service_->Shutdown();
      // Ends the region streams, which would otherwise hold the drain for its whole deadline;
      // calls in flight keep the mappings they resolved.
      regions_.ReleaseAll();
      spdlog::info("draining: no new calls; calls in flight have {} to finish",
                   absl::FormatDuration(deadline));
      if (kvcache_service_ != nullptr) kvcache_service_->BeginDrain();
      grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + deadline));
      grpc_server_->Wait();
    }
    reaper_.reset();
    executor_.reset();  // runs anything still queued (their calls are already over)
    metrics_endpoint_.reset();
    spdlog::info("stopped");
    MutexLock lock(&mu_);
    stopped_ = true;
  }

  void Wait() {
    MutexLock lock(&mu_);
    mu_.Await([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopped_; });
  }

  absl::Status ReloadTokens() {
    if (auth_ == nullptr) return absl::FailedPreconditionError("the server is not started");
    absl::Status status = auth_->Reload();
    if (status.ok() && auth_->enabled()) spdlog::info("tokens reloaded");
    return status;
  }

  int port() const { return port_; }
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
  absl::Status CreateAttentionBackends() {
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

  std::vector<AttentionBackend*> BackendPointers() const {
    std::vector<AttentionBackend*> out;
    for (const auto& b : attention_backends_) out.push_back(b.get());
    return out;
  }

  absl::Status CreateCaches() {
    absl::StatusOr<std::unique_ptr<CacheSet>> caches = CacheSet::Create(config_, plan_, clock_);
    if (!caches.ok()) return caches.status();
    caches_ = *std::move(caches);
    std::vector<DeviceScheduler*> schedulers;
    for (int d = 0; d < caches_->num_devices(); ++d) {
      absl::StatusOr<std::unique_ptr<DeviceScheduler>> scheduler =
          DeviceScheduler::Create(d, caches_->device_id(d), caches_->cuda(), &caches_->cache(d),
                                  config_.model, config_.scheduler, clock_, &metrics_);
      if (!scheduler.ok()) return scheduler.status();
      schedulers_.push_back(*std::move(scheduler));
      schedulers.push_back(schedulers_.back().get());
    }
    kvcache_service_->Attach(caches_.get(), std::move(schedulers));
    cache_metrics_ = std::make_shared<CacheMetrics>(caches_.get());
    return absl::OkStatus();
  }

  absl::Status StartMetrics() {
    if (config_.metrics_address.empty()) return absl::OkStatus();
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
        MetricsEndpoint::Start(config_.metrics_address, {metrics_.registry(), cache_metrics_});
    if (!endpoint.ok()) return endpoint.status();
    metrics_endpoint_ = *std::move(endpoint);
    return absl::OkStatus();
  }

  absl::Status StartGrpc() {
    kvcache_service_ = std::make_unique<KvCacheService>(config_, executor_.get(), &metrics_,
                                                        clock_, auth_.get(), &regions_);
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
        MakeServerCredentials(config_.security);
    if (!credentials.ok()) return credentials.status();
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    // flashkv's own grpc.health.v1 instead of gRPC's default, which would answer "" SERVING
    // before SetServing(false) could reach it.
    health_service_ = std::make_unique<HealthService>(
        std::vector<std::string>{"", kAttentionServiceName, kKvCacheServiceName});
    builder.SetOption(std::make_unique<grpc::HealthCheckServiceServerBuilderOption>(nullptr));
    builder.RegisterService(health_service_.get());
    ApplyServerTransportOptions(config_.transport, &builder);
    int selected_port = 0;
    builder.AddListeningPort(config_.listen_address, *credentials, &selected_port);
    builder.RegisterService(attention_service_.get());
    builder.RegisterService(kvcache_service_.get());
    builder.RegisterService(region_service_.get());
    grpc_server_ = builder.BuildAndStart();
    if (grpc_server_ == nullptr) {
      return absl::UnavailableError("listen " + config_.listen_address +
                                    ": cannot bind (address in use or invalid?)");
    }
    port_ = absl::StartsWith(config_.listen_address, "unix:") ? 0 : selected_port;
    if (config_.on_listening) config_.on_listening();
    return absl::OkStatus();
  }

  const ServerConfig config_;
  const std::shared_ptr<Clock> clock_;
  DevicePlan plan_;
  Metrics metrics_;
  std::unique_ptr<CacheSet> caches_;
  std::shared_ptr<CacheMetrics> cache_metrics_;
  std::unique_ptr<MetricsEndpoint> metrics_endpoint_;
  std::vector<std::unique_ptr<DeviceScheduler>> schedulers_;
  std::unique_ptr<IdleReaper> reaper_;
  std::unique_ptr<Executor> executor_;
  std::vector<std::unique_ptr<AttentionBackend>> attention_backends_;
  std::unique_ptr<Authenticator> auth_;
  RegionRegistry regions_;
  std::unique_ptr<RegionService> region_service_;
  std::unique_ptr<AttentionService> attention_service_;
  std::unique_ptr<KvCacheService> kvcache_service_;
  std::unique_ptr<HealthService> health_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  int port_ = 0;

  Mutex mu_;
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
absl::Status Server::ReloadTokens() { return impl_->ReloadTokens(); }
void Server::Shutdown(absl::Duration deadline) { impl_->Shutdown(deadline); }
void Server::Wait() { impl_->Wait(); }

}  // namespace flashkv::server
