#include "runner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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
      keep_kv_(context.config->verify_fraction > 0),
      routing_key_(absl::StrCat(context.config->run_id, "-r", index)),
      rng_(SplitMix64(context.config->seed * 1000003 + index)) {}

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
    for (int layer = 0; layer < shape_.num_layers; ++layer) {
      AppendKv(&sequence, layer, 0, *cached, nullptr, nullptr);
    }
  }
  active_.push_back(std::move(sequence));
  context_.live->active_sequences.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

void Runner::AppendKv(Sequence* sequence, int layer, int64_t start, int64_t n, std::string* k,
                      std::string* v) {
  const int64_t row = static_cast<int64_t>(shape_.num_kv_heads) * shape_.head_dim;
  const size_t row_bytes = static_cast<size_t>(row) * DTypeSize(shape_.dtype);
  std::string local_k, local_v;
  std::string& kb = k != nullptr ? *k : local_k;
  std::string& vb = v != nullptr ? *v : local_v;
  kb.resize(n * row_bytes);
  vb.resize(n * row_bytes);
  for (int64_t t = 0; t < n; ++t) {
    const uint64_t chain = sequence->chain[start + t];
    FillValues(shape_.dtype, KeySeed(chain, layer), row, kb.data() + t * row_bytes);
    FillValues(shape_.dtype, ValueSeed(chain, layer), row, vb.data() + t * row_bytes);
  }
  if (keep_kv_) {
    sequence->k[layer].append(kb);
    sequence->v[layer].append(vb);
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
}

v1::StepRequest Runner::BuildLayer(int layer, InFlight* in_flight) {
  v1::StepRequest request;
  request.set_layer(static_cast<uint32_t>(layer));
  const int64_t q_row = static_cast<int64_t>(shape_.num_q_heads) * shape_.head_dim;
  const int size = DTypeSize(shape_.dtype);
  for (const Entry& e : pass_) {
    v1::StepEntry* entry = request.add_entries();
    entry->set_sequence_id(e.sequence->id);
    auto shape = [&](v1::Tensor* t, int64_t heads) {
      t->set_dtype(ToProtoDType(shape_.dtype));
      t->add_shape(e.n);
      t->add_shape(heads);
      t->add_shape(shape_.head_dim);
    };
    shape(entry->mutable_q(), shape_.num_q_heads);
    shape(entry->mutable_k(), shape_.num_kv_heads);
    shape(entry->mutable_v(), shape_.num_kv_heads);
    std::string* q = entry->mutable_q()->mutable_data();
    q->resize(static_cast<size_t>(e.n * q_row * size));
    FillValues(shape_.dtype, rng_(), e.n * q_row, q->data());
    AppendKv(e.sequence, layer, e.start, e.n, entry->mutable_k()->mutable_data(),
             entry->mutable_v()->mutable_data());
    if (config_.send_token_ids) {
      entry->mutable_token_ids()->Assign(e.sequence->tokens.begin() + e.start,
                                         e.sequence->tokens.begin() + e.start + e.n);
    }
    if (in_flight->check) in_flight->q.push_back(*q);
  }
  return request;
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
  for (int layer = 0; layer < shape_.num_layers; ++layer) {
    InFlight f{layer, 0, absl::Time(), check(rng_), {}};
    v1::StepRequest request = BuildLayer(layer, &f);
    if (static_cast<int>(in_flight.size()) >= config_.pipeline_depth) {
      if (absl::Status s = ReceiveOne(&in_flight); !s.ok()) return s;
    }
    f.sent = absl::Now();
    absl::StatusOr<uint64_t> id = session_->Send(std::move(request));
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
  const InFlight f = std::move(in_flight->front());
  in_flight->pop_front();
  if (!response.ok()) return response.status();
  ++answered_in_pass_;
  stats_.latency["Step"].Record(now - f.sent);
  ++stats_.steps;
  ++stats_.verification.steps_seen;
  ++stats_.At(Seconds(now)).steps;
  context_.live->steps.fetch_add(1, std::memory_order_relaxed);
  if (f.check) Check(f, *response);
  return absl::OkStatus();
}

void Runner::Check(const InFlight& f, const v1::StepResponse& response) {
  VerificationStats& v = stats_.verification;
  ++v.steps_checked;
  const int64_t q_row = static_cast<int64_t>(shape_.num_q_heads) * shape_.head_dim;
  const int size = DTypeSize(shape_.dtype);
  for (size_t i = 0; i < pass_.size(); ++i) {
    const Entry& e = pass_[i];
    const Sequence& s = *e.sequence;
    const int64_t context = e.start + e.n;  // this layer's K/V after the append
    want_.resize(static_cast<size_t>(e.n * q_row * size));
    const absl::Status computed = tools::CpuAttentionRows(
        shape_.dtype, e.n, context, shape_.num_q_heads, shape_.num_kv_heads, shape_.head_dim,
        f.q[i].data(), s.k[f.layer].data(), s.v[f.layer].data(), want_.data());
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
    const tools::Comparison c =
        tools::Compare(TensorView(shape_.dtype, out_shape, response.out(i).data().data()),
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
