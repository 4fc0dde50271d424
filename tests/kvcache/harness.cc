#include "harness.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/kvcache/status.h"

namespace flashkv::kvcache::kvtest {
namespace {

uint64_t Mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

uint64_t StringSeed(const std::string& s) {
  uint64_t h = 0x51ed270b27f6a3c1ull;
  for (char c : s) h = Mix(h ^ static_cast<unsigned char>(c));
  return h;
}

void StoreAs(DType dtype, float value, char* dst) {
  switch (dtype) {
    case DType::kFloat32:
      std::memcpy(dst, &value, 4);
      return;
    case DType::kFloat16: {
      const Float16 h = ToFloat16(value);
      std::memcpy(dst, &h, 2);
      return;
    }
    case DType::kBFloat16: {
      const BFloat16 h = ToBFloat16(value);
      std::memcpy(dst, &h, 2);
      return;
    }
  }
}

}  // namespace

float RoundTo(DType dtype, float value) {
  switch (dtype) {
    case DType::kFloat32:
      return value;
    case DType::kFloat16:
      return ToFloat(ToFloat16(value));
    case DType::kBFloat16:
      return ToFloat(ToBFloat16(value));
  }
  return value;
}

std::vector<char> ToBytes(DType dtype, const std::vector<float>& values) {
  const int es = DTypeSize(dtype);
  std::vector<char> out(values.size() * es);
  for (size_t i = 0; i < values.size(); ++i) StoreAs(dtype, values[i], out.data() + i * es);
  return out;
}

std::vector<float> ToFloats(DType dtype, const void* data, size_t count) {
  std::vector<float> out(count);
  const char* bytes = static_cast<const char*>(data);
  for (size_t i = 0; i < count; ++i) {
    switch (dtype) {
      case DType::kFloat32:
        std::memcpy(&out[i], bytes + 4 * i, 4);
        break;
      case DType::kFloat16: {
        Float16 h;
        std::memcpy(&h, bytes + 2 * i, 2);
        out[i] = ToFloat(h);
        break;
      }
      case DType::kBFloat16: {
        BFloat16 h;
        std::memcpy(&h, bytes + 2 * i, 2);
        out[i] = ToFloat(h);
        break;
      }
    }
  }
  return out;
}

BackendBuffer::BackendBuffer(Backend backend, size_t bytes) : backend_(backend), bytes_(bytes) {
  if (backend_ == Backend::kCpu) {
    data_ = ::operator new(bytes == 0 ? 1 : bytes);
  } else {
    const KernelStatus s = cuda::Malloc(&data_, bytes == 0 ? 1 : bytes);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
}

BackendBuffer::~BackendBuffer() {
  if (backend_ == Backend::kCpu) {
    ::operator delete(data_);
  } else if (data_ != nullptr) {
    (void)cuda::Free(data_);
  }
}

absl::Status BackendBuffer::Upload(const void* src, size_t bytes) {
  if (backend_ == Backend::kCpu) {
    std::memcpy(data_, src, bytes);
    return absl::OkStatus();
  }
  KernelStatus s = cuda::MemcpyHostToDevice(data_, src, bytes, nullptr);
  if (s.ok()) s = cuda::StreamSynchronize(nullptr);
  return ToAbslStatus(s);
}

absl::Status BackendBuffer::Download(void* dst, size_t bytes) const {
  return ReadBackend(backend_, data_, dst, bytes);
}

absl::Status ReadBackend(Backend backend, const void* src, void* dst, size_t bytes) {
  if (backend == Backend::kCpu) {
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  KernelStatus s = cuda::MemcpyDeviceToHost(dst, src, bytes, nullptr);
  if (s.ok()) s = cuda::StreamSynchronize(nullptr);
  return ToAbslStatus(s);
}

CacheConfig TestConfig(int num_layers, int page_size, int64_t blocks, int64_t swap_blocks,
                       DType dtype, int num_kv_heads, int head_dim) {
  CacheConfig c;
  c.num_layers = num_layers;
  c.num_kv_heads = num_kv_heads;
  c.head_dim = head_dim;
  c.dtype = dtype;
  c.page_size = page_size;
  c.budget = PoolBudget::Blocks(blocks);
  c.swap_budget_bytes = swap_blocks * BlockBytes(c);
  return c;
}

float KvValue(uint64_t prefix_hash, int layer, int kv, int head, int dim) {
  const uint64_t h = Mix(prefix_hash ^ Mix((static_cast<uint64_t>(layer) << 40) ^
                                           (static_cast<uint64_t>(kv) << 32) ^
                                           (static_cast<uint64_t>(head) << 16) ^ dim));
  return static_cast<float>(h >> 44) / 131072.0f - 4.0f;  // [-4, 4)
}

Harness::Harness(CacheConfig config) : config_(std::move(config)) {
  config_.clock = [this] { return now_; };
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(config_);
  EXPECT_TRUE(cache.ok()) << cache.status();
  if (cache.ok()) cache_ = *std::move(cache);
  if (cache_ != nullptr && config_.backend == Backend::kCuda) {
    absl::StatusOr<std::unique_ptr<StepWorkspace>> workspace = StepWorkspace::Create(*cache_);
    EXPECT_TRUE(workspace.ok()) << workspace.status();
    if (workspace.ok()) workspace_ = *std::move(workspace);
  }
}

Harness::~Harness() {
  if (cache_ == nullptr) return;
  while (!model.empty()) FLASHKV_EXPECT_OK(Free(model.begin()->first));
  const CacheStats s = cache_->GetStats();
  EXPECT_EQ(s.blocks_used, 0);
  EXPECT_EQ(s.blocks_free + s.blocks_cached, s.blocks_total) << "the pool is not whole";
  EXPECT_EQ(s.swap_slots_used, 0);
  EXPECT_EQ(s.sequences, 0);
  Check();
}

std::vector<int64_t> Harness::Prompt(uint64_t seed, int length) {
  std::vector<int64_t> tokens(length);
  for (int i = 0; i < length; ++i) tokens[i] = static_cast<int64_t>(Mix(seed * 1000003 + i) % 50000);
  return tokens;
}

int64_t Harness::TokenAt(const ModelSeq& seq, int64_t pos) const {
  if (pos < static_cast<int64_t>(seq.fixed.size())) return seq.fixed[pos];
  return static_cast<int64_t>(Mix(seq.uid * 0x9e3779b97f4a7c15ull + pos) % 50000);
}

std::vector<int64_t> Harness::Tokens(const std::string& id, int64_t begin, int64_t n) const {
  const ModelSeq& seq = model.at(id);
  std::vector<int64_t> tokens(n);
  for (int64_t i = 0; i < n; ++i) tokens[i] = TokenAt(seq, begin + i);
  return tokens;
}

std::vector<uint64_t> Harness::PrefixHashes(const ModelSeq& seq, int64_t count) const {
  std::vector<uint64_t> hashes(count);
  uint64_t h = StringSeed(seq.tenant);
  for (int64_t p = 0; p < count; ++p) {
    h = Mix(h ^ static_cast<uint64_t>(TokenAt(seq, p)));
    hashes[p] = h;
  }
  return hashes;
}

absl::StatusOr<int> Harness::Create(const std::string& id, std::vector<int64_t> prompt,
                                    const std::string& tenant) {
  SequenceOptions options;
  options.prompt_token_ids = prompt;
  options.tenant = tenant;
  absl::StatusOr<int> cached = cache_->CreateSequence(id, options);
  if (cached.ok()) {
    ModelSeq seq;
    seq.uid = next_uid_++;
    seq.tenant = tenant;
    seq.fixed = std::move(prompt);
    seq.len.assign(config_.num_layers, *cached);
    model[id] = std::move(seq);
  }
  Check();
  if (cached.ok()) Verify(id);
  return cached;
}

absl::Status Harness::Fork(const std::string& parent, const std::string& child) {
  absl::Status s = cache_->ForkSequence(parent, child);
  if (s.ok()) {
    const ModelSeq& p = model.at(parent);
    ModelSeq c;
    c.uid = next_uid_++;
    c.tenant = p.tenant;
    c.fixed = Tokens(parent, 0, std::max<int64_t>(p.len[0], p.fixed.size()));
    c.len = p.len;
    model[child] = std::move(c);
  }
  Check();
  return s;
}

absl::Status Harness::Free(const std::string& id) {
  absl::Status s = cache_->FreeSequence(id);
  if (s.ok()) model.erase(id);
  Check();
  return s;
}

absl::Status Harness::SwapOut(const std::string& id) {
  absl::Status s = cache_->SwapOut(id);
  Check();
  return s;
}

std::vector<std::string> Harness::Expire(absl::Duration ttl) {
  std::vector<std::string> expired = cache_->ExpireIdle(now_, ttl);
  for (const std::string& id : expired) model.erase(id);
  Check();
  return expired;
}

absl::StatusOr<LayerBatch> Harness::Prepare(int layer, const std::vector<Step>& steps) {
  return PrepareWith(layer, steps, [&](absl::Span<const BatchEntry> entries) {
    return cache_->PrepareLayerBatch(layer, entries);
  });
}

absl::StatusOr<LayerBatch> Harness::PreparePass(const std::vector<Step>& steps) {
  return PrepareWith(0, steps, [&](absl::Span<const BatchEntry> entries) {
    return cache_->PreparePass(entries);
  });
}

absl::StatusOr<LayerBatch> Harness::PrepareWith(
    int layer, const std::vector<Step>& steps,
    const std::function<absl::StatusOr<LayerBatch>(absl::Span<const BatchEntry>)>& prepare) {
  std::vector<std::vector<int64_t>> ids(steps.size());
  std::vector<BatchEntry> entries(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    entries[i].sequence_id = steps[i].id;
    entries[i].num_tokens = steps[i].n;
    auto it = model.find(steps[i].id);
    if (steps[i].with_ids && it != model.end() && layer >= 0 && layer < config_.num_layers) {
      ids[i] = Tokens(steps[i].id, it->second.len[layer], steps[i].n);
      entries[i].token_ids = ids[i];
    }
  }
  absl::StatusOr<LayerBatch> batch = prepare(entries);
  if (batch.ok()) {
    std::vector<uint64_t>& uids = pending_uids_[batch->data()];
    uids.clear();
    for (const Step& step : steps) uids.push_back(model.at(step.id).uid);
  }
  Check();
  return batch;
}

std::vector<char> Harness::PackedKv(int layer, int kv, const std::vector<Step>& steps) const {
  const int heads = config_.num_kv_heads, dim = config_.head_dim;
  const int es = DTypeSize(config_.dtype);
  std::vector<char> out;
  for (const Step& step : steps) {
    const ModelSeq& seq = model.at(step.id);
    const int begin = seq.len[layer];
    const std::vector<uint64_t> hashes = PrefixHashes(seq, begin + step.n);
    for (int p = begin; p < begin + step.n; ++p) {
      for (int h = 0; h < heads; ++h) {
        for (int d = 0; d < dim; ++d) {
          out.resize(out.size() + es);
          StoreAs(config_.dtype, KvValue(hashes[p], layer, kv, h, d), out.data() + out.size() - es);
        }
      }
    }
  }
  return out;
}

std::vector<float> Harness::KvFloats(const std::string& id, int layer, int kv,
                                    int64_t count) const {
  const ModelSeq& seq = model.at(id);
  const int heads = config_.num_kv_heads, dim = config_.head_dim;
  const std::vector<uint64_t> hashes = PrefixHashes(seq, count);
  std::vector<float> out;
  out.reserve(count * heads * dim);
  for (int64_t p = 0; p < count; ++p) {
    for (int h = 0; h < heads; ++h) {
      for (int d = 0; d < dim; ++d) {
        out.push_back(RoundTo(config_.dtype, KvValue(hashes[p], layer, kv, h, d)));
      }
    }
  }
  return out;
}

absl::Status Harness::Write(const LayerBatch& batch, int layer, const std::vector<Step>& steps) {
  const std::vector<char> k = PackedKv(layer, 0, steps);
  const std::vector<char> v = PackedKv(layer, 1, steps);
  BackendBuffer k_buf(config_.backend, k.size()), v_buf(config_.backend, v.size());
  absl::Status s = k_buf.Upload(k.data(), k.size());
  if (s.ok()) s = v_buf.Upload(v.data(), v.size());
  StepTensors t;
  t.k = TensorRef{config_.dtype, batch.total_q(), config_.num_kv_heads, config_.head_dim, k_buf.data()};
  t.v = TensorRef{config_.dtype, batch.total_q(), config_.num_kv_heads, config_.head_dim, v_buf.data()};
  t.layer = layer;
  if (s.ok()) s = RunLayerStep(*cache_, batch, t, workspace_.get());
  Check();
  return s;
}

void Harness::Commit(LayerBatch&& batch, int layer, const std::vector<Step>& steps) {
  auto pending = pending_uids_.find(batch.data());
  ASSERT_NE(pending, pending_uids_.end());
  const std::vector<uint64_t> uids = std::move(pending->second);
  pending_uids_.erase(pending);
  const int first = batch.num_layers() > 1 ? batch.layer() : layer;
  const int end = batch.num_layers() > 1 ? batch.layer() + batch.num_layers() : layer + 1;
  cache_->Commit(std::move(batch));
  for (size_t i = 0; i < steps.size(); ++i) {
    auto it = model.find(steps[i].id);
    if (it == model.end() || it->second.uid != uids[i]) continue;
    for (int l = first; l < end; ++l) it->second.len[l] += steps[i].n;
  }
  Check();
}

void Harness::Abort(LayerBatch&& batch) {
  pending_uids_.erase(batch.data());
  cache_->Abort(std::move(batch));
  Check();
}

absl::Status Harness::Append(int layer, const std::vector<Step>& steps) {
  absl::StatusOr<LayerBatch> batch = Prepare(layer, steps);
  if (!batch.ok()) return batch.status();
  if (absl::Status s = Write(*batch, layer, steps); !s.ok()) {
    Abort(*std::move(batch));
    return s;
  }
  Commit(*std::move(batch), layer, steps);
  return absl::OkStatus();
}

absl::Status Harness::AppendAllLayers(const std::string& id, int n, bool with_ids) {
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    if (absl::Status s = Append(layer, {Step{id, n, with_ids}}); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void Harness::Check() {
  ASSERT_NE(cache_, nullptr);
  const absl::Status s = cache_->CheckConsistency();
  ASSERT_TRUE(s.ok()) << s;
  const CacheStats stats = cache_->GetStats();
  ASSERT_EQ(stats.blocks_free + stats.blocks_cached + stats.blocks_used, stats.blocks_total);
  ASSERT_EQ(stats.sequences, static_cast<int64_t>(model.size()));
  for (const auto& [id, seq] : model) {
    absl::StatusOr<SequenceInfo> info = cache_->GetSequence(id);
    ASSERT_TRUE(info.ok()) << info.status();
    ASSERT_EQ(info->layer_lengths, seq.len) << "sequence " << id;
    ASSERT_EQ(info->tenant, seq.tenant);
  }
}

void Harness::Verify(const std::string& id) {
  absl::StatusOr<SequenceInfo> info = cache_->GetSequence(id);
  ASSERT_TRUE(info.ok()) << info.status();
  if (info->swapped) return;
  const ModelSeq& seq = model.at(id);
  const int heads = config_.num_kv_heads, dim = config_.head_dim, page = config_.page_size;
  const int es = DTypeSize(config_.dtype);
  const std::vector<uint64_t> hashes = PrefixHashes(seq, seq.len[0]);
  const size_t block_bytes = static_cast<size_t>(BlockBytesPerLayer(config_));
  std::vector<char> block(block_bytes), expected(es);
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    const LayerPools pools = cache_->layer_pools(layer);
    for (int kv = 0; kv < 2; ++kv) {
      const char* pool = static_cast<const char*>(kv == 0 ? pools.k : pools.v);
      for (int p = 0; p < seq.len[layer]; ++p) {
        const int64_t b = info->blocks.at(p / page);
        if (p % page == 0) {
          FLASHKV_ASSERT_OK(ReadBackend(config_.backend, pool + b * pools.strides.batch * es,
                                        block.data(), block_bytes));
        }
        for (int h = 0; h < heads; ++h) {
          const char* row = block.data() + ((p % page) * pools.strides.row + h * pools.strides.head) * es;
          for (int d = 0; d < dim; ++d) {
            StoreAs(config_.dtype, KvValue(hashes[p], layer, kv, h, d), expected.data());
            ASSERT_EQ(std::memcmp(row + d * es, expected.data(), es), 0)
                << "sequence " << id << " layer " << layer << (kv ? " V" : " K") << " position "
                << p << " head " << h << " dim " << d << " (block " << b << ")";
          }
        }
      }
    }
  }
}

void Harness::VerifyAll() {
  for (const auto& [id, seq] : model) Verify(id);
}

}  // namespace flashkv::kvcache::kvtest
