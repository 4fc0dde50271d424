#pragma once

// Checks a decoded StepRequest against the served model and the limits, and routes its entries
// to the devices that hold their sequences. Every error names the field as the client wrote it.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "flashkv/server/cache_set.h"
#include "flashkv/server/config.h"
#include "flashkv/server/step.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {

// The longest sequence id accepted, in bytes.
inline constexpr size_t kMaxSequenceIdBytes = 256;

// INVALID_ARGUMENT for a bad id (empty, too long, not UTF-8); `field` names it in the message.
absl::Status CheckSequenceId(const std::string& id, const std::string& field);

// INVALID_ARGUMENT (layer, entries, tensors, token_ids, repeated sequences) or NOT_FOUND (a
// sequence no device holds). On success, the entries with their devices, in request order.
absl::StatusOr<std::vector<StepEntry>> CheckStepRequest(const wire::StepRequestView& request,
                                                        const ServerConfig& config,
                                                        const CacheSet& caches);

}  // namespace flashkv::server
