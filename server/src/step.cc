#include "flashkv/server/step.h"

#include <algorithm>
#include <utility>

#include "flashkv/server/cache_set.h"
#include "flashkv/server/decode_pass.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {

void StepPart::Reserve(size_t entries) {
  entries_.reserve(entries);
  row_start_.reserve(entries + 1);
  sequence_ids_.reserve(entries);
  batch_entries_.reserve(entries);
}

void StepPart::AddEntry(int index, const StepEntry& entry) {
  entries_.push_back(index);
  row_start_.push_back(row_start_.back() + entry.num_tokens);
  // A decode pass's layer step: its one entry is the pass's rows, and names no sequence (the pass
  // holds them; ids are never empty otherwise).
  if (entry.sequence_id.empty()) return;
  sequence_ids_.push_back(entry.sequence_id);
  // The BatchEntry views point into the step's entries, which never move after construction.
  batch_entries_.push_back(kvcache::BatchEntry{entry.sequence_id, entry.num_tokens,
                                               absl::MakeConstSpan(entry.token_ids)});
}

namespace {

// Entry i's output rows follow entry i-1's in the step's output buffer (entries whose output
// goes to a region take no room there).
std::vector<StepEntry> WithOutputOffsets(std::vector<StepEntry> entries, int64_t out_row_bytes) {
  size_t offset = 0;
  for (StepEntry& e : entries) {
    if (e.out_region) continue;
    e.out_offset = offset;
    offset += static_cast<size_t>(e.num_tokens) * static_cast<size_t>(out_row_bytes);
  }
  return entries;
}

}  // namespace

StepState::StepState(wire::MessageBytes message, uint32_t layer, uint64_t step_id,
                     std::vector<StepEntry> entries, int64_t out_row_bytes, int32_t wire_dtype,
                     int num_q_heads, int head_dim, absl::Time received,
                     std::shared_ptr<Clock> clock, CacheSet* caches,
                     std::vector<PartReleaser*> releasers, StepCompletion done)
    : message_(std::move(message)),
      layer_(layer),
      step_id_(step_id),
      entries_(WithOutputOffsets(std::move(entries), out_row_bytes)),
      out_row_bytes_(out_row_bytes),
      wire_dtype_(wire_dtype),
      num_q_heads_(num_q_heads),
      head_dim_(head_dim),
      received_(received),
      clock_(std::move(clock)),
      caches_(caches),
      releasers_(std::move(releasers)),
      done_(std::move(done)) {
  size_t out_bytes = 0;
  std::vector<StepPart*> part_of_device(releasers_.size(), nullptr);
  for (size_t i = 0; i < entries_.size(); ++i) {
    const StepEntry& e = entries_[i];
    StepPart*& part = part_of_device[e.device];
    if (part == nullptr) {
      parts_.push_back(std::make_unique<StepPart>(this, e.device));
      part = parts_.back().get();
      // Most steps have one part: room for every entry (a step over several devices
      // over-reserves its first part a little).
      if (parts_.size() == 1) part->Reserve(entries_.size() - i);
    }
    part->AddEntry(static_cast<int>(i), e);
    if (!e.out_region) {
      out_bytes += static_cast<size_t>(e.num_tokens) * static_cast<size_t>(out_row_bytes_);
    }
  }
  output_ = HostBytes::Allocate(out_bytes);
  for (auto& part : parts_) part->ready_time = received_;
  outstanding_parts_ = static_cast<int>(parts_.size());
}

StepState::~StepState() {
  if (reservation_.has_value()) caches_->SettleStep(*reservation_, /*committed=*/false);
}

int64_t StepState::total_rows() const {
  int64_t rows = 0;
  for (const StepEntry& e : entries_) rows += e.num_tokens;
  return rows;
}

void StepState::set_predecessor(std::shared_ptr<StepState> predecessor) {
  MutexLock lock(&mu_);
  predecessor_ = std::move(predecessor);
}

void StepState::ReportPart(StepPart* part, absl::Status status) {
  part->reported = true;
  {
    MutexLock lock(&mu_);
    if (!status.ok()) {
      if (failure_.ok()) failure_ = std::move(status);
      failed_.store(true);
    }
    if (--outstanding_parts_ > 0) return;
    computed_ = true;
    if (predecessor_ != nullptr) {
      // Lock order: a successor's mu_ before its predecessor's.
      MutexLock predecessor_lock(&predecessor_->mu_);
      if (!predecessor_->resolved_) {
        predecessor_->successor_ = shared_from_this();
        return;  // the predecessor resolves this step when it is done
      }
    }
  }
  std::shared_ptr<StepState> next = Resolve();
  while (next != nullptr) next = next->Resolve();
}

std::shared_ptr<StepState> StepState::Resolve() {
  absl::Status status;
  // Resolved, this step no longer needs its predecessor, but the predecessor may be the last
  // owner of that step (and through it of a finished pass and its begin step). Freeing them walks
  // memory the kernels just evicted from the caches (~10 µs at batch 256 on the CPU backend), so
  // it happens after the response is handed on, outside the step's server time.
  std::shared_ptr<StepState> predecessor;
  {
    MutexLock lock(&mu_);
    status = failure_;
    if (status.ok() && cancelled_.load()) {
      status = absl::CancelledError("the call was cancelled before its step was applied");
    }
    if (status.ok() && predecessor_ != nullptr) {
      MutexLock predecessor_lock(&predecessor_->mu_);
      if (!predecessor_->succeeded_) {
        status = absl::AbortedError("not applied: the request before it on this stream (step_id " +
                                    std::to_string(predecessor_->step_id_) + ") failed");
      }
    }
    predecessor = std::move(predecessor_);  // resolved: the chain behind this step can go
  }
  if (pass_ != nullptr) {
    // Stream order makes this the pass's order too: its last layer commits after every earlier
    // step of the stream resolved OK.
    if (!status.ok()) {
      pass_->Abort(status);
    } else if (static_cast<int>(layer_) + 1 == pass_->num_layers()) {
      pass_->Commit();
    }
  }
  for (auto& part : parts_) {
    if (!part->prepared()) continue;
    kvcache::KvCache& cache = caches_->cache(part->device());
    if (status.ok()) {
      cache.Commit(std::move(*part->batch));
    } else {
      cache.Abort(std::move(*part->batch));
    }
    part->batch.reset();
  }
  if (reservation_.has_value()) {
    caches_->SettleStep(*reservation_, status.ok());
    reservation_.reset();
  }
  if (!pass_begin()) {
    for (auto& part : parts_) releasers_[part->device()]->ReleasePart(*part);
  }
  std::shared_ptr<StepState> successor;
  {
    MutexLock lock(&mu_);
    resolved_ = true;
    succeeded_ = status.ok();
    successor = std::move(successor_);
  }
  done_(status, status.ok() ? EncodeResponse() : grpc::ByteBuffer());
  return successor;
}

grpc::ByteBuffer StepState::EncodeResponse() const {
  std::vector<wire::TensorData> out;
  wire::TensorData batch_out;
  if (batch_output_.has_value()) {
    const int64_t rows = total_rows();
    batch_out.dtype = wire_dtype_;
    batch_out.shape = {rows, num_q_heads_, head_dim_};
    if (batch_output_->present) {
      batch_out.region = *batch_output_;
    } else {
      batch_out.data = output_->data();
      batch_out.size = static_cast<size_t>(rows * out_row_bytes_);
      batch_out.owner = output_;
    }
  }
  out.reserve(batch_output_.has_value() ? 0 : entries_.size());
  for (size_t i = 0; !batch_output_.has_value() && i < entries_.size(); ++i) {
    const StepEntry& e = entries_[i];
    wire::TensorData tensor;
    tensor.dtype = wire_dtype_;
    tensor.shape = {e.num_tokens, num_q_heads_, head_dim_};
    if (e.out_region) {
      tensor.region = e.out_slice;  // the rows are already in the caller's region
    } else {
      tensor.data = output_->data() + e.out_offset;
      tensor.size = static_cast<size_t>(e.num_tokens * out_row_bytes_);
      tensor.owner = output_;
    }
    out.push_back(std::move(tensor));
  }
  // The slowest device's kernels and launches: parts on different devices run at the same time;
  // the queue until the last device started on the step.
  absl::Duration kernel_time, launch_time, queue_time;
  for (const auto& part : parts_) {
    kernel_time = std::max(kernel_time, part->kernel_time);
    if (part->launch_time <= absl::ZeroDuration()) continue;
    launch_time = std::max(launch_time, part->launch_time);
    queue_time = std::max(queue_time, part->first_launch - received_);
  }
  auto ns = [](absl::Duration d) {
    return static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Nanoseconds(d)));
  };
  wire::StepTiming timing;
  timing.kernel_ns = ns(kernel_time);
  timing.server_ns = ns(clock_->Now() - received_);
  timing.queue_ns = ns(queue_time);
  timing.launch_ns = ns(launch_time);
  return wire::EncodeStepResponse(out, step_id_, timing,
                                  batch_output_.has_value() ? &batch_out : nullptr);
}

}  // namespace flashkv::server
