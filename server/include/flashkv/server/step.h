#pragma once

// One Step request (a unary Step call or one StepStream message) from its checked request to its
// response. A Step's entries may live on several devices: it is split into one StepPart per
// device, each run by that device's scheduler. A Step is all-or-nothing, across devices too:
// every part prepares its own kvcache LayerBatch (reserving what it needs) and computes; when the
// last part reports, either every batch commits or every batch aborts. Steps of one StepStream
// also commit in request order: a step whose predecessor failed is aborted (the stream ends with
// the predecessor's status, and nothing after it changed).
//
// Ownership: shared by the RPC that created it and the schedulers holding its parts; parts are
// owned by their step. Thread-safety: ReportPart, Cancel and the accessors may be called from any
// thread; a part's fields are touched only by its scheduler until the part has reported.

#include <grpcpp/support/byte_buffer.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "flashkv/base/mutex.h"
#include "flashkv/kvcache/layer_batch.h"
#include "flashkv/server/clock.h"
#include "flashkv/server/host_bytes.h"
#include "flashkv/server/region_registry.h"
#include "flashkv/server/tenant_ledger.h"
#include "flashkv/wire/message_bytes.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {

class CacheSet;
class DecodePass;
class StepState;

// Called once per step with its final status and, on success, the serialized StepResponse.
using StepCompletion = std::function<void(const absl::Status& status, grpc::ByteBuffer response)>;

// Told when a step's parts stop holding their sequences (after commit or abort).
class PartReleaser {
 public:
  virtual ~PartReleaser() = default;
  virtual void ReleasePart(const class StepPart& part) = 0;
};

struct StepEntry {
  std::string sequence_id;
  int num_tokens = 0;
  wire::Span q, k, v;  // in the step's message: [n,Hq,D], [n,Hkv,D], [n,Hkv,D]
  // Inputs in a CUDA IPC region, on the entry's device (checked): the kernels read them there, and
  // the span above carries only the size.
  std::optional<RegionBytes> q_device, k_device, v_device;
  std::vector<int64_t> token_ids;
  int device = 0;  // device index
  // Where the output rows go: the caller's shared-memory region (StepEntry.out; host memory, or
  // device memory of the entry's device), or bytes
  // `out_offset` on in the step's output buffer (set by StepState), sent in the response.
  std::optional<RegionBytes> out_region;
  wire::RegionSliceView out_slice;
  size_t out_offset = 0;
};

class StepPart {
 public:
  StepPart(StepState* step, int device) : step_(step), device_(device) {}

  StepState& step() const { return *step_; }
  int device() const { return device_; }
  // Indices into step().entries(), in request order, and their rows within this part: entry
  // entries()[i] owns part rows [row_start()[i], row_start()[i+1]).
  const std::vector<int>& entries() const { return entries_; }
  const std::vector<int64_t>& row_start() const { return row_start_; }
  int64_t total_rows() const { return row_start_.back(); }
  const std::vector<kvcache::BatchEntry>& batch_entries() const { return batch_entries_; }
  // Views of the entries' ids (StepState::entries() never move once the step is built).
  const std::vector<absl::string_view>& sequence_ids() const { return sequence_ids_; }

  // Scheduler state. The batch is pending from Prepare until the step resolves. (An optional:
  // LayerBatch's inline default constructor needs kvcache's private BatchRecord to be complete.)
  std::optional<kvcache::LayerBatch> batch;
  bool prepared() const { return batch.has_value() && batch->pending(); }
  int64_t rows_done = 0;
  absl::Duration kernel_time;  // of the launches this part's rows were in (StepResponse.kernel_ns)
  absl::Time ready_time;       // for fairness: arrival, then end of its last launch
  absl::Time first_launch;     // for the queue-wait metric (and StepResponse.queue_ns)
  // Its launch rounds, start to end, kernels included (StepResponse.launch_ns).
  absl::Duration launch_time;
  bool reported = false;
  bool holds_sequences = false;  // its scheduler counts its sequences as busy

 private:
  friend class StepState;
  void Reserve(size_t entries);
  void AddEntry(int index, const StepEntry& entry);

  StepState* const step_;
  const int device_;
  std::vector<int> entries_;
  std::vector<int64_t> row_start_ = {0};
  std::vector<kvcache::BatchEntry> batch_entries_;
  std::vector<absl::string_view> sequence_ids_;
};

class StepState : public std::enable_shared_from_this<StepState> {
 public:
  // `entries` are checked and routed (each has its device). The output buffer for every entry's
  // [n, Hq, D] rows is allocated here.
  StepState(wire::MessageBytes message, uint32_t layer, uint64_t step_id,
            std::vector<StepEntry> entries, int64_t out_row_bytes, int32_t wire_dtype,
            int num_q_heads, int head_dim, absl::Time received, std::shared_ptr<Clock> clock,
            CacheSet* caches, std::vector<PartReleaser*> releasers, StepCompletion done);
  // A step destroyed unresolved (never submitted) gives its block reservation back.
  ~StepState();
  StepState(const StepState&) = delete;
  StepState& operator=(const StepState&) = delete;

  // Set before the step is submitted. The tenant whose call it is (the scheduler shares launches
  // fairly between tenants), and the KV blocks reserved for it against the tenant's quota,
  // settled when the step resolves.
  void set_tenant(std::string tenant) { tenant_ = std::move(tenant); }
  const std::string& tenant() const { return tenant_; }
  void set_reservation(LedgerReservation reservation) { reservation_ = std::move(reservation); }

  const wire::MessageBytes& message() const { return message_; }
  uint32_t layer() const { return layer_; }
  uint64_t step_id() const { return step_id_; }
  const std::vector<StepEntry>& entries() const { return entries_; }
  const std::vector<std::unique_ptr<StepPart>>& parts() const { return parts_; }
  // Where entry `e`'s output rows go: a host pointer, or a device pointer when OutputOnDevice.
  uint8_t* OutputRows(const StepEntry& e) const {
    return e.out_region ? e.out_region->data : output_->data() + e.out_offset;
  }
  static bool OutputOnDevice(const StepEntry& e) {
    return e.out_region && e.out_region->region->device() >= 0;
  }
  int64_t out_row_bytes() const { return out_row_bytes_; }
  absl::Time received() const { return received_; }
  int64_t total_rows() const;

  // A part's final word: OK once all its rows are computed, else why it stopped. The last report
  // resolves the step (commit or abort everywhere), unless it waits for its stream predecessor.
  void ReportPart(StepPart* part, absl::Status status);
  // The RPC was cancelled (or its deadline passed): parts not yet reported stop at the next
  // scheduling point, and the step aborts.
  void Cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  // Some part failed or the step was cancelled: the others need not compute.
  bool doomed() const { return cancelled_.load() || failed_.load(); }

  // Launch at once, without waiting for the batching window (the server's own warm-up steps).
  void set_urgent() { urgent_ = true; }
  bool urgent() const { return urgent_; }

  // A batched request (StepRequest.batch; set before the step is submitted): the response carries
  // the whole output as one StepResponse.batch_out, the caller's slice `out` when present (the
  // entries' outputs are consecutive rows of it), else the output buffer's bytes (the entries'
  // rows follow each other there too).
  void set_batch_output(wire::RegionSliceView out) { batch_output_ = out; }
  bool batched() const { return batch_output_.has_value(); }

  // Stream order: this step commits only after `predecessor` resolved, and aborts if it failed.
  void set_predecessor(std::shared_ptr<StepState> predecessor);

  // A step of a decode pass (decode_pass.h; set before the step is submitted): the begin step
  // (layer 0, naming the sequences), or a layer step, whose one entry holds the pass's T rows
  // and names no sequence. It launches alone with the pass's batch; the last layer's step commits
  // the pass when it resolves OK, any failing step aborts it. The begin step's part keeps its
  // sequences busy until the pass ends (the pass releases them, not the step).
  void set_pass(std::shared_ptr<DecodePass> pass) { pass_ = std::move(pass); }
  DecodePass* pass() const { return pass_.get(); }
  bool pass_begin() const { return pass_ != nullptr && layer_ == 0; }

 private:
  // Commits or aborts every part, releases their sequences and completes. Returns a successor
  // that was waiting for this step and is now ready to resolve.
  std::shared_ptr<StepState> Resolve();
  grpc::ByteBuffer EncodeResponse() const;

  const wire::MessageBytes message_;
  const uint32_t layer_;
  const uint64_t step_id_;
  const std::vector<StepEntry> entries_;
  std::vector<std::unique_ptr<StepPart>> parts_;
  const int64_t out_row_bytes_;
  const int32_t wire_dtype_;
  const int num_q_heads_;
  const int head_dim_;
  std::shared_ptr<HostBytes> output_;
  const absl::Time received_;
  const std::shared_ptr<Clock> clock_;  // for StepResponse.server_ns
  CacheSet* const caches_;
  const std::vector<PartReleaser*> releasers_;  // per device index
  const StepCompletion done_;
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> failed_{false};
  bool urgent_ = false;                                // set before the step is submitted
  std::optional<wire::RegionSliceView> batch_output_;  // set before the step is submitted
  std::shared_ptr<DecodePass> pass_;                   // set before the step is submitted
  std::string tenant_;
  std::optional<LedgerReservation> reservation_;  // settled (and reset) by Resolve

  Mutex mu_;
  int outstanding_parts_ ABSL_GUARDED_BY(mu_);
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  bool resolved_ ABSL_GUARDED_BY(mu_) = false;
  bool succeeded_ ABSL_GUARDED_BY(mu_) = false;
  bool computed_ ABSL_GUARDED_BY(mu_) = false;  // every part reported
  std::shared_ptr<StepState> predecessor_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<StepState> successor_ ABSL_GUARDED_BY(mu_);  // computed, waiting for this one
};

}  // namespace flashkv::server
