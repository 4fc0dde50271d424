#pragma once

// The checks a server passes before it reports SERVING: one stateless launch on every device's
// attention backend, and one Step per layer on every device's KV cache through the real
// scheduler, on a sequence of one token whose output must equal its own V row exactly (softmax
// over a single key is 1).

#include "absl/status/status.h"
#include "flashkv/server/attention_backend.h"
#include "flashkv/server/config.h"

namespace flashkv::server {

class CacheSet;
class KvCacheService;

absl::Status WarmUpAttention(AttentionBackend* backend, const ModelShape& model);
// Steps a private sequence (an id no client can create: it is not UTF-8) through every layer of
// device `device`, checks the outputs, and frees it.
absl::Status WarmUpSteps(KvCacheService* service, CacheSet* caches, int device,
                         const ModelShape& model);

}  // namespace flashkv::server
