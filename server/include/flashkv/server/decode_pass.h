#pragma once

// A decode pass (docs/api.md#decode-passes): the per-sequence work of a batched decode step done
// once per forward pass instead of once per layer. Its layer-0 step (the begin step) names the
// sequences; the scheduler prepares one kvcache batch over every layer (KvCache::PreparePass:
// sequences resolved and pinned, blocks reserved, metadata written) and, with CUDA, copies the
// metadata to the device once. Its steps at layers 1..L-1 name only the pass and carry the
// tensors: each launches append + attention with the pass's metadata, with no per-entry work.
// Layer L-1's step commits the pass when it resolves; any failure, or the stream ending, aborts
// it (kvcache Abort: every reservation undone, lengths unchanged on every layer).
//
// While the pass lives, the begin step's part keeps its sequences busy in the device scheduler
// (steps naming them wait, in arrival order, as behind any step in flight) and the kvcache batch
// holds them (forks and swaps refused with ABORTED, frees deferred to the end).
//
// Ownership: shared by the stream's pass table (StreamPasses) and by every step of the pass. The
// pass holds its begin step until it ends (the busy ids view that step's ids); Commit or Abort
// breaks that cycle, and the stream aborts every pass it still has when it ends.
// Thread-safety: the submission side (StreamPasses, next_layer) runs under the stream's lock;
// everything else may be called from any thread (mu_). Launches and the end never overlap:
// Acquire/Release bracket a launch, and an Abort during one takes effect at its Release.

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "flashkv/attention.h"
#include "flashkv/base/mutex.h"
#include "flashkv/kvcache/kv_cache.h"
#include "flashkv/kvcache/memory.h"
#include "flashkv/server/tenant_ledger.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {

class CacheSet;
class PartReleaser;
class StepPart;
class StepState;

class DecodePass {
 public:
  // `rows`: the pass's new tokens (T); every layer step carries T rows. `device`: the CacheSet
  // index of every sequence of the pass.
  DecodePass(uint64_t id, int num_layers, int device, int64_t rows, CacheSet* caches,
             PartReleaser* releaser);
  ~DecodePass();
  DecodePass(const DecodePass&) = delete;
  DecodePass& operator=(const DecodePass&) = delete;

  uint64_t id() const { return id_; }
  int num_layers() const { return num_layers_; }
  int device() const { return device_; }
  int64_t rows() const { return rows_; }

  // Set by the stream before the begin step is submitted: the step whose part holds the
  // sequences until the pass ends, and the KV blocks reserved against the tenant's quota.
  void SetBegin(std::shared_ptr<StepState> begin, std::optional<LedgerReservation> reservation);

  // The scheduler, at the begin step's first launch: prepares the kvcache batch over every layer
  // (errors as KvCache::PreparePass's; the pass is then aborted with them).
  absl::Status Prepare(absl::Span<const kvcache::BatchEntry> entries);
  // Whether the step of `layer` may launch now: every layer before it computed, or the pass
  // failed (its launch then reports why).
  bool ReadyFor(int layer) const;
  // Brackets the launch of `layer`: the batch to launch with, or FAILED_PRECONDITION naming the
  // pass and why it was aborted. Release tells whether the launch computed the layer.
  absl::StatusOr<const kvcache::LayerBatch*> Acquire(int layer);
  void Release(int layer, bool computed);
  // The batch's metadata where the kernels read it (a device copy with CUDA, set by the launch
  // of layer 0; the host buffer otherwise).
  const void* metadata() const { return metadata_; }
  // With CUDA, copies `batch` (Acquire's, during the layer-0 launch) to a device buffer of the
  // pass on `stream`, once; freed when the pass ends.
  absl::Status UploadMetadata(const kvcache::LayerBatch& batch, bool cuda, int device_id,
                              void* stream);

  // The pass's attention launch: checked by the layer-0 launch, run by every layer's (each
  // launch holds the pass between Acquire and Release, so they never overlap).
  PagedAttentionPlan* attention_plan() { return &attention_plan_; }
  // Layer L-1's step resolved OK: every layer's length advances.
  void Commit();
  // Undoes everything the pass reserved (at once, or when the launch in progress releases).
  // Idempotent; the first reason is kept.
  void Abort(const absl::Status& why);

  // Submission side, under the stream's lock: the layer whose step the pass expects next.
  int next_layer = 1;

 private:
  // Ends the pass: commits or aborts the batch, settles the quota, frees the sequences.
  void End(bool commit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint64_t id_;
  const int num_layers_;
  const int device_;
  const int64_t rows_;
  CacheSet* const caches_;
  PartReleaser* const releaser_;
  std::atomic<int> computed_{0};
  std::atomic<bool> failed_{false};
  const void* metadata_ = nullptr;     // written by the layer-0 launch, read by later ones
  PagedAttentionPlan attention_plan_;  // likewise

  Mutex mu_;
  std::optional<kvcache::LayerBatch> batch_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<StepState> begin_ ABSL_GUARDED_BY(mu_);
  std::optional<LedgerReservation> reservation_ ABSL_GUARDED_BY(mu_);
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  bool in_use_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<kvcache::MemoryAllocator> device_allocator_;
  void* device_metadata_ = nullptr;
  size_t device_metadata_bytes_ = 0;
};

// The live passes of one stream, by id. Under the stream's lock.
class StreamPasses {
 public:
  StreamPasses() = default;
  // Aborts every pass still live: the stream ended.
  ~StreamPasses();

  // A step naming `pass_id` at `layer` (> 0): INVALID_ARGUMENT or FAILED_PRECONDITION naming
  // the pass (unknown, aborted, not at this layer); else the pass.
  absl::StatusOr<std::shared_ptr<DecodePass>> ForLayer(uint64_t pass_id, uint32_t layer) const;
  // Whether `pass_id` may begin (no live pass has it): INVALID_ARGUMENT otherwise.
  absl::Status CheckBegin(uint64_t pass_id) const;
  // A step of this stream (or a new pass) naming a sequence that a live pass of the stream holds
  // is refused, FAILED_PRECONDITION naming the field, the sequence and the pass: steps of one
  // stream resolve in order, so it would wait for the pass while the pass's remaining layers
  // waited behind it, and neither could finish. Once the pass's last layer is accepted its
  // sequences may be named again (such a step waits for the commit). Free when no pass is live.
  absl::Status CheckNotHeld(const wire::StepRequestView& view) const;
  // `sequence_ids`: the client's ids of the pass's sequences (held until it leaves the table).
  void Add(std::shared_ptr<DecodePass> pass, absl::Span<const std::string> sequence_ids);
  // The step of `layer` was accepted: the pass expects the next one, or, after its last layer,
  // leaves the table (its id is free again; the last step commits or aborts it).
  void Accepted(DecodePass& pass, uint32_t layer);
  void AbortAll(const absl::Status& why);
  // Empties the table, for the caller to abort the passes outside the stream's lock.
  std::vector<std::shared_ptr<DecodePass>> TakeAll();

 private:
  void Remove(uint64_t pass_id);

  absl::flat_hash_map<uint64_t, std::shared_ptr<DecodePass>> passes_;
  absl::flat_hash_map<std::string, uint64_t> held_;  // client sequence id -> its live pass
};

}  // namespace flashkv::server
