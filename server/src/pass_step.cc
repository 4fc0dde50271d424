// KvCacheService::NewPassStep: a Step naming a decode pass of its stream (decode_pass.h,
// docs/api.md#decode-passes). At layer 0 it begins the pass: the batch is checked as any batched
// step, its sequences must be on one device, its blocks are reserved against the tenant's quota
// once for the whole pass, and the pass joins the stream's table. At a later layer it is the
// pass's next layer: only the pass id, the layer and the tensors are checked, no sequence.

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "flashkv/server/kvcache_service.h"
#include "flashkv/server/step_batch.h"
#include "flashkv/server/step_request.h"

namespace flashkv::server {

absl::StatusOr<std::shared_ptr<StepState>> KvCacheService::NewPassStep(
    wire::MessageBytes* message, wire::StepRequestView& view, const Tenant& tenant,
    absl::Time received, StepCompletion done, StreamPasses* passes) {
  const uint64_t pass_id = view.batch.pass_id;
  if (passes == nullptr) return RefusePassOutsideStream(pass_id);
  if (!view.entries.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("entries has ", view.entries.size(),
                     " items and batch is set; a StepRequest carries one or the other"));
  }
  const int num_layers = config_.model.num_layers;
  if (view.layer >= static_cast<uint32_t>(num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer (", view.layer, ") must be < the model's layers (", num_layers, ")"));
  }
  const RegionAccess regions{regions_, tenant.name};
  std::shared_ptr<DecodePass> pass;
  std::vector<StepEntry> entries;
  std::optional<LedgerReservation> reservation;
  if (view.layer == 0) {
    if (auto s = passes->CheckBegin(pass_id); !s.ok()) return s;
    if (auto s = passes->CheckNotHeld(view); !s.ok()) return s;
    absl::StatusOr<std::vector<StepEntry>> checked =
        CheckStepRequest(view, config_, *caches_, regions, tenant, message);
    if (!checked.ok()) return checked.status();
    entries = *std::move(checked);
    int64_t rows = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
      if (entries[i].device != entries[0].device) {
        return absl::InvalidArgumentError(absl::StrCat(
            "batch.sequence_ids[", i, "] '", view.batch.sequence_ids[i], "' is on device ",
            caches_->device_id(entries[i].device), " but batch.sequence_ids[0] on device ",
            caches_->device_id(entries[0].device), "; a pass's sequences must share a device"));
      }
      rows += entries[i].num_tokens;
    }
    absl::StatusOr<std::optional<LedgerReservation>> reserved =
        ReserveLayerZero(tenant, 0, entries);
    if (!reserved.ok()) return reserved.status();
    reservation = *std::move(reserved);
    pass = std::make_shared<DecodePass>(pass_id, num_layers, entries[0].device, rows, caches_,
                                        releasers_[entries[0].device]);
  } else {
    absl::StatusOr<std::shared_ptr<DecodePass>> found = passes->ForLayer(pass_id, view.layer);
    if (!found.ok()) return found.status();
    pass = *std::move(found);
    absl::StatusOr<StepEntry> entry = CheckPassLayerBatch(view.batch, pass->rows(), pass->device(),
                                                          config_, *caches_, regions, message);
    if (!entry.ok()) return entry.status();
    entries.push_back(*std::move(entry));
  }
  std::shared_ptr<StepState> step = MakeStep(std::move(*message), view.layer, view.step_id,
                                             std::move(entries), received, std::move(done),
                                             tenant.name);
  step->set_batch_output(view.batch.out);
  step->set_pass(pass);
  if (view.layer == 0) {
    pass->SetBegin(step, std::move(reservation));
    passes->Add(pass, view.batch.sequence_ids);
  }
  passes->Accepted(*pass, view.layer);
  return step;
}

}  // namespace flashkv::server
