#include "loadgen.h"

#include <sys/resource.h>

#include <algorithm>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "flashkv/cpu_backend.h"
#include "flashkv/cuda_backend.h"
#include "request_source.h"
#include "runner.h"

namespace flashkv::loadgen {
namespace {

absl::StatusOr<ModelShape> LearnShape(Client& client, absl::Duration timeout,
                                      std::string* backend) {
  CallOptions options;
  options.timeout = timeout;
  options.wait_for_ready = false;
  absl::StatusOr<v1::CacheInfo> info = client.GetCacheInfo(options);
  if (!info.ok()) {
    return absl::Status(info.status().code(),
                        absl::StrCat("GetCacheInfo: ", info.status().message()));
  }
  absl::StatusOr<DType> dtype = FromProtoDType(info->dtype(), "CacheInfo.dtype");
  if (!dtype.ok()) return dtype.status();
  ModelShape shape{static_cast<int>(info->num_layers()),
                   static_cast<int>(info->num_q_heads()),
                   static_cast<int>(info->num_kv_heads()),
                   static_cast<int>(info->head_dim()),
                   *dtype,
                   static_cast<int>(info->page_size()),
                   static_cast<int64_t>(info->max_context()),
                   std::max(1, static_cast<int>(info->num_devices()))};
  if (shape.num_layers < 1 || shape.num_q_heads < 1 || shape.num_kv_heads < 1 ||
      shape.head_dim < 1 || shape.page_size < 1 || shape.max_context < 2 ||
      shape.num_q_heads % shape.num_kv_heads != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("GetCacheInfo answered an unusable model: ", info->ShortDebugString()));
  }
  *backend = info->backend();
  return shape;
}

// One progress line: elapsed, rates over the last interval, totals, problems.
class ProgressPrinter {
 public:
  ProgressPrinter(const ProgressOptions& options, const LiveCounters& live, absl::Duration bound)
      : options_(options), live_(live), bound_(bound) {}

  void Print(absl::Duration elapsed, bool final) {
    if (options_.out == nullptr) return;
    if (final) {  // the whole run's averages: the last interval may be a fraction of a second
      last_elapsed_ = absl::ZeroDuration();
      last_prefill_ = last_decode_ = last_steps_ = 0;
    }
    const double dt = std::max(1e-9, absl::ToDoubleSeconds(elapsed - last_elapsed_));
    const uint64_t prefill = live_.prefill_tokens.load(), decode = live_.decode_tokens.load();
    const uint64_t steps = live_.steps.load();
    const std::string rates = absl::StrFormat(
        "prefill %.0f tok/s, decode %.0f tok/s, %.0f steps/s", (prefill - last_prefill_) / dt,
        (decode - last_decode_) / dt, (steps - last_steps_) / dt);
    const std::string totals = absl::StrFormat(
        "%d active, %d done, %d errors, %d mismatches", live_.active_sequences.load(),
        live_.completed.load(), live_.errors.load(), live_.mismatches.load());
    last_elapsed_ = elapsed;
    last_prefill_ = prefill;
    last_decode_ = decode;
    last_steps_ = steps;
    std::ostream& out = *options_.out;
    if (!options_.tty) {
      out << absl::StrFormat("[%6.1fs] %s%s | %s\n", absl::ToDoubleSeconds(elapsed),
                             final ? "average " : "", rates, totals);
      out.flush();
      return;
    }
    std::string bar;
    if (bound_ > absl::ZeroDuration()) {
      constexpr int kWidth = 24;
      const int filled = static_cast<int>(
          kWidth * std::min(1.0, absl::ToDoubleSeconds(elapsed) / absl::ToDoubleSeconds(bound_)));
      bar = absl::StrCat("[", std::string(filled, '#'), std::string(kWidth - filled, '.'), "] ");
    }
    // \r and clear-to-end-of-line redraw one line; the final draw ends it.
    out << "\r\033[K" << bar << absl::StrFormat("%.0fs ", absl::ToDoubleSeconds(elapsed)) << rates
        << " | " << totals << (final ? "\n" : "");
    out.flush();
  }

 private:
  const ProgressOptions options_;
  const LiveCounters& live_;
  const absl::Duration bound_;
  absl::Duration last_elapsed_ = absl::ZeroDuration();
  uint64_t last_prefill_ = 0, last_decode_ = 0, last_steps_ = 0;
};

// User + system CPU seconds of this process so far.
double ProcessCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return t.tv_sec + t.tv_usec * 1e-6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

absl::StatusOr<v1::ServerStats> FetchStats(Client& client, absl::Duration timeout) {
  CallOptions options;
  options.timeout = timeout;
  return client.GetStats(options);
}

}  // namespace

absl::StatusOr<Report> RunLoadgen(const LoadgenConfig& config, absl::Span<Client* const> clients,
                                  const ProgressOptions& progress,
                                  const std::atomic<bool>* interrupt) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (clients.empty()) return absl::InvalidArgumentError("no client to run with");
  Report report;
  report.config = config;
  absl::StatusOr<ModelShape> shape = LearnShape(*clients[0], config.rpc_timeout, &report.backend);
  if (!shape.ok()) return shape.status();
  report.shape = *shape;
  absl::StatusOr<std::string> region_memory = ChooseRegionMemory(
      config, report.backend, shape->num_devices, cuda::IsBuilt(), cuda::DeviceCount());
  if (!region_memory.ok()) return region_memory.status();
  report.region_memory = *region_memory;
  if (config.verify_fraction > 0 && !cpu::IsCompiled(shape->dtype, shape->head_dim)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "verification needs the CPU implementation for %s head dim %d, which this build lacks "
        "(FLASHKV_DTYPES / FLASHKV_HEAD_DIMS); rebuild with it or pass --verify=none",
        DTypeName(shape->dtype), shape->head_dim));
  }
  report.tolerance = tools::DefaultTolerance(shape->dtype);
  if (config.atol) report.tolerance.atol = *config.atol;
  if (config.rtol) report.tolerance.rtol = *config.rtol;

  absl::StatusOr<v1::ServerStats> before = FetchStats(*clients[0], config.rpc_timeout);
  if (before.ok()) report.server_before = *before;

  LiveCounters live;
  std::atomic<bool> stop{false};
  const absl::Time start = absl::Now();
  const double cpu_start = ProcessCpuSeconds();
  RequestSource source(config, shape->max_context, start);
  RunContext context{&config,
                     *shape,
                     report.tolerance,
                     &source,
                     &live,
                     &stop,
                     start,
                     report.region_memory == "cuda"};
  std::vector<std::unique_ptr<Runner>> runners;
  for (int i = 0; i < config.runners; ++i) {
    runners.push_back(std::make_unique<Runner>(i, clients[i % clients.size()], context));
    if (absl::Status s = runners.back()->Prepare(); !s.ok()) return s;
  }
  std::atomic<int> running{config.runners};
  std::vector<std::thread> threads;
  for (auto& runner : runners) {
    threads.emplace_back([&running, r = runner.get()] {
      r->Run();
      running.fetch_sub(1);
    });
  }

  ProgressPrinter printer(progress, live, config.duration);
  const absl::Duration tick = progress.tty ? absl::Milliseconds(250) : progress.interval;
  absl::Time next_print = start + tick;
  while (running.load() > 0) {
    absl::SleepFor(absl::Milliseconds(20));
    const absl::Time now = absl::Now();
    const bool past_deadline =
        config.duration > absl::ZeroDuration() && now - start >= config.duration;
    if ((past_deadline || (interrupt != nullptr && interrupt->load())) && !stop.load()) {
      stop.store(true);
      source.Stop();
    }
    if (now >= next_print) {
      printer.Print(now - start, false);
      next_print = now + tick;
    }
  }
  for (std::thread& t : threads) t.join();
  const absl::Time end = absl::Now();
  printer.Print(end - start, true);
  report.duration_s = absl::ToDoubleSeconds(end - start);
  report.client_cpu_s = ProcessCpuSeconds() - cpu_start;
  for (const auto& runner : runners) report.totals.Merge(runner->stats());

  absl::StatusOr<v1::ServerStats> after = FetchStats(*clients[0], config.rpc_timeout);
  if (after.ok()) {
    report.server_after = *after;
  } else {
    report.server_stats_status = after.status();
  }
  if (!before.ok()) report.server_stats_status = before.status();
  return report;
}

}  // namespace flashkv::loadgen
