#include "flashkv/server/decode_pass.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/server/cache_set.h"
#include "flashkv/server/status.h"
#include "flashkv/server/step.h"

namespace flashkv::server {

DecodePass::DecodePass(uint64_t id, int num_layers, int device, int64_t rows, CacheSet* caches,
                       PartReleaser* releaser)
    : id_(id),
      num_layers_(num_layers),
      device_(device),
      rows_(rows),
      caches_(caches),
      releaser_(releaser) {}

DecodePass::~DecodePass() {
  MutexLock lock(&mu_);
  if (!ended_) {
    if (failure_.ok()) failure_ = absl::CancelledError("the pass was dropped");
    End(/*commit=*/false);
  }
}

void DecodePass::SetBegin(std::shared_ptr<StepState> begin,
                          std::optional<LedgerReservation> reservation) {
  MutexLock lock(&mu_);
  begin_ = std::move(begin);
  reservation_ = std::move(reservation);
}

absl::Status DecodePass::Prepare(absl::Span<const kvcache::BatchEntry> entries) {
  absl::StatusOr<kvcache::LayerBatch> batch = caches_->cache(device_).PreparePass(entries);
  MutexLock lock(&mu_);
  if (!batch.ok()) return batch.status();
  if (ended_) return failure_;  // (aborted meanwhile: the new batch aborts as it goes)
  batch_.emplace(*std::move(batch));
  metadata_ = batch_->data();
  return absl::OkStatus();
}

absl::Status DecodePass::UploadMetadata(const kvcache::LayerBatch& batch, bool cuda, int device_id,
                                        void* stream) {
  if (!cuda) return absl::OkStatus();
  const size_t bytes = batch.size_bytes();
  if (device_allocator_ == nullptr) device_allocator_ = kvcache::NewDeviceAllocator(device_id);
  absl::StatusOr<void*> buffer = device_allocator_->Allocate(bytes);
  if (!buffer.ok()) return buffer.status();
  device_metadata_ = *buffer;
  device_metadata_bytes_ = bytes;
  metadata_ = device_metadata_;
  // Stream order puts the copy before the layer-0 kernels on the same stream; the host buffer
  // stays untouched until the pass ends.
  return FromKernelStatus(cuda::MemcpyHostToDevice(device_metadata_, batch.data(), bytes,
                                                   static_cast<cuda::Stream>(stream)));
}

bool DecodePass::ReadyFor(int layer) const { return failed_.load() || computed_.load() >= layer; }

absl::StatusOr<const kvcache::LayerBatch*> DecodePass::Acquire(int layer) {
  MutexLock lock(&mu_);
  if (!failure_.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("pass ", id_, " was aborted: ", failure_.message()));
  }
  if (ended_ || !batch_.has_value() || computed_.load() != layer) {
    return absl::FailedPreconditionError(absl::StrCat("pass ", id_, " cannot run layer ", layer,
                                                      ": ", computed_.load(), " layers computed"));
  }
  in_use_ = true;
  return &*batch_;
}

void DecodePass::Release(int layer, bool computed) {
  MutexLock lock(&mu_);
  in_use_ = false;
  if (computed) computed_.store(layer + 1);
  if (!failure_.ok() && !ended_) End(/*commit=*/false);  // an Abort came during the launch
}

void DecodePass::Commit() {
  MutexLock lock(&mu_);
  if (ended_ || !failure_.ok()) return;
  End(/*commit=*/true);
}

void DecodePass::Abort(const absl::Status& why) {
  MutexLock lock(&mu_);
  if (ended_) return;
  if (failure_.ok()) failure_ = why.ok() ? absl::AbortedError("aborted") : why;
  failed_.store(true);
  if (!in_use_) End(/*commit=*/false);
}

void DecodePass::End(bool commit) {
  ended_ = true;
  if (batch_.has_value()) {
    kvcache::KvCache& cache = caches_->cache(device_);
    if (commit) {
      cache.Commit(std::move(*batch_));
    } else {
      cache.Abort(std::move(*batch_));
    }
    batch_.reset();
  }
  if (reservation_.has_value()) {
    caches_->SettleStep(*reservation_, commit);
    reservation_.reset();
  }
  if (device_metadata_ != nullptr) {
    device_allocator_->Deallocate(device_metadata_, device_metadata_bytes_);
    device_metadata_ = nullptr;
  }
  metadata_ = nullptr;
  if (begin_ != nullptr) {
    for (const auto& part : begin_->parts()) releaser_->ReleasePart(*part);
    begin_.reset();
  }
}

StreamPasses::~StreamPasses() { AbortAll(absl::CancelledError("the stream ended")); }

absl::StatusOr<std::shared_ptr<DecodePass>> StreamPasses::ForLayer(uint64_t pass_id,
                                                                   uint32_t layer) const {
  auto it = passes_.find(pass_id);
  if (it == passes_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("batch.pass_id: pass ", pass_id,
                     " is unknown on this stream (a pass begins with a "
                     "layer-0 step naming its sequences, and ends after its last layer)"));
  }
  const DecodePass& pass = *it->second;
  if (static_cast<int>(layer) != pass.next_layer) {
    return absl::FailedPreconditionError(absl::StrCat("layer: pass ", pass_id, " expects layer ",
                                                      pass.next_layer, ", the step has layer ",
                                                      layer));
  }
  return it->second;
}

absl::Status StreamPasses::CheckBegin(uint64_t pass_id) const {
  if (passes_.contains(pass_id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch.pass_id: pass ", pass_id,
                     " is live on this stream; a new pass needs an id no "
                     "live pass of the stream has"));
  }
  return absl::OkStatus();
}

absl::Status StreamPasses::CheckNotHeld(const wire::StepRequestView& view) const {
  if (held_.empty()) return absl::OkStatus();
  auto refuse = [&](const std::string& field, const std::string& id) -> absl::Status {
    auto it = held_.find(id);
    if (it == held_.end()) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        field, ": sequence '", id, "' is in pass ", it->second,
        " of this stream, whose last layer has not been sent; steps of one stream resolve in "
        "order, so a step naming it would wait for the pass while the pass waited behind it "
        "(send the pass's remaining layers first)"));
  };
  for (size_t i = 0; i < view.entries.size(); ++i) {
    if (auto s = refuse(absl::StrCat("entries[", i, "].sequence_id"), view.entries[i].sequence_id);
        !s.ok()) {
      return s;
    }
  }
  for (size_t i = 0; i < view.batch.sequence_ids.size(); ++i) {
    if (auto s = refuse(absl::StrCat("batch.sequence_ids[", i, "]"), view.batch.sequence_ids[i]);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

void StreamPasses::Add(std::shared_ptr<DecodePass> pass,
                       absl::Span<const std::string> sequence_ids) {
  const uint64_t id = pass->id();
  for (const std::string& sequence : sequence_ids) held_[sequence] = id;
  passes_[id] = std::move(pass);
}

void StreamPasses::Remove(uint64_t pass_id) {
  passes_.erase(pass_id);
  for (auto it = held_.begin(); it != held_.end();) {
    if (it->second == pass_id) {
      held_.erase(it++);
    } else {
      ++it;
    }
  }
}

void StreamPasses::Accepted(DecodePass& pass, uint32_t layer) {
  pass.next_layer = static_cast<int>(layer) + 1;
  if (pass.next_layer >= pass.num_layers()) Remove(pass.id());
}

std::vector<std::shared_ptr<DecodePass>> StreamPasses::TakeAll() {
  std::vector<std::shared_ptr<DecodePass>> all;
  all.reserve(passes_.size());
  for (auto& [id, pass] : passes_) all.push_back(std::move(pass));
  passes_.clear();
  held_.clear();
  return all;
}

void StreamPasses::AbortAll(const absl::Status& why) {
  for (auto& [id, pass] : passes_) pass->Abort(why);
  passes_.clear();
  held_.clear();
}

}  // namespace flashkv::server
