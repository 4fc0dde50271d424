#pragma once

// Checks a decoded StepRequest against the served model and the limits, and routes its entries
// to the devices that hold their sequences. Every error names the field as the client wrote it.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "flashkv/server/auth.h"
#include "flashkv/server/cache_set.h"
#include "flashkv/server/config.h"
#include "flashkv/server/region_tensors.h"
#include "flashkv/server/step.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {

// The longest sequence id accepted, in bytes.
inline constexpr size_t kMaxSequenceIdBytes = 256;

// INVALID_ARGUMENT for a bad id (empty, too long, not UTF-8); `field` names it in the message.
absl::Status CheckSequenceId(const std::string& id, const std::string& field);

// INVALID_ARGUMENT (layer, entries, tensors, token_ids, repeated sequences, the request limits:
// entries, tokens per entry and per step) or NOT_FOUND (a sequence no device holds in the
// tenant's namespace). On success, the entries with their devices and scoped sequence ids
// (auth.h), in request order.
// Tensors in shared-memory regions are resolved first (their bytes become slices of `*message`,
// see region_tensors.h), and StepEntry.out slices are resolved and bounds-checked; an output
// may not overlap any input or other output of the step (it is written while later chunks of
// the step are still to be read).
absl::StatusOr<std::vector<StepEntry>> CheckStepRequest(wire::StepRequestView& request,
                                                        const ServerConfig& config,
                                                        const CacheSet& caches,
                                                        const RegionAccess& regions,
                                                        const Tenant& tenant,
                                                        wire::MessageBytes* message);

// INVALID_ARGUMENT naming batch.pass_id: a unary Step may not name a decode pass.
absl::Status RefusePassOutsideStream(uint64_t pass_id);

// Decodes a Step message into `*request` within the request limits (below).
absl::Status DecodeStepRequestWithinLimits(const ServerConfig& config,
                                           const wire::MessageBytes& message,
                                           wire::StepRequestView* request);

// What the service does first with a received Step message: decodes it into `*request` within
// the request limits (the decoder stops before it allocates past them: a request of empty
// entries would otherwise cost a few hundred bytes per two bytes on the wire), then
// CheckStepRequest. A request naming a decode pass (batch.pass_id) is refused: passes live on a
// stream (the service routes them before this; a unary Step gets this refusal). The fuzz target
// tests/fuzz/step_request_fuzz.cc drives exactly this.
absl::StatusOr<std::vector<StepEntry>> DecodeAndCheckStepRequest(const ServerConfig& config,
                                                                 const CacheSet& caches,
                                                                 const RegionAccess& regions,
                                                                 const Tenant& tenant,
                                                                 wire::MessageBytes* message,
                                                                 wire::StepRequestView* request);

}  // namespace flashkv::server
