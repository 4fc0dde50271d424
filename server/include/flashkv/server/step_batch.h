#pragma once

// Checks a batched Step (StepRequest.batch, flashkv.v1.StepBatch) and expands it into the same
// routed entries as an ordinary request, so that scheduling, the KV cache and the launches treat
// both alike. What the batch saves is per-entry work on the request path: its tensors are decoded,
// resolved, shape-checked and overlap-checked once for the whole batch, and the response carries
// one output descriptor (StepState::set_batch_output).

#include <vector>

#include "absl/status/statusor.h"
#include "flashkv/server/auth.h"
#include "flashkv/server/cache_set.h"
#include "flashkv/server/config.h"
#include "flashkv/server/region_tensors.h"
#include "flashkv/server/step.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {

// INVALID_ARGUMENT naming the field and the limit (ids, num_tokens, token_ids, tensor shapes
// [T,H,D] with T = sum(num_tokens), dtype, the request limits, an output overlapping an input),
// NOT_FOUND (a sequence or region the tenant does not have), FAILED_PRECONDITION (a CUDA region
// on another device than the batch's sequences). On success, one entry per sequence id, in
// order, whose tensors are row ranges of the batch's.
absl::StatusOr<std::vector<StepEntry>> CheckStepBatch(
    wire::StepBatchView& batch, const ServerConfig& config, const CacheSet& caches,
    const RegionAccess& regions, const Tenant& tenant, wire::MessageBytes* message);

// A decode pass's step after layer 0 (batch.pass_id set, docs/api.md#decode-passes): sequence_ids,
// num_tokens and token_ids must be empty (INVALID_ARGUMENT naming the field), q/k/v [rows,H,D]
// and out are checked as a batch's, their CUDA regions on `device` (the pass's). On success one
// entry holding all `rows` rows of every tensor, naming no sequence.
absl::StatusOr<StepEntry> CheckPassLayerBatch(wire::StepBatchView& batch, int64_t rows,
                                              int device, const ServerConfig& config,
                                              const CacheSet& caches, const RegionAccess& regions,
                                              wire::MessageBytes* message);

}  // namespace flashkv::server
