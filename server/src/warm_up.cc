#include "flashkv/server/warm_up.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "flashkv/base/notification.h"
#include "flashkv/server/cache_set.h"
#include "flashkv/server/kvcache_service.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {
namespace {

// Varied small finite values in every dtype: 16-bit patterns 0x3c00..0x3cff as fp16 (near 1) or
// bf16 (near 0.008), and for fp32 the same patterns as the upper half-word.
std::vector<uint8_t> Pattern(size_t elements, DType dtype, int salt) {
  const size_t size = static_cast<size_t>(DTypeSize(dtype));
  std::vector<uint8_t> bytes(elements * size);
  for (size_t i = 0; i < elements; ++i) {
    const uint16_t bits = static_cast<uint16_t>(0x3c00 + ((i * 7 + salt) & 0xff));
    std::memcpy(&bytes[i * size + size - 2], &bits, 2);
  }
  return bytes;
}

}  // namespace

absl::Status WarmUpAttention(AttentionBackend* backend, const ModelShape& m) {
  if (!backend->IsCompiled(m.dtype, m.head_dim)) {
    return absl::FailedPreconditionError(std::string("the model's dtype ") + DTypeName(m.dtype) +
                                         " with head dim " + std::to_string(m.head_dim) +
                                         " is not compiled into " + backend->name());
  }
  const int s = 4;
  const std::vector<uint8_t> q = Pattern(size_t(s) * m.num_q_heads * m.head_dim, m.dtype, 1);
  const std::vector<uint8_t> k = Pattern(size_t(s) * m.num_kv_heads * m.head_dim, m.dtype, 2);
  const std::vector<uint8_t> v = Pattern(size_t(s) * m.num_kv_heads * m.head_dim, m.dtype, 3);
  std::vector<uint8_t> out(q.size());
  const FixedAttentionArgs args = MakeDenseFixedArgs(
      m.dtype, 1, s, s, m.num_q_heads, m.num_kv_heads, m.head_dim, q.data(), k.data(), v.data(),
      out.data(), nullptr, AttentionOptions{true, std::nullopt});
  if (absl::Status status = backend->RunFixed(args, OnDevice{}); !status.ok()) {
    return absl::Status(status.code(), "warm-up attention on " + backend->name() + ": " +
                                           std::string(status.message()));
  }
  // Row 0 sees only key 0: its output is V row 0 for every head of the group.
  const size_t row = size_t(m.head_dim) * DTypeSize(m.dtype);
  for (int h = 0; h < m.num_q_heads; ++h) {
    const int kv_head = h / (m.num_q_heads / m.num_kv_heads);
    if (std::memcmp(&out[h * row], &v[kv_head * row], row) != 0) {
      return absl::InternalError("warm-up attention on " + backend->name() +
                                 ": wrong output for head " + std::to_string(h));
    }
  }
  return absl::OkStatus();
}

absl::Status WarmUpSteps(KvCacheService* service, CacheSet* caches, int device,
                         const ModelShape& m) {
  const std::string id = "\xff warm-up";
  kvcache::KvCache& cache = caches->cache(device);
  if (absl::StatusOr<int> created = cache.CreateSequence(id); !created.ok()) {
    return created.status();
  }
  absl::Status result;
  for (int layer = 0; layer < m.num_layers && result.ok(); ++layer) {
    const std::vector<uint8_t> q = Pattern(size_t(m.num_q_heads) * m.head_dim, m.dtype, layer);
    const std::vector<uint8_t> k = Pattern(size_t(m.num_kv_heads) * m.head_dim, m.dtype, layer + 1);
    const std::vector<uint8_t> v = Pattern(size_t(m.num_kv_heads) * m.head_dim, m.dtype, layer + 2);
    const auto owner = std::make_shared<int>(0);
    wire::StepEntryData entry;
    entry.sequence_id = id;
    entry.q = {int32_t(m.dtype), {1, m.num_q_heads, m.head_dim}, q.data(), q.size(), owner, {}};
    entry.k = {int32_t(m.dtype), {1, m.num_kv_heads, m.head_dim}, k.data(), k.size(), owner, {}};
    entry.v = {int32_t(m.dtype), {1, m.num_kv_heads, m.head_dim}, v.data(), v.size(), owner, {}};
    const grpc::ByteBuffer request = wire::EncodeStepRequest(layer, 1, {entry});
    absl::StatusOr<wire::MessageBytes> message = wire::MessageBytes::FromByteBuffer(request);
    if (!message.ok()) return message.status();
    // Built directly rather than through NewStep: the private id fails the clients' id checks.
    StepEntry step_entry;
    step_entry.sequence_id = id;
    step_entry.num_tokens = 1;
    wire::StepRequestView view;
    if (absl::Status s = wire::DecodeStepRequest(*message, &view); !s.ok()) return s;
    step_entry.q = view.entries[0].q.data;
    step_entry.k = view.entries[0].k.data;
    step_entry.v = view.entries[0].v.data;
    step_entry.device = device;
    Notification done;
    absl::Status status;
    grpc::ByteBuffer response;
    auto step =
        service->MakeStep(*std::move(message), static_cast<uint32_t>(layer), 1, {step_entry},
                          service->clock().Now(), [&](const absl::Status& s, grpc::ByteBuffer r) {
                            status = s;
                            response = std::move(r);
                            done.Notify();
                          });
    step->set_urgent();
    service->Submit(step);
    done.WaitForNotification();
    if (!status.ok()) {
      result = absl::Status(status.code(), "warm-up step on layer " + std::to_string(layer) + ": " +
                                               std::string(status.message()));
      break;
    }
    const size_t row = size_t(m.head_dim) * DTypeSize(m.dtype);
    for (int h = 0; h < m.num_q_heads && result.ok(); ++h) {
      const int kv_head = h / (m.num_q_heads / m.num_kv_heads);
      if (std::memcmp(step->OutputRows(step->entries()[0]) + h * row, &v[kv_head * row], row) !=
          0) {
        result = absl::InternalError("warm-up step on layer " + std::to_string(layer) +
                                     ": wrong output for head " + std::to_string(h));
      }
    }
  }
  (void)cache.FreeSequence(id);
  if (!result.ok()) {
    return absl::Status(result.code(), "device " + std::to_string(caches->device_id(device)) +
                                           ": " + std::string(result.message()));
  }
  return absl::OkStatus();
}

}  // namespace flashkv::server
