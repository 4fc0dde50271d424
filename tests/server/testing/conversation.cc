#include "testing/conversation.h"

#include <cmath>

#include "testing/reference.h"

namespace flashkv::testing {

namespace v1 = flashkv::v1;

v1::StepEntry ReferenceCache::MakeEntry(const std::string& sequence, int n, std::mt19937_64& rng,
                                        std::vector<int64_t> token_ids) const {
  const server::ModelShape& m = model_;
  v1::StepEntry entry;
  entry.set_sequence_id(sequence);
  RandomTensor(m.dtype, {n, m.num_q_heads, m.head_dim}, rng).ToProto(entry.mutable_q());
  RandomTensor(m.dtype, {n, m.num_kv_heads, m.head_dim}, rng).ToProto(entry.mutable_k());
  RandomTensor(m.dtype, {n, m.num_kv_heads, m.head_dim}, rng).ToProto(entry.mutable_v());
  for (int64_t t : token_ids) entry.add_token_ids(t);
  return entry;
}

v1::StepEntry ReferenceCache::EntryForTokens(const std::string& sequence,
                                             const std::vector<int64_t>& token_ids, int layer,
                                             std::mt19937_64& q_rng) const {
  const server::ModelShape& m = model_;
  const int n = static_cast<int>(token_ids.size());
  v1::StepEntry entry;
  entry.set_sequence_id(sequence);
  RandomTensor(m.dtype, {n, m.num_q_heads, m.head_dim}, q_rng).ToProto(entry.mutable_q());
  HostTensor k, v;
  for (int i = 0; i < n; ++i) {
    std::mt19937_64 token_rng(static_cast<uint64_t>(token_ids[i]) * 1000003u + layer);
    HostTensor ki = RandomTensor(m.dtype, {1, m.num_kv_heads, m.head_dim}, token_rng);
    HostTensor vi = RandomTensor(m.dtype, {1, m.num_kv_heads, m.head_dim}, token_rng);
    k.bytes += ki.bytes;
    v.bytes += vi.bytes;
  }
  k.dtype = v.dtype = m.dtype;
  k.shape = v.shape = {n, m.num_kv_heads, m.head_dim};
  k.ToProto(entry.mutable_k());
  v.ToProto(entry.mutable_v());
  for (int64_t t : token_ids) entry.add_token_ids(t);
  return entry;
}

int ReferenceCache::Length(const std::string& sequence, int layer) const {
  const auto s = kv_.find(sequence);
  if (s == kv_.end()) return 0;
  const auto l = s->second.find(layer);
  if (l == s->second.end()) return 0;
  return static_cast<int>(l->second.k.size() / (size_t(model_.num_kv_heads) * model_.head_dim));
}

std::vector<double> ReferenceCache::Expected(int layer, const v1::StepEntry& entry) const {
  const server::ModelShape& m = model_;
  LayerKv kv;
  const auto s = kv_.find(entry.sequence_id());
  if (s != kv_.end() && s->second.count(layer)) kv = s->second.at(layer);
  const std::vector<double> k = FromProto(entry.k()).values, v = FromProto(entry.v()).values;
  kv.k.insert(kv.k.end(), k.begin(), k.end());
  kv.v.insert(kv.v.end(), v.begin(), v.end());
  const HostTensor q = FromProto(entry.q());
  const int sq = static_cast<int>(q.shape[0]);
  const int skv = static_cast<int>(kv.k.size() / (size_t(m.num_kv_heads) * m.head_dim));
  std::vector<double> out(q.values.size());
  ReferenceAttention(q.values.data(), kv.k.data(), kv.v.data(), sq, skv, m.num_q_heads,
                     m.num_kv_heads, m.head_dim, /*causal=*/true, 1.0 / std::sqrt(m.head_dim),
                     out.data(), nullptr);
  return out;
}

void ReferenceCache::Append(int layer, const v1::StepEntry& entry) {
  LayerKv& kv = kv_[entry.sequence_id()][layer];
  const std::vector<double> k = FromProto(entry.k()).values, v = FromProto(entry.v()).values;
  kv.k.insert(kv.k.end(), k.begin(), k.end());
  kv.v.insert(kv.v.end(), v.begin(), v.end());
}

std::string ReferenceCache::Apply(int layer, const v1::StepEntry& entry, const v1::Tensor& out) {
  const std::vector<double> want = Expected(layer, entry);
  Append(layer, entry);
  const HostTensor got = FromProto(out);
  if (got.shape != std::vector<int64_t>(entry.q().shape().begin(), entry.q().shape().end())) {
    return "out shape differs from q's";
  }
  if (got.dtype != model_.dtype) return "out dtype differs from the model's";
  return CompareValues(got.values, want, Tolerance(model_.dtype));
}

v1::StepRequest MakeStep(int layer, std::vector<v1::StepEntry> entries, uint64_t step_id) {
  v1::StepRequest request;
  request.set_layer(layer);
  request.set_step_id(step_id);
  for (auto& e : entries) *request.add_entries() = std::move(e);
  return request;
}

v1::StepBatch MakeBatch(const std::vector<v1::StepEntry>& entries) {
  v1::StepBatch batch;
  int64_t total = 0;
  for (const v1::StepEntry& e : entries) {
    batch.add_sequence_ids(e.sequence_id());
    batch.add_num_tokens(static_cast<uint32_t>(e.q().shape(0)));
    total += e.q().shape(0);
  }
  for (const auto& [tensor, pick] :
       {std::pair{batch.mutable_q(), &v1::StepEntry::q}, std::pair{batch.mutable_k(), &v1::StepEntry::k},
        std::pair{batch.mutable_v(), &v1::StepEntry::v}}) {
    const v1::Tensor& first = (entries.front().*pick)();
    tensor->set_dtype(first.dtype());
    tensor->add_shape(total);
    tensor->add_shape(first.shape(1));
    tensor->add_shape(first.shape(2));
    std::string* data = tensor->mutable_data();
    for (const v1::StepEntry& e : entries) *data += (e.*pick)().data();
  }
  return batch;
}

v1::Tensor OutputRows(const v1::Tensor& out, const uint8_t* data, int64_t row, int64_t n) {
  const size_t row_bytes =
      size_t(out.shape(1)) * size_t(out.shape(2)) * size_t(DTypeSize(DType(out.dtype())));
  if (data == nullptr) data = reinterpret_cast<const uint8_t*>(out.data().data());
  v1::Tensor rows;
  rows.set_dtype(out.dtype());
  rows.add_shape(n);
  rows.add_shape(out.shape(1));
  rows.add_shape(out.shape(2));
  rows.set_data(data + row * row_bytes, n * row_bytes);
  return rows;
}

}  // namespace flashkv::testing
