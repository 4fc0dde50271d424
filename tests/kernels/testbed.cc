#include "kernels/testbed.h"

#include <algorithm>
#include <numeric>
#include <sstream>

namespace flashkv::testbed {
namespace {

std::vector<float> LseBuffer(const AttentionConfig& config, int64_t rows) {
  return config.with_lse ? PoisonedFloats(static_cast<size_t>(rows * config.num_heads_q))
                         : std::vector<float>();
}

KernelStatus Upload(const HostTensor& tensor, BackendBuffer* buffer) {
  return buffer->Upload(tensor.data(), tensor.bytes());
}

// The output and LSE buffers of a run: poisoned on the host, uploaded, and copied back after.
struct OutputBuffers {
  explicit OutputBuffers(Backend backend) : out(backend), lse(backend) {}

  KernelStatus Prepare(HostTensor* out_tensor, std::vector<float>* lse_values) {
    out_tensor->Poison();
    *lse_values = PoisonedFloats(lse_values->size());
    FLASHKV_RETURN_IF_ERROR(Upload(*out_tensor, &out));
    return UploadVector(*lse_values, &lse);
  }
  KernelStatus Fetch(HostTensor* out_tensor, std::vector<float>* lse_values) const {
    FLASHKV_RETURN_IF_ERROR(out.Download(out_tensor->data(), out_tensor->bytes()));
    return lse.Download(lse_values->data(), lse_values->size() * sizeof(float));
  }
  float* lse_ptr() const { return lse.as<float>(); }

  BackendBuffer out;
  BackendBuffer lse;
};

// One layer of a paged problem on the backend: its q and pools uploaded, its outputs poisoned
// (OutputBuffers); Point aims a launch's per-layer pointers at them.
struct PagedLayerBuffers {
  explicit PagedLayerBuffers(Backend backend)
      : q(backend), k_cache(backend), v_cache(backend), outputs(backend) {}

  KernelStatus Prepare(PagedProblem* layer) {
    FLASHKV_RETURN_IF_ERROR(Upload(layer->q, &q));
    FLASHKV_RETURN_IF_ERROR(Upload(layer->k_cache, &k_cache));
    FLASHKV_RETURN_IF_ERROR(Upload(layer->v_cache, &v_cache));
    return outputs.Prepare(&layer->out, &layer->lse);
  }
  void Point(PagedAttentionArgs* a) const {
    a->q = q.get();
    a->k_cache = k_cache.get();
    a->v_cache = v_cache.get();
    a->out = outputs.out.get();
    a->lse = outputs.lse_ptr();
  }

  BackendBuffer q;
  BackendBuffer k_cache;
  BackendBuffer v_cache;
  OutputBuffers outputs;
};

// A paged problem's metadata (block table, cu_seqlens) on the backend, shared by its layers.
struct PagedMetadataBuffers {
  explicit PagedMetadataBuffers(Backend backend) : table(backend), cu_q(backend), cu_kv(backend) {}

  KernelStatus Upload(const PagedProblem& p) {
    FLASHKV_RETURN_IF_ERROR(UploadVector(p.block_table, &table));
    FLASHKV_RETURN_IF_ERROR(UploadVector(p.cu_seqlens_q, &cu_q));
    return UploadVector(p.cu_seqlens_kv, &cu_kv);
  }
  void Point(PagedAttentionArgs* a) const {
    a->block_table = table.as<int32_t>();
    a->cu_seqlens_q = cu_q.as<int32_t>();
    a->cu_seqlens_kv = cu_kv.as<int32_t>();
  }

  BackendBuffer table;
  BackendBuffer cu_q;
  BackendBuffer cu_kv;
};

bool NeedsHostCopies(Backend backend, HostCopies host_copies) {
  return backend == Backend::kCuda || host_copies == HostCopies::kAlways;
}

::testing::AssertionResult Check(const AttentionConfig& config, const HostTensor& out,
                                 const std::vector<float>& lse, const ReferenceOutput& want,
                                 const ReferenceOutput* naive, const RowLabels& labels) {
  ::testing::AssertionResult result = CheckAttentionOutput(
      out, config.with_lse ? &lse : nullptr, want, naive, ToleranceFor(config), labels);
  if (result) return result;
  return ::testing::AssertionFailure() << config.ToString() << "\n" << result.message();
}

template <typename Problem>
::testing::AssertionResult CheckProblem(const Problem& p, const RowLabels& labels) {
  const ReferenceOutput want = Reference(p, Precision::kFloat64);
  if (p.config.dtype == DType::kFloat32)
    return Check(p.config, p.out, p.lse, want, nullptr, labels);
  const ReferenceOutput naive = Reference(p, Precision::kNaiveStorage);
  return Check(p.config, p.out, p.lse, want, &naive, labels);
}

// The fields varlen and paged args share, over a problem's host tensors and index arrays (the
// primary pointers and the host copies alike).
template <typename Args, typename Problem>
Args PackedArgs(const Problem& p) {
  Args a;
  a.dtype = p.config.dtype;
  a.num_seqs = p.num_seqs();
  a.num_heads_q = p.config.num_heads_q;
  a.num_heads_kv = p.config.num_heads_kv;
  a.head_dim = p.config.head_dim;
  a.total_q = p.cu_seqlens_q.back();
  a.max_seqlen_q = p.max_seqlen_q;
  a.max_seqlen_kv = p.max_seqlen_kv;
  a.q = p.q.data();
  a.q_strides = p.q.strides();
  a.out_strides = p.out.strides();
  a.cu_seqlens_q = a.host_cu_seqlens_q = p.cu_seqlens_q.data();
  a.cu_seqlens_kv = a.host_cu_seqlens_kv = p.cu_seqlens_kv.data();
  a.options = p.config.Options();
  return a;
}

}  // namespace

void CopyRows(const HostTensor& src, int64_t src_outer, int64_t src_row, HostTensor* dst,
              int64_t dst_outer, int64_t dst_row, int64_t rows) {
  const Shape4& s = src.shape();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < s.heads; ++h) {
      for (int64_t d = 0; d < s.dim; ++d) {
        dst->SetBitsAt(dst->Offset(dst_outer, dst_row + r, h, d),
                       src.BitsAt(src.Offset(src_outer, src_row + r, h, d)));
      }
    }
  }
}

Tolerance ToleranceFor(const AttentionConfig& c) {
  return DefaultTolerance(c.dtype, ResolveSoftmaxScale(c.Options(), c.head_dim), c.head_dim);
}

Tolerance CrossBackendToleranceFor(const AttentionConfig& c) {
  return CrossBackendTolerance(c.dtype, ResolveSoftmaxScale(c.Options(), c.head_dim), c.head_dim);
}

std::string AttentionConfig::ToString() const {
  std::ostringstream s;
  s << DTypeName(dtype) << " d" << head_dim << (causal ? " causal" : " full") << " Hq"
    << num_heads_q << "/Hkv" << num_heads_kv << " scale=";
  if (softmax_scale.has_value()) {
    s << *softmax_scale;
  } else {
    s << "default";
  }
  s << " q=" << LayoutName(q_layout) << " k=" << LayoutName(kv_layout)
    << " v=" << LayoutName(VLayout()) << " out=" << LayoutName(out_layout)
    << (with_lse ? " lse" : " no-lse");
  return s.str();
}

std::vector<int32_t> CuSeqlens(const std::vector<int>& lengths) {
  std::vector<int32_t> cu(lengths.size() + 1, 0);
  for (size_t i = 0; i < lengths.size(); ++i) cu[i + 1] = cu[i] + lengths[i];
  return cu;
}

int MaxLength(const std::vector<int>& lengths) {
  return lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end());
}

std::vector<int> RandomLengths(Rng& rng, int count, int min_len, int max_len, double p_zero) {
  std::uniform_int_distribution<int> length(min_len, max_len);
  std::bernoulli_distribution zero(p_zero);
  std::vector<int> lengths(static_cast<size_t>(count));
  for (int& l : lengths) l = zero(rng) ? 0 : length(rng);
  return lengths;
}

std::vector<int32_t> ShuffledBlockTable(Rng& rng, const std::vector<int>& kv_lengths, int page_size,
                                        int stride, int num_blocks, int shared_prefix_pages) {
  std::vector<int32_t> free_blocks(static_cast<size_t>(num_blocks));
  std::iota(free_blocks.begin(), free_blocks.end(), 0);
  std::shuffle(free_blocks.begin(), free_blocks.end(), rng);
  size_t next = 0;
  std::vector<int32_t> table(kv_lengths.size() * static_cast<size_t>(stride), kUnusedBlockId);
  for (size_t b = 0; b < kv_lengths.size(); ++b) {
    const int pages = BlocksNeeded(kv_lengths[b], page_size);
    if (pages > stride) ADD_FAILURE() << "block table stride " << stride << " < " << pages;
    // Only full pages are shared, so both sequences hold the same tokens in every shared slot.
    const int shared =
        b == 0
            ? 0
            : std::min({shared_prefix_pages, kv_lengths[0] / page_size, kv_lengths[b] / page_size});
    for (int i = 0; i < std::min(pages, stride); ++i) {
      int32_t& entry = table[b * stride + i];
      if (i < shared) {
        entry = table[i];
      } else if (next < free_blocks.size()) {
        entry = free_blocks[next++];
      } else {
        ADD_FAILURE() << "pool of " << num_blocks << " blocks is too small";
      }
    }
  }
  return table;
}

void ScatterToPool(const HostTensor& logical, const std::vector<int32_t>& cu_kv,
                   const std::vector<int32_t>& block_table, int stride, HostTensor* pool) {
  const int64_t page_size = pool->shape().rows;
  for (size_t b = 0; b + 1 < cu_kv.size(); ++b) {
    for (int64_t t = 0; t < cu_kv[b + 1] - cu_kv[b]; ++t) {
      const int32_t block = block_table[b * stride + t / page_size];
      CopyRows(logical, 0, cu_kv[b] + t, pool, block, t % page_size, 1);
    }
  }
}

FixedProblem FixedProblem::Random(const AttentionConfig& config, int batch, int seqlen_q,
                                  int seqlen_kv, Rng& rng) {
  FixedProblem p;
  p.config = config;
  p.batch = batch;
  p.seqlen_q = seqlen_q;
  p.seqlen_kv = seqlen_kv;
  const DType t = config.dtype;
  p.q = HostTensor(t, {batch, seqlen_q, config.num_heads_q, config.head_dim}, config.q_layout);
  p.k = HostTensor(t, {batch, seqlen_kv, config.num_heads_kv, config.head_dim}, config.kv_layout);
  p.v = HostTensor(t, {batch, seqlen_kv, config.num_heads_kv, config.head_dim}, config.VLayout());
  p.out = HostTensor(t, {batch, seqlen_q, config.num_heads_q, config.head_dim}, config.out_layout);
  p.q.FillNormal(rng);
  p.k.FillNormal(rng);
  p.v.FillNormal(rng);
  p.lse = LseBuffer(config, static_cast<int64_t>(batch) * seqlen_q);
  return p;
}

FixedAttentionArgs FixedProblem::HostArgs() const {
  FixedAttentionArgs a;
  a.dtype = config.dtype;
  a.batch = batch;
  a.seqlen_q = seqlen_q;
  a.seqlen_kv = seqlen_kv;
  a.num_heads_q = config.num_heads_q;
  a.num_heads_kv = config.num_heads_kv;
  a.head_dim = config.head_dim;
  a.q = q.data();
  a.q_strides = q.strides();
  a.k = k.data();
  a.k_strides = k.strides();
  a.v = v.data();
  a.v_strides = v.strides();
  a.out_strides = out.strides();
  a.options = config.Options();
  return a;
}

VarlenProblem VarlenProblem::Random(const AttentionConfig& config,
                                    const std::vector<int>& q_lengths,
                                    const std::vector<int>& kv_lengths, Rng& rng) {
  VarlenProblem p;
  p.config = config;
  p.cu_seqlens_q = CuSeqlens(q_lengths);
  p.cu_seqlens_kv = CuSeqlens(kv_lengths);
  p.max_seqlen_q = MaxLength(q_lengths);
  p.max_seqlen_kv = MaxLength(kv_lengths);
  const DType t = config.dtype;
  const int64_t total_q = p.cu_seqlens_q.back();
  const int64_t total_kv = p.cu_seqlens_kv.back();
  p.q = HostTensor(t, {1, total_q, config.num_heads_q, config.head_dim}, config.q_layout);
  p.k = HostTensor(t, {1, total_kv, config.num_heads_kv, config.head_dim}, config.kv_layout);
  p.v = HostTensor(t, {1, total_kv, config.num_heads_kv, config.head_dim}, config.VLayout());
  p.out = HostTensor(t, {1, total_q, config.num_heads_q, config.head_dim}, config.out_layout);
  p.q.FillNormal(rng);
  p.k.FillNormal(rng);
  p.v.FillNormal(rng);
  p.lse = LseBuffer(config, total_q);
  return p;
}

VarlenProblem VarlenProblem::FromFixed(const FixedProblem& f) {
  VarlenProblem p;
  p.config = f.config;
  p.cu_seqlens_q = CuSeqlens(std::vector<int>(f.batch, f.seqlen_q));
  p.cu_seqlens_kv = CuSeqlens(std::vector<int>(f.batch, f.seqlen_kv));
  p.max_seqlen_q = f.seqlen_q;
  p.max_seqlen_kv = f.seqlen_kv;
  const AttentionConfig& c = f.config;
  const int64_t total_q = static_cast<int64_t>(f.batch) * f.seqlen_q;
  const int64_t total_kv = static_cast<int64_t>(f.batch) * f.seqlen_kv;
  p.q = HostTensor(c.dtype, {1, total_q, c.num_heads_q, c.head_dim}, c.q_layout);
  p.k = HostTensor(c.dtype, {1, total_kv, c.num_heads_kv, c.head_dim}, c.kv_layout);
  p.v = HostTensor(c.dtype, {1, total_kv, c.num_heads_kv, c.head_dim}, c.VLayout());
  p.out = HostTensor(c.dtype, {1, total_q, c.num_heads_q, c.head_dim}, c.out_layout);
  for (int b = 0; b < f.batch; ++b) {
    CopyRows(f.q, b, 0, &p.q, 0, static_cast<int64_t>(b) * f.seqlen_q, f.seqlen_q);
    CopyRows(f.k, b, 0, &p.k, 0, static_cast<int64_t>(b) * f.seqlen_kv, f.seqlen_kv);
    CopyRows(f.v, b, 0, &p.v, 0, static_cast<int64_t>(b) * f.seqlen_kv, f.seqlen_kv);
  }
  p.lse = LseBuffer(c, total_q);
  return p;
}

VarlenAttentionArgs VarlenProblem::HostArgs() const {
  VarlenAttentionArgs a = PackedArgs<VarlenAttentionArgs>(*this);
  a.total_kv = cu_seqlens_kv.back();
  a.k = k.data();
  a.k_strides = k.strides();
  a.v = v.data();
  a.v_strides = v.strides();
  return a;
}

PagedProblem PagedProblem::Random(const AttentionConfig& config, const std::vector<int>& q_lengths,
                                  const std::vector<int>& kv_lengths,
                                  const PagedCacheOptions& cache, Rng& rng) {
  PagedProblem p;
  p.config = config;
  p.cu_seqlens_q = CuSeqlens(q_lengths);
  p.cu_seqlens_kv = CuSeqlens(kv_lengths);
  p.max_seqlen_q = MaxLength(q_lengths);
  p.max_seqlen_kv = MaxLength(kv_lengths);
  p.page_size = cache.page_size;
  int pages = 0;
  int max_pages = 0;
  for (int len : kv_lengths) {
    pages += BlocksNeeded(len, cache.page_size);
    max_pages = std::max(max_pages, BlocksNeeded(len, cache.page_size));
  }
  p.num_blocks = pages + cache.spare_blocks;
  p.block_table_stride = max_pages + cache.spare_table_columns;
  p.block_table = ShuffledBlockTable(rng, kv_lengths, cache.page_size, p.block_table_stride,
                                     p.num_blocks, cache.shared_prefix_pages);

  const DType t = config.dtype;
  const int64_t total_q = p.cu_seqlens_q.back();
  const int64_t total_kv = p.cu_seqlens_kv.back();
  const Shape4 logical_kv{1, total_kv, config.num_heads_kv, config.head_dim};
  const Shape4 pool{p.num_blocks, cache.page_size, config.num_heads_kv, config.head_dim};
  p.q = HostTensor(t, {1, total_q, config.num_heads_q, config.head_dim}, config.q_layout);
  p.out = HostTensor(t, {1, total_q, config.num_heads_q, config.head_dim}, config.out_layout);
  p.k = HostTensor(t, logical_kv, Layout::kRowMajor);
  p.v = HostTensor(t, logical_kv, Layout::kRowMajor);
  p.q.FillNormal(rng);
  p.k.FillNormal(rng);
  p.v.FillNormal(rng);
  // Tokens on shared pages are the same tokens: give every sharer sequence 0's values there.
  for (size_t b = 1; b < kv_lengths.size(); ++b) {
    int64_t shared = 0;
    while (shared < BlocksNeeded(kv_lengths[b], cache.page_size) &&
           p.block_table[b * p.block_table_stride + shared] == p.block_table[shared]) {
      ++shared;
    }
    const int64_t tokens = std::min<int64_t>(shared * cache.page_size, kv_lengths[b]);
    CopyRows(p.k, 0, 0, &p.k, 0, p.cu_seqlens_kv[b], tokens);
    CopyRows(p.v, 0, 0, &p.v, 0, p.cu_seqlens_kv[b], tokens);
  }
  p.k_cache = HostTensor(t, pool, config.kv_layout);
  p.v_cache = HostTensor(t, pool, config.kv_layout);
  ScatterToPool(p.k, p.cu_seqlens_kv, p.block_table, p.block_table_stride, &p.k_cache);
  ScatterToPool(p.v, p.cu_seqlens_kv, p.block_table, p.block_table_stride, &p.v_cache);
  p.lse = LseBuffer(config, total_q);
  return p;
}

VarlenProblem PagedProblem::AsVarlen() const {
  VarlenProblem p;
  p.config = config;
  p.cu_seqlens_q = cu_seqlens_q;
  p.cu_seqlens_kv = cu_seqlens_kv;
  p.max_seqlen_q = max_seqlen_q;
  p.max_seqlen_kv = max_seqlen_kv;
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = out;
  p.out.Poison();
  p.lse = LseBuffer(config, cu_seqlens_q.back());
  return p;
}

PagedAttentionArgs PagedProblem::HostArgs() const {
  PagedAttentionArgs a = PackedArgs<PagedAttentionArgs>(*this);
  a.k_cache = k_cache.data();
  a.v_cache = v_cache.data();
  a.cache_strides = k_cache.strides();
  a.num_blocks = num_blocks;
  a.page_size = page_size;
  a.block_table = a.host_block_table = block_table.data();
  a.block_table_stride = block_table_stride;
  return a;
}

KernelStatus RunProblem(Backend backend, FixedProblem* p) {
  BackendBuffer q(backend), k(backend), v(backend);
  OutputBuffers outputs(backend);
  FLASHKV_RETURN_IF_ERROR(Upload(p->q, &q));
  FLASHKV_RETURN_IF_ERROR(Upload(p->k, &k));
  FLASHKV_RETURN_IF_ERROR(Upload(p->v, &v));
  FLASHKV_RETURN_IF_ERROR(outputs.Prepare(&p->out, &p->lse));
  FixedAttentionArgs a = p->HostArgs();
  a.q = q.get();
  a.k = k.get();
  a.v = v.get();
  a.out = outputs.out.get();
  a.lse = outputs.lse_ptr();
  FLASHKV_RETURN_IF_ERROR(RunFixed(backend, a));
  return outputs.Fetch(&p->out, &p->lse);
}

KernelStatus RunProblem(Backend backend, VarlenProblem* p, HostCopies host_copies) {
  BackendBuffer q(backend), k(backend), v(backend), cu_q(backend), cu_kv(backend);
  OutputBuffers outputs(backend);
  FLASHKV_RETURN_IF_ERROR(Upload(p->q, &q));
  FLASHKV_RETURN_IF_ERROR(Upload(p->k, &k));
  FLASHKV_RETURN_IF_ERROR(Upload(p->v, &v));
  FLASHKV_RETURN_IF_ERROR(UploadVector(p->cu_seqlens_q, &cu_q));
  FLASHKV_RETURN_IF_ERROR(UploadVector(p->cu_seqlens_kv, &cu_kv));
  FLASHKV_RETURN_IF_ERROR(outputs.Prepare(&p->out, &p->lse));
  VarlenAttentionArgs a = p->HostArgs();
  a.q = q.get();
  a.k = k.get();
  a.v = v.get();
  a.out = outputs.out.get();
  a.lse = outputs.lse_ptr();
  a.cu_seqlens_q = cu_q.as<int32_t>();
  a.cu_seqlens_kv = cu_kv.as<int32_t>();
  if (!NeedsHostCopies(backend, host_copies)) a.host_cu_seqlens_q = a.host_cu_seqlens_kv = nullptr;
  FLASHKV_RETURN_IF_ERROR(RunVarlen(backend, a));
  return outputs.Fetch(&p->out, &p->lse);
}

KernelStatus RunProblem(Backend backend, PagedProblem* p, HostCopies host_copies) {
  PagedMetadataBuffers metadata(backend);
  PagedLayerBuffers layer(backend);
  FLASHKV_RETURN_IF_ERROR(metadata.Upload(*p));
  FLASHKV_RETURN_IF_ERROR(layer.Prepare(p));
  PagedAttentionArgs a = p->HostArgs();
  metadata.Point(&a);
  layer.Point(&a);
  if (!NeedsHostCopies(backend, host_copies)) {
    a.host_block_table = a.host_cu_seqlens_q = a.host_cu_seqlens_kv = nullptr;
  }
  FLASHKV_RETURN_IF_ERROR(RunPaged(backend, a));
  return layer.outputs.Fetch(&p->out, &p->lse);
}

KernelStatus RunPlannedLayers(Backend backend, std::vector<PagedProblem>* layers) {
  PagedMetadataBuffers metadata(backend);
  FLASHKV_RETURN_IF_ERROR(metadata.Upload(layers->front()));
  // Planned with layer 0's host tensors: a plan checks but never reads them, and every run
  // replaces them with its layer's.
  PagedAttentionArgs planned = layers->front().HostArgs();
  planned.out = layers->front().out.data();
  metadata.Point(&planned);
  if (backend == Backend::kCpu) {
    planned.host_block_table = planned.host_cu_seqlens_q = planned.host_cu_seqlens_kv = nullptr;
  }
  PagedAttentionPlan plan;
  FLASHKV_RETURN_IF_ERROR(PlanPaged(backend, planned, &plan));
  for (auto layer = layers->rbegin(); layer != layers->rend(); ++layer) {
    PagedLayerBuffers buffers(backend);
    FLASHKV_RETURN_IF_ERROR(buffers.Prepare(&*layer));
    PagedAttentionArgs layer_args = planned;
    buffers.Point(&layer_args);
    FLASHKV_RETURN_IF_ERROR(RunPlannedPaged(backend, plan, LayerTensorsOf(layer_args)));
    FLASHKV_RETURN_IF_ERROR(buffers.outputs.Fetch(&layer->out, &layer->lse));
  }
  return KernelStatus::Ok();
}

KernelStatus RunAppendKvProblem(Backend backend, const HostTensor& k, const HostTensor& v,
                                const std::vector<int64_t>& slot_mapping, HostTensor* k_cache,
                                HostTensor* v_cache, HostCopies host_copies) {
  BackendBuffer k_buf(backend), v_buf(backend), k_pool(backend), v_pool(backend), slots(backend);
  FLASHKV_RETURN_IF_ERROR(Upload(k, &k_buf));
  FLASHKV_RETURN_IF_ERROR(Upload(v, &v_buf));
  FLASHKV_RETURN_IF_ERROR(Upload(*k_cache, &k_pool));
  FLASHKV_RETURN_IF_ERROR(Upload(*v_cache, &v_pool));
  FLASHKV_RETURN_IF_ERROR(UploadVector(slot_mapping, &slots));
  KvAppendArgs a;
  a.dtype = k.dtype();
  a.num_tokens = static_cast<int64_t>(slot_mapping.size());
  a.num_heads_kv = static_cast<int>(k.shape().heads);
  a.head_dim = static_cast<int>(k.shape().dim);
  a.k = k_buf.get();
  a.k_strides = k.strides();
  a.v = v_buf.get();
  a.v_strides = v.strides();
  a.k_cache = k_pool.get();
  a.v_cache = v_pool.get();
  a.cache_strides = k_cache->strides();
  a.num_blocks = static_cast<int>(k_cache->shape().outer);
  a.page_size = static_cast<int>(k_cache->shape().rows);
  a.slot_mapping = slots.as<int64_t>();
  if (NeedsHostCopies(backend, host_copies)) a.host_slot_mapping = slot_mapping.data();
  FLASHKV_RETURN_IF_ERROR(RunAppendKv(backend, a));
  FLASHKV_RETURN_IF_ERROR(k_pool.Download(k_cache->data(), k_cache->bytes()));
  return v_pool.Download(v_cache->data(), v_cache->bytes());
}

std::vector<int64_t> SlotMapping(const PagedProblem& p) {
  std::vector<int64_t> slots;
  for (int b = 0; b < p.num_seqs(); ++b) {
    for (int64_t t = 0; t < p.cu_seqlens_kv[b + 1] - p.cu_seqlens_kv[b]; ++t) {
      const int64_t block = p.block_table[b * p.block_table_stride + t / p.page_size];
      slots.push_back(block * p.page_size + t % p.page_size);
    }
  }
  return slots;
}

ReferenceOutput Reference(const FixedProblem& p, Precision precision) {
  return ReferenceFixed(p.HostArgs(), precision);
}
ReferenceOutput Reference(const VarlenProblem& p, Precision precision) {
  return ReferenceVarlen(p.HostArgs(), precision);
}
ReferenceOutput Reference(const PagedProblem& p, Precision precision) {
  return ReferencePaged(p.HostArgs(), precision);
}

::testing::AssertionResult CheckAgainstReference(const FixedProblem& p) {
  return CheckProblem(p, RowLabels{});
}
::testing::AssertionResult CheckAgainstReference(const VarlenProblem& p) {
  return CheckProblem(p, RowLabels{&p.cu_seqlens_q});
}
::testing::AssertionResult CheckAgainstReference(const PagedProblem& p) {
  return CheckProblem(p, RowLabels{&p.cu_seqlens_q});
}

}  // namespace flashkv::testbed
