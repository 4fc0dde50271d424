#include "runner.h"

#include <algorithm>
#include <cstring>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "flashkv/client/status.h"
#include "flashkv/cuda_backend.h"
#include "synthetic_data.h"

namespace flashkv::loadgen {
namespace {

constexpr size_t kMaxExamples = 8;
// Pauses after a failure, so a dead server or a full cache does not turn into a busy loop.
constexpr absl::Duration kBackoffExpected = absl::Milliseconds(20);
constexpr absl::Duration kBackoffUnexpected = absl::Milliseconds(100);

}  // namespace

Runner::Runner(int index, Client* client, const RunContext& context)
    : index_(index),
      client_(client),
      context_(context),
      config_(*context.config),
      shape_(context.shape),
      device_inputs_(context.config->inputs == InputSource::kDevice),
      keep_kv_(context.config->verify_fraction > 0 && !device_inputs_),
      routing_key_(absl::StrCat(context.config->run_id, "-r", index)),
      rng_(SplitMix64(context.config->seed * 1000003 + index)) {}

absl::Status Runner::Prepare() {
  const size_t elem = DTypeSize(shape_.dtype);
  const int64_t rows = config_.max_pass_tokens;
  const size_t q_bytes = static_cast<size_t>(rows) * shape_.num_q_heads * shape_.head_dim * elem;
  const size_t kv_bytes = static_cast<size_t>(rows) * shape_.num_kv_heads * shape_.head_dim * elem;
  slots_.resize(config_.pipeline_depth);
  if (config_.data_plane == DataPlane::kBytes) {
    memory_.resize(slots_.size() * 3);
    for (size_t i = 0; i < slots_.size(); ++i) {
      memory_[3 * i].resize(q_bytes);
      memory_[3 * i + 1].resize(kv_bytes);
      memory_[3 * i + 2].resize(kv_bytes);
      slots_[i] = Slot{memory_[3 * i].data(), memory_[3 * i + 1].data(), memory_[3 * i + 2].data(),
                       nullptr};
    }
    return absl::OkStatus();
  }
  auto aligned = [](size_t bytes) {
    return (bytes + kRegionAlignment - 1) / kRegionAlignment * kRegionAlignment;
  };
  const uint64_t size = slots_.size() * (2 * aligned(q_bytes) + 2 * aligned(kv_bytes));
  absl::StatusOr<std::unique_ptr<SharedRegion>> region =
      context_.cuda_regions ? client_->AttachDeviceRegion(size, config_.region_cuda_device, Call())
                            : client_->AttachHostRegion(size, Call());
  if (!region.ok()) {
    return absl::Status(
        region.status().code(),
        absl::StrCat("runner ", index_, ": registering a ",
                     context_.cuda_regions
                         ? absl::StrCat("CUDA region on device ", config_.region_cuda_device)
                         : std::string("host region"),
                     " of ", size, " bytes (--data-plane=shm needs the server on this host): ",
                     region.status().message()));
  }
  region_ = *std::move(region);
  const Shape q_shape = {rows, shape_.num_q_heads, shape_.head_dim};
  const Shape kv_shape = {rows, shape_.num_kv_heads, shape_.head_dim};
  if (context_.cuda_regions) memory_.resize(slots_.size() * 4);
  for (size_t i = 0; i < slots_.size(); ++i) {
    // Sized above for exactly these allocations.
    const RegionTensor q = *region_->Allocate(shape_.dtype, q_shape);
    const RegionTensor k = *region_->Allocate(shape_.dtype, kv_shape);
    const RegionTensor v = *region_->Allocate(shape_.dtype, kv_shape);
    const RegionTensor out = *region_->Allocate(shape_.dtype, q_shape);
    Slot& slot = slots_[i];
    slot = Slot{q.mutable_data(), k.mutable_data(), v.mutable_data(), out.mutable_data(),
                q.offset(),       k.offset(),       v.offset(),       out.offset()};
    if (!context_.cuda_regions) continue;
    // Device memory is not for the host to touch: tensors are generated and checked in host
    // twins, and cross in one copy per tensor per layer (outside the timed round trip).
    std::byte** twins[] = {&slot.q, &slot.k, &slot.v, &slot.out};
    const size_t sizes[] = {q_bytes, kv_bytes, kv_bytes, q_bytes};
    for (size_t t = 0; t < 4; ++t) {
      memory_[4 * i + t].resize(sizes[t]);
      *twins[t] = memory_[4 * i + t].data();
    }
  }
  if (!device_inputs_) return absl::OkStatus();
  if (!context_.cuda_regions) {
    return absl::FailedPreconditionError(absl::StrCat(
        "runner ", index_, ": --inputs=device needs a CUDA region (the server computes on CUDA "
        "with one device, --region-memory cuda or auto)"));
  }
  if (KernelStatus s = cuda::SetDevice(config_.region_cuda_device); !s.ok()) {
    return FromKernel(s, "selecting the region's CUDA device");
  }
  // A job per entry's q (entries <= max_batch), and one per token of its K and of its V.
  absl::StatusOr<std::unique_ptr<DeviceInputs>> filler =
      DeviceInputs::Create(shape_.dtype, static_cast<size_t>(config_.max_batch + 2 * rows));
  if (!filler.ok()) return filler.status();
  filler_ = *std::move(filler);
  return absl::OkStatus();
}

absl::StatusOr<std::string> ChooseRegionMemory(const LoadgenConfig& config,
                                               const std::string& backend, int num_devices,
                                               bool cuda_built, int cuda_devices) {
  if (config.data_plane != DataPlane::kShm) return std::string();
  switch (config.region_memory) {
    case RegionMemory::kHost:
      return std::string("host");
    case RegionMemory::kCuda:
      if (!cuda_built || config.region_cuda_device >= cuda_devices) {
        return absl::FailedPreconditionError(
            absl::StrCat("--region-memory=cuda needs CUDA device ", config.region_cuda_device,
                         " in this process (",
                         cuda_built ? absl::StrCat(cuda_devices, " visible")
                                    : std::string("this build has no CUDA"),
                         ")"));
      }
      return std::string("cuda");
    case RegionMemory::kAuto:
      break;
  }
  const bool cuda = backend == "cuda" && num_devices == 1 && cuda_built &&
                    config.region_cuda_device < cuda_devices;
  return std::string(cuda ? "cuda" : "host");
}

absl::Status Runner::ToDevice(uint64_t offset, const std::byte* from, size_t bytes) const {
  const KernelStatus s =
      cuda::MemcpyHostToDevice(region_->data() + offset, from, bytes, /*stream=*/nullptr);
  if (s.ok()) return absl::OkStatus();
  return FromKernel(s, absl::StrCat("copying ", bytes, " bytes into the CUDA region"));
}

absl::Status Runner::FromDevice(uint64_t offset, std::byte* to, size_t bytes) const {
  KernelStatus s = cuda::MemcpyDeviceToHost(to, region_->data() + offset, bytes, nullptr);
  if (s.ok()) s = cuda::StreamSynchronize(nullptr);
  if (s.ok()) return absl::OkStatus();
  return FromKernel(s, absl::StrCat("copying ", bytes, " bytes out of the CUDA region"));
}

CallOptions Runner::Call() const {
  CallOptions options;
  options.timeout = config_.rpc_timeout;
  options.routing_key = routing_key_;
  return options;
}

bool Runner::CountError(const char* rpc, const absl::Status& status) {
  const std::string key = absl::StrCat(rpc, " ", absl::StatusCodeToString(status.code()));
  const bool expected = config_.expected_codes.count(status.code()) > 0;
  if (expected) {
    ++stats_.expected_errors[key];
  } else {
    ++stats_.unexpected_errors[key];
    context_.live->errors.fetch_add(1, std::memory_order_relaxed);
    if (stats_.error_examples.size() < kMaxExamples) {
      stats_.error_examples.push_back(absl::StrCat(rpc, ": ", status.ToString()));
    }
  }
  ++stats_.At(Seconds(absl::Now())).errors;
  return expected;
}

void Runner::Run() {
  // The runner's copies to and from its CUDA region go through this device's default stream.
  if (context_.cuda_regions) {
    if (KernelStatus s = cuda::SetDevice(config_.region_cuda_device); !s.ok()) {
      CountError("cudaSetDevice", absl::UnavailableError(s.message()));
      return;
    }
  }
  while (!context_.stop->load(std::memory_order_relaxed)) {
    Admit();
    if (active_.empty()) {
      const absl::Time now = absl::Now();
      const absl::Time next = context_.source->NextAvailable(now);
      if (next == absl::InfiniteFuture()) break;  // nothing more will come
      // Sleep in short slices so the stop flag is noticed promptly.
      absl::SleepFor(std::clamp(next - now, absl::Milliseconds(1), absl::Milliseconds(50)));
      continue;
    }
    PlanPass();
    if (absl::Status s = RunPass(); !s.ok()) {
      AbortPass(s);
      continue;
    }
    FinishPass();
  }
  for (Sequence& sequence : active_) {
    ++stats_.requests_incomplete;
    Release(&sequence);
  }
  context_.live->active_sequences.fetch_sub(static_cast<int64_t>(active_.size()));
  active_.clear();
  if (session_ != nullptr) {
    if (absl::Status s = session_->Finish(); !s.ok()) CountError("StepStream", s);
    session_.reset();
  }
  if (region_ != nullptr) {
    if (absl::Status s = region_->Release(); !s.ok()) CountError("ReleaseRegion", s);
  }
}

void Runner::Admit() {
  while (static_cast<int>(active_.size()) < config_.max_batch &&
         !context_.stop->load(std::memory_order_relaxed)) {
    std::optional<Request> request = context_.source->Next(absl::Now());
    if (!request.has_value()) return;
    if (absl::Status s = CreateOne(*std::move(request)); !s.ok()) {
      absl::SleepFor(CountError("CreateSequence", s) ? kBackoffExpected : kBackoffUnexpected);
      ++stats_.requests_rejected;
      return;
    }
  }
}

absl::Status Runner::CreateOne(Request request) {
  Sequence sequence;
  sequence.id = absl::StrCat(routing_key_, "-", request.number);
  sequence.tokens = request.prompt;
  uint64_t chain = kChainStart;
  for (int64_t token : sequence.tokens) sequence.chain.push_back(chain = ChainHash(chain, token));

  const absl::Time start = absl::Now();
  stats_.latency["queue"].Record(start - request.arrival);
  absl::StatusOr<uint32_t> cached =
      client_->CreateSequence(sequence.id,
                              config_.send_token_ids ? absl::Span<const int64_t>(request.prompt)
                                                     : absl::Span<const int64_t>(),
                              Call());
  stats_.latency["CreateSequence"].Record(absl::Now() - start);
  if (!cached.ok()) return cached.status();
  ++stats_.requests_started;
  stats_.prompt_tokens += request.prompt.size();
  sequence.request = std::move(request);
  // The contract: whole pages of the prompt, never more than the prompt.
  if (*cached % shape_.page_size != 0 || *cached > sequence.request.prompt.size()) {
    const absl::Status bad = absl::InternalError(
        absl::StrCat("CreateSequence('", sequence.id, "') answered cached_tokens ", *cached,
                     " for a prompt of ", sequence.request.prompt.size(),
                     " tokens; it must be a multiple of page_size ", shape_.page_size));
    CountError("CreateSequence", bad);
    ++stats_.requests_aborted;
    Release(&sequence);
    return absl::OkStatus();  // counted as an error and an abort, not as a rejection
  }
  sequence.context = sequence.prompt_done = *cached;
  stats_.cached_tokens += *cached;
  if (keep_kv_) {
    sequence.k.resize(shape_.num_layers);
    sequence.v.resize(shape_.num_layers);
    // The cached prefix is what some sequence sent for these tokens: regenerate it.
    const size_t bytes = static_cast<size_t>(*cached) * shape_.num_kv_heads * shape_.head_dim *
                         DTypeSize(shape_.dtype);
    scratch_.resize(2 * bytes);
    for (int layer = 0; layer < shape_.num_layers; ++layer) {
      AppendKv(&sequence, layer, 0, *cached, scratch_.data(), scratch_.data() + bytes);
    }
  }
  active_.push_back(std::move(sequence));
  context_.live->active_sequences.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

void Runner::GenerateKv(const Sequence& sequence, int layer, int64_t start, int64_t n,
                        std::byte* k, std::byte* v) const {
  const int64_t row = static_cast<int64_t>(shape_.num_kv_heads) * shape_.head_dim;
  const size_t row_bytes = static_cast<size_t>(row) * DTypeSize(shape_.dtype);
  for (int64_t t = 0; t < n; ++t) {
    const uint64_t chain = sequence.chain[start + t];
    FillValues(shape_.dtype, KeySeed(chain, layer), row, k + t * row_bytes);
    FillValues(shape_.dtype, ValueSeed(chain, layer), row, v + t * row_bytes);
  }
}

void Runner::AppendKv(Sequence* sequence, int layer, int64_t start, int64_t n, std::byte* k,
                      std::byte* v) {
  GenerateKv(*sequence, layer, start, n, k, v);
  const size_t row_bytes =
      static_cast<size_t>(shape_.num_kv_heads) * shape_.head_dim * DTypeSize(shape_.dtype);
  if (keep_kv_) {
    sequence->k[layer].append(reinterpret_cast<const char*>(k), n * row_bytes);
    sequence->v[layer].append(reinterpret_cast<const char*>(v), n * row_bytes);
  }
}

void Runner::PlanPass() {
  pass_.clear();
  int64_t budget = config_.max_pass_tokens;
  std::uniform_int_distribution<int64_t> token(0, kVocabularySize - 1);
  // Decodes first: a decode never waits behind prefill work (max_pass_tokens >= max_batch).
  for (Sequence& s : active_) {
    if (s.prompt_done < static_cast<int64_t>(s.request.prompt.size())) continue;
    // The token produced last pass goes in now.
    s.tokens.push_back(token(rng_));
    s.chain.push_back(ChainHash(s.chain.empty() ? kChainStart : s.chain.back(), s.tokens.back()));
    pass_.push_back(Entry{&s, s.context, 1, false});
    --budget;
  }
  for (Sequence& s : active_) {
    const int64_t left = static_cast<int64_t>(s.request.prompt.size()) - s.prompt_done;
    if (left <= 0 || budget <= 0) continue;
    const int64_t n = std::min<int64_t>({left, config_.prefill_chunk, budget});
    pass_.push_back(Entry{&s, s.context, n, true});
    budget -= n;
  }
  pass_rows_.clear();
  int64_t rows = 0;
  pass_is_decode_ = true;
  for (const Entry& e : pass_) {
    pass_rows_.push_back(rows);
    rows += e.n;
    pass_is_decode_ = pass_is_decode_ && !e.prefill;
  }
}

TensorView Runner::SlotView(std::byte* data, uint64_t offset, int64_t rows, int64_t heads) const {
  Shape shape = {rows, heads, shape_.head_dim};
  if (region_ == nullptr) return TensorView(shape_.dtype, std::move(shape), data);
  return TensorView(shape_.dtype, std::move(shape), data, RegionSlice{region_->id(), offset});
}

absl::Status Runner::BuildLayer(int layer, const Slot& slot, bool poison) {
  const int64_t q_row = static_cast<int64_t>(shape_.num_q_heads) * shape_.head_dim;
  const size_t size = DTypeSize(shape_.dtype);
  const size_t q_row_bytes = q_row * size;
  const size_t kv_row_bytes = static_cast<size_t>(shape_.num_kv_heads) * shape_.head_dim * size;
  inputs_.resize(pass_.size());
  jobs_.clear();
  for (size_t i = 0; i < pass_.size(); ++i) {
    const Entry& e = pass_[i];
    const size_t q_at = pass_rows_[i] * q_row_bytes, kv_at = pass_rows_[i] * kv_row_bytes;
    const uint64_t q_seed = rng_();
    if (device_inputs_) {
      AddFillJobs(e, layer, slot, q_at, kv_at, q_seed);
      // The host keeps the q of a step it will check (K/V are regenerated at the check).
      if (poison) FillValues(shape_.dtype, q_seed, e.n * q_row, slot.q + q_at);
    } else {
      FillValues(shape_.dtype, q_seed, e.n * q_row, slot.q + q_at);
      AppendKv(e.sequence, layer, e.start, e.n, slot.k + kv_at, slot.v + kv_at);
    }
    StepInput& input = inputs_[i];
    input.sequence_id = e.sequence->id;
    input.q = SlotView(slot.q + q_at, slot.q_offset + q_at, e.n, shape_.num_q_heads);
    input.k = SlotView(slot.k + kv_at, slot.k_offset + kv_at, e.n, shape_.num_kv_heads);
    input.v = SlotView(slot.v + kv_at, slot.v_offset + kv_at, e.n, shape_.num_kv_heads);
    input.token_ids.clear();
    if (config_.send_token_ids) {
      input.token_ids.assign(e.sequence->tokens.begin() + e.start,
                             e.sequence->tokens.begin() + e.start + e.n);
    }
    input.out.reset();
    if (region_ != nullptr) input.out = RegionSlice{region_->id(), slot.out_offset + q_at};
  }
  const size_t rows = pass_.empty() ? 0 : static_cast<size_t>(pass_rows_.back() + pass_.back().n);
  if (config_.batched_steps) BuildBatch(slot, static_cast<int64_t>(rows), layer);
  if (region_ == nullptr) return absl::OkStatus();
  const size_t q_bytes = rows * q_row_bytes, kv_bytes = rows * kv_row_bytes;
  if (!context_.cuda_regions) {
    if (poison) std::memset(slot.out, 0xff, q_bytes);  // NaN in every float format
    return absl::OkStatus();
  }
  // The data plane's contract: the client's writes are complete before the request is sent.
  if (device_inputs_) {
    if (absl::Status s = filler_->Fill(region_->data(), jobs_); !s.ok()) return s;
  } else {
    for (const auto& [offset, from, bytes] :
         {std::tuple{slot.q_offset, slot.q, q_bytes}, std::tuple{slot.k_offset, slot.k, kv_bytes},
          std::tuple{slot.v_offset, slot.v, kv_bytes}}) {
      if (absl::Status s = ToDevice(offset, from, bytes); !s.ok()) return s;
    }
  }
  KernelStatus s = KernelStatus::Ok();
  if (poison) s = cuda::Memset(region_->data() + slot.out_offset, 0xff, q_bytes, nullptr);
  if (s.ok()) s = cuda::StreamSynchronize(nullptr);
  return FromKernel(s, "preparing the CUDA region");
}

void Runner::AddFillJobs(const Entry& e, int layer, const Slot& slot, size_t q_at, size_t kv_at,
                         uint64_t q_seed) {
  const int64_t q_row = static_cast<int64_t>(shape_.num_q_heads) * shape_.head_dim;
  const int64_t kv_row = static_cast<int64_t>(shape_.num_kv_heads) * shape_.head_dim;
  const size_t kv_row_bytes = static_cast<size_t>(kv_row) * DTypeSize(shape_.dtype);
  jobs_.push_back(FillJob{q_seed, slot.q_offset + q_at, e.n * q_row});
  for (int64_t t = 0; t < e.n; ++t) {
    const uint64_t chain = e.sequence->chain[e.start + t];
    const size_t at = kv_at + static_cast<size_t>(t) * kv_row_bytes;
    jobs_.push_back(FillJob{KeySeed(chain, layer), slot.k_offset + at, kv_row});
    jobs_.push_back(FillJob{ValueSeed(chain, layer), slot.v_offset + at, kv_row});
  }
}

std::pair<const std::byte*, const std::byte*> Runner::KvToCheck(const Sequence& s, int layer,
                                                                int64_t context) {
  if (keep_kv_) {
    return {reinterpret_cast<const std::byte*>(s.k[layer].data()),
            reinterpret_cast<const std::byte*>(s.v[layer].data())};
  }
  const size_t bytes = static_cast<size_t>(context) * shape_.num_kv_heads * shape_.head_dim *
                       DTypeSize(shape_.dtype);
  scratch_.resize(2 * bytes);
  GenerateKv(s, layer, 0, context, scratch_.data(), scratch_.data() + bytes);
  return {scratch_.data(), scratch_.data() + bytes};
}

void Runner::WaitLayerGap() const {
  if (config_.layer_gap <= absl::ZeroDuration()) return;
  // Busy, as a runner waiting on its GPU spins; a sleep would add the scheduler's wake-up.
  const absl::Time until = last_response_ + config_.layer_gap;
  while (absl::Now() < until) {
  }
}

void Runner::BuildBatch(const Slot& slot, int64_t rows, int layer) {
  // A decode pass names its sequences at layer 0 only.
  const bool named = !config_.pass_steps || layer == 0;
  batch_.sequence_ids.resize(named ? inputs_.size() : 0);
  batch_.num_tokens.clear();
  batch_.token_ids.clear();
  bool all_one = true;
  for (size_t i = 0; named && i < inputs_.size(); ++i) {
    batch_.sequence_ids[i] = inputs_[i].sequence_id;
    all_one = all_one && pass_[i].n == 1;
    batch_.token_ids.insert(batch_.token_ids.end(), inputs_[i].token_ids.begin(),
                            inputs_[i].token_ids.end());
  }
  if (named && !all_one) {
    for (const Entry& e : pass_) batch_.num_tokens.push_back(e.n);
  }
  batch_.q = SlotView(slot.q, slot.q_offset, rows, shape_.num_q_heads);
  batch_.k = SlotView(slot.k, slot.k_offset, rows, shape_.num_kv_heads);
  batch_.v = SlotView(slot.v, slot.v_offset, rows, shape_.num_kv_heads);
  batch_.out.reset();
  if (region_ != nullptr) batch_.out = RegionSlice{region_->id(), slot.out_offset};
}

absl::Status Runner::RunPass() {
  answered_in_pass_ = 0;
  if (session_ == nullptr) {
    StepSessionOptions options;
    options.routing_key = routing_key_;
    options.max_in_flight = config_.pipeline_depth;
    options.response_timeout = config_.rpc_timeout;
    absl::StatusOr<std::unique_ptr<StepSession>> session = client_->OpenStepSession(options);
    if (!session.ok()) return session.status();
    session_ = *std::move(session);
  }
  std::bernoulli_distribution check(config_.verify_fraction);
  std::deque<InFlight> in_flight;
  batch_.pass_id = config_.pass_steps ? ++passes_begun_ : 0;
  for (int layer = 0; layer < shape_.num_layers; ++layer) {
    // The slot of layer - depth is free once its response is in.
    if (static_cast<int>(in_flight.size()) >= config_.pipeline_depth) {
      if (absl::Status s = ReceiveOne(&in_flight); !s.ok()) return s;
    }
    WaitLayerGap();
    InFlight f{layer, 0, absl::Time(), check(rng_)};
    if (absl::Status s = BuildLayer(layer, slots_[layer % slots_.size()], f.check); !s.ok()) {
      return s;
    }
    f.sent = absl::Now();
    const auto at = static_cast<uint32_t>(layer);
    absl::StatusOr<uint64_t> id = config_.pass_steps
                                      ? session_->SendPass(at, batch_.pass_id, batch_)
                                  : config_.batched_steps ? session_->Send(at, batch_)
                                                          : session_->Send(at, inputs_);
    if (!id.ok()) return id.status();
    f.step_id = *id;
    in_flight.push_back(std::move(f));
  }
  while (!in_flight.empty()) {
    if (absl::Status s = ReceiveOne(&in_flight); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status Runner::ReceiveOne(std::deque<InFlight>* in_flight) {
  absl::StatusOr<v1::StepResponse> response = session_->Receive();
  const absl::Time now = absl::Now();
  last_response_ = now;
  const InFlight f = std::move(in_flight->front());
  in_flight->pop_front();
  if (!response.ok()) return response.status();
  ++answered_in_pass_;
  RecordTiming(now - f.sent, *response);
  ++stats_.steps;
  ++stats_.verification.steps_seen;
  ++stats_.At(Seconds(now)).steps;
  context_.live->steps.fetch_add(1, std::memory_order_relaxed);
  if (f.check) Check(f, *response);
  return absl::OkStatus();
}

void Runner::RecordTiming(absl::Duration latency, const v1::StepResponse& response) {
  // Service overhead: everything but the kernels, seen from here (round trip) and by the server.
  const StepTiming timing = TimingOf(response);
  for (const char* prefix : {"", "decode "}) {
    if (*prefix != '\0' && !pass_is_decode_) continue;
    const std::string p(prefix);
    stats_.latency[p + "Step"].Record(latency);
    stats_.latency[p + "Step kernel"].Record(timing.kernel);
    stats_.latency[p + "Step overhead"].Record(
        std::max(latency - timing.kernel, absl::ZeroDuration()));
    stats_.latency[p + "Step server overhead"].Record(
        std::max(timing.server - timing.kernel, absl::ZeroDuration()));
    // The server's overhead in stages (StepResponse.queue_ns, launch_ns): before the launch,
    // the launch's host work (launch minus kernels), and after it up to the response.
    if (timing.launch > absl::ZeroDuration()) {
      stats_.latency[p + "Step server queue"].Record(timing.queue);
      stats_.latency[p + "Step server launch host"].Record(
          std::max(timing.launch - timing.kernel, absl::ZeroDuration()));
      stats_.latency[p + "Step server completion"].Record(
          std::max(timing.server - timing.queue - timing.launch, absl::ZeroDuration()));
    }
  }
}

void Runner::Check(const InFlight& f, const v1::StepResponse& response) {
  VerificationStats& v = stats_.verification;
  ++v.steps_checked;
  const int64_t q_row = static_cast<int64_t>(shape_.num_q_heads) * shape_.head_dim;
  const int size = DTypeSize(shape_.dtype);
  const Slot& slot = slots_[f.layer % slots_.size()];
  if (context_.cuda_regions) {
    const size_t rows = static_cast<size_t>(pass_rows_.back() + pass_.back().n);
    if (absl::Status s = FromDevice(slot.out_offset, slot.out, rows * q_row * size); !s.ok()) {
      CountError("Step output", s);
      return;
    }
  }
  for (size_t i = 0; i < pass_.size(); ++i) {
    const Entry& e = pass_[i];
    const Sequence& s = *e.sequence;
    const int64_t context = e.start + e.n;  // this layer's K/V after the append
    const size_t q_at = pass_rows_[i] * q_row * size;
    want_.resize(static_cast<size_t>(e.n * q_row * size));
    const std::pair<const std::byte*, const std::byte*> kv = KvToCheck(s, f.layer, context);
    const absl::Status computed = tools::CpuAttentionRows(
        shape_.dtype, e.n, context, shape_.num_q_heads, shape_.num_kv_heads, shape_.head_dim,
        slot.q + q_at, kv.first, kv.second, want_.data());
    ++v.entries_checked;
    if (!computed.ok()) {  // shapes are the server's own; a refusal here is a finding too
      ++v.mismatched_entries;
      context_.live->mismatches.fetch_add(1, std::memory_order_relaxed);
      if (v.examples.size() < kMaxExamples) {
        v.examples.push_back(absl::StrCat("sequence ", s.id, " layer ", f.layer,
                                          ": CPU recomputation failed: ", computed.ToString()));
      }
      continue;
    }
    const Shape out_shape = {e.n, shape_.num_q_heads, shape_.head_dim};
    const void* got = slot.out != nullptr ? static_cast<const void*>(slot.out + q_at)
                      : config_.batched_steps
                          ? static_cast<const void*>(response.batch_out().data().data() + q_at)
                          : response.out(i).data().data();
    const tools::Comparison c =
        tools::Compare(TensorView(shape_.dtype, out_shape, got),
                       TensorView(shape_.dtype, out_shape, want_.data()), context_.tolerance);
    v.elements_checked += c.elements;
    v.max_abs_error = std::max(v.max_abs_error, c.max_abs_error);
    if (c.ok()) continue;
    ++v.mismatched_entries;
    v.mismatched_elements += c.mismatches;
    context_.live->mismatches.fetch_add(1, std::memory_order_relaxed);
    if (v.examples.size() < kMaxExamples) {
      const int64_t index = *c.first_index;
      v.examples.push_back(absl::StrFormat(
          "sequence %s layer %d step %d (%s of %d tokens at position %d, context %d): %d of %d "
          "elements differ; first at token %d head %d dim %d: server %g, CPU %g",
          s.id, f.layer, f.step_id, e.prefill ? "prefill" : "decode", e.n, e.start, context,
          c.mismatches, c.elements, e.start + index / q_row, index % q_row / shape_.head_dim,
          index % shape_.head_dim, c.first_got, c.first_want));
    }
  }
}

void Runner::FinishPass() {
  const absl::Time now = absl::Now();
  ++stats_.passes;
  TimelineBucket& bucket = stats_.At(Seconds(now));
  for (const Entry& e : pass_) {
    Sequence& s = *e.sequence;
    s.context += e.n;
    bool produced = false;
    if (e.prefill) {
      s.prompt_done += e.n;
      stats_.prefill_tokens += e.n;
      bucket.prefill_tokens += e.n;
      context_.live->prefill_tokens.fetch_add(e.n, std::memory_order_relaxed);
      // The pass that reads the last prompt token yields the first output token.
      produced = s.prompt_done == static_cast<int64_t>(s.request.prompt.size());
    } else {
      ++stats_.decode_tokens;
      ++bucket.decode_tokens;
      context_.live->decode_tokens.fetch_add(1, std::memory_order_relaxed);
      produced = true;
    }
    if (!produced) continue;
    // A prompt served wholly from the prefix cache gets its first token from a decode.
    stats_.latency[s.produced == 0 ? "ttft" : "tpot"].Record(
        now - (s.produced == 0 ? s.request.arrival : s.last_token));
    s.last_token = now;
    ++s.produced;
  }
  for (auto it = active_.begin(); it != active_.end();) {
    if (it->produced < it->request.output_len) {
      ++it;
      continue;
    }
    stats_.latency["request"].Record(now - it->request.arrival);
    ++stats_.requests_completed;
    ++bucket.completed;
    context_.live->completed.fetch_add(1, std::memory_order_relaxed);
    context_.live->active_sequences.fetch_sub(1, std::memory_order_relaxed);
    Release(&*it);
    it = active_.erase(it);
  }
}

void Runner::AbortPass(const absl::Status& status) {
  const bool expected = CountError("Step", status);
  session_.reset();  // cancels the stream; the next pass opens a new one
  auto in_pass = [this](const Sequence& s) {
    return std::any_of(pass_.begin(), pass_.end(),
                       [&](const Entry& e) { return e.sequence == &s; });
  };
  if (status.code() == absl::StatusCode::kResourceExhausted && answered_in_pass_ == 0) {
    // The server refused layer 0 for lack of KV memory. A Step is all-or-nothing and no layer can
    // apply before the one below it, so nothing of this pass reached the cache: like a serving
    // engine under memory pressure, preempt the newest sequence and retry the others.
    RollBackPass();
    auto newest = std::find_if(active_.rbegin(), active_.rend(), in_pass);
    ++stats_.requests_preempted;
    context_.live->active_sequences.fetch_sub(1, std::memory_order_relaxed);
    Release(&*newest);
    active_.erase(std::next(newest).base());
  } else {
    // Some layers of this pass may have been applied and others not: these sequences can no
    // longer be stepped consistently, so they go.
    for (auto it = active_.begin(); it != active_.end();) {
      if (!in_pass(*it)) {
        ++it;
        continue;
      }
      ++stats_.requests_aborted;
      context_.live->active_sequences.fetch_sub(1, std::memory_order_relaxed);
      Release(&*it);
      it = active_.erase(it);
    }
  }
  pass_.clear();
  absl::SleepFor(expected ? kBackoffExpected : kBackoffUnexpected);
}

void Runner::RollBackPass() {
  const size_t row_bytes =
      static_cast<size_t>(shape_.num_kv_heads) * shape_.head_dim * DTypeSize(shape_.dtype);
  for (const Entry& e : pass_) {
    Sequence& s = *e.sequence;
    if (!e.prefill) {  // PlanPass appended the decode's token
      s.tokens.pop_back();
      s.chain.pop_back();
    }
    for (int layer = 0; keep_kv_ && layer < shape_.num_layers; ++layer) {
      s.k[layer].resize(std::min(s.k[layer].size(), e.start * row_bytes));
      s.v[layer].resize(std::min(s.v[layer].size(), e.start * row_bytes));
    }
  }
}

void Runner::Release(Sequence* sequence) {
  const absl::Time start = absl::Now();
  const absl::Status s = client_->FreeSequence(sequence->id, Call());
  stats_.latency["FreeSequence"].Record(absl::Now() - start);
  if (!s.ok()) CountError("FreeSequence", s);
  // The K/V copies can be large; drop them now rather than with the list node.
  std::vector<std::string>().swap(sequence->k);
  std::vector<std::string>().swap(sequence->v);
}

}  // namespace flashkv::loadgen
