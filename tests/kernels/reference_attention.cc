#include "kernels/reference_attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>

#include "kernels/host_tensor.h"

namespace flashkv::testbed {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// One sequence's K or V for one KV head, gathered into [seqlen_kv][head_dim] doubles.
std::vector<double> GatherHead(const ElementReader& read, int64_t rows, int head, int dim) {
  std::vector<double> values(static_cast<size_t>(rows * dim));
  for (int64_t j = 0; j < rows; ++j) {
    for (int d = 0; d < dim; ++d) values[j * dim + d] = read(j, head, d);
  }
  return values;
}

// Float64 attention of query row `q` over the first `visible` rows of k and v.
void AttendRowFloat64(const std::vector<double>& q, const std::vector<double>& k,
                      const std::vector<double>& v, int64_t visible, int dim, double scale,
                      double* out, double* lse) {
  std::vector<double> scores(static_cast<size_t>(visible));
  double max_score = kNegInf;
  for (int64_t j = 0; j < visible; ++j) {
    double dot = 0;
    for (int d = 0; d < dim; ++d) dot += q[d] * k[j * dim + d];
    scores[j] = scale * dot;
    max_score = std::max(max_score, scores[j]);
  }
  // Unnormalised probabilities exp(s_j - max), their sum, and the weighted sum of V rows.
  std::vector<double> weights(static_cast<size_t>(visible));
  double sum = 0;
  for (int64_t j = 0; j < visible; ++j) {
    weights[j] = std::exp(scores[j] - max_score);
    sum += weights[j];
  }
  std::vector<double> acc(static_cast<size_t>(dim), 0.0);
  for (int64_t j = 0; j < visible; ++j) {
    for (int d = 0; d < dim; ++d) acc[d] += weights[j] * v[j * dim + d];
  }
  for (int d = 0; d < dim; ++d) out[d] = acc[d] / sum;
  *lse = max_score + std::log(sum);
}

float RoundTo(DType dtype, float x) {
  switch (dtype) {
    case DType::kFloat16:
      return ToFloat(ToFloat16(x));
    case DType::kBFloat16:
      return ToFloat(ToBFloat16(x));
    case DType::kFloat32:
      return x;
  }
  return x;
}

// The same row computed the unfused way in the storage dtype (see kNaiveStorage).
void AttendRowNaive(DType dtype, const std::vector<double>& q, const std::vector<double>& k,
                    const std::vector<double>& v, int64_t visible, int dim, double scale,
                    double* out, double* lse) {
  const float scale_f = static_cast<float>(scale);
  std::vector<float> scores(static_cast<size_t>(visible));
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < visible; ++j) {
    float dot = 0;  // inputs are dtype values, exact in float
    for (int d = 0; d < dim; ++d) {
      dot += static_cast<float>(q[d]) * static_cast<float>(k[j * dim + d]);
    }
    scores[j] = RoundTo(dtype, RoundTo(dtype, dot) * scale_f);
    max_score = std::max(max_score, scores[j]);
  }
  float sum = 0;
  for (int64_t j = 0; j < visible; ++j) sum += std::exp(scores[j] - max_score);
  std::vector<float> probs(static_cast<size_t>(visible));
  for (int64_t j = 0; j < visible; ++j) {
    probs[j] = RoundTo(dtype, std::exp(scores[j] - max_score) / sum);
  }
  std::vector<float> acc(static_cast<size_t>(dim), 0.0f);
  for (int64_t j = 0; j < visible; ++j) {
    for (int d = 0; d < dim; ++d) acc[d] += probs[j] * static_cast<float>(v[j * dim + d]);
  }
  for (int d = 0; d < dim; ++d) out[d] = RoundTo(dtype, acc[d]);
  *lse = static_cast<double>(max_score + std::log(sum));
}

// Query head h of sequence `seq`: every query row, into `result`.
void AttendHead(const ReferenceProblem& p, const SequenceView& seq, int h, Precision precision,
                ReferenceOutput* result) {
  if (seq.seqlen_q == 0) return;  // K and V are not read when no query exists (they may be null)
  const int group = p.num_heads_q / p.num_heads_kv;
  const int kv_head = h / group;
  const int dim = p.head_dim;
  const std::vector<double> k = GatherHead(seq.k, seq.seqlen_kv, kv_head, dim);
  const std::vector<double> v = GatherHead(seq.v, seq.seqlen_kv, kv_head, dim);
  std::vector<double> q(static_cast<size_t>(dim));
  for (int64_t i = 0; i < seq.seqlen_q; ++i) {
    for (int d = 0; d < dim; ++d) q[d] = seq.q(i, h, d);
    const int64_t row = seq.out_row0 + i;
    double* out = &result->out[result->OutIndex(seq.out_outer, row, h, 0)];
    double* lse = &result->lse[result->LseIndex(seq.out_outer, row, h)];
    const int64_t visible = VisibleKeys(i, seq.seqlen_q, seq.seqlen_kv, p.causal);
    if (visible == 0) {
      std::fill(out, out + dim, 0.0);
      *lse = kNegInf;
    } else if (precision == Precision::kFloat64) {
      AttendRowFloat64(q, k, v, visible, dim, p.softmax_scale, out, lse);
    } else {
      AttendRowNaive(p.dtype, q, k, v, visible, dim, p.softmax_scale, out, lse);
    }
  }
}

// Runs fn(task) for task in [0, count) on up to hardware_concurrency threads.
void ParallelFor(int64_t count, const std::function<void(int64_t)>& fn) {
  const int64_t threads =
      std::min<int64_t>(count, std::max(1u, std::thread::hardware_concurrency()));
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t t = next++; t < count; t = next++) fn(t);
  };
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
}

const int32_t* HostIndex(const int32_t* primary, const int32_t* host) {
  return host != nullptr ? host : primary;
}

// Reads a [.., row, head, dim] tensor at (base_row + token), through its strides.
ElementReader StridedReader(DType dtype, const void* data, const Strides& s, int64_t outer,
                            int64_t base_row) {
  return [=](int64_t token, int head, int d) {
    return LoadAsDouble(dtype, data,
                        outer * s.batch + (base_row + token) * s.row + head * s.head + d);
  };
}

ReferenceProblem ProblemOf(DType dtype, int hq, int hkv, int dim, const AttentionOptions& options,
                           int64_t out_outer, int64_t out_rows) {
  ReferenceProblem p;
  p.dtype = dtype;
  p.num_heads_q = hq;
  p.num_heads_kv = hkv;
  p.head_dim = dim;
  p.softmax_scale = ResolveSoftmaxScale(options, dim);
  p.causal = options.causal;
  p.out_outer = out_outer;
  p.out_rows = out_rows;
  return p;
}

}  // namespace

int64_t VisibleKeys(int64_t i, int64_t sq, int64_t skv, bool causal) {
  if (!causal) return skv;
  return std::clamp<int64_t>(i + skv - sq + 1, 0, skv);
}

ReferenceOutput ComputeReference(const ReferenceProblem& p, Precision precision) {
  ReferenceOutput result;
  result.outer = p.out_outer;
  result.rows = p.out_rows;
  result.heads = p.num_heads_q;
  result.dim = p.head_dim;
  result.out.assign(static_cast<size_t>(p.out_outer * p.out_rows * p.num_heads_q * p.head_dim),
                    std::numeric_limits<double>::quiet_NaN());
  result.lse.assign(static_cast<size_t>(p.out_outer * p.out_rows * p.num_heads_q),
                    std::numeric_limits<double>::quiet_NaN());
  const int64_t tasks = static_cast<int64_t>(p.sequences.size()) * p.num_heads_q;
  ParallelFor(tasks, [&](int64_t task) {
    AttendHead(p, p.sequences[task / p.num_heads_q], static_cast<int>(task % p.num_heads_q),
               precision, &result);
  });
  return result;
}

ReferenceOutput ReferenceFixed(const FixedAttentionArgs& a, Precision precision) {
  ReferenceProblem p =
      ProblemOf(a.dtype, a.num_heads_q, a.num_heads_kv, a.head_dim, a.options, a.batch, a.seqlen_q);
  for (int b = 0; b < a.batch; ++b) {
    SequenceView s;
    s.seqlen_q = a.seqlen_q;
    s.seqlen_kv = a.seqlen_kv;
    s.q = StridedReader(a.dtype, a.q, a.q_strides, b, 0);
    s.k = StridedReader(a.dtype, a.k, a.k_strides, b, 0);
    s.v = StridedReader(a.dtype, a.v, a.v_strides, b, 0);
    s.out_outer = b;
    p.sequences.push_back(std::move(s));
  }
  return ComputeReference(p, precision);
}

ReferenceOutput ReferenceVarlen(const VarlenAttentionArgs& a, Precision precision) {
  ReferenceProblem p =
      ProblemOf(a.dtype, a.num_heads_q, a.num_heads_kv, a.head_dim, a.options, 1, a.total_q);
  const int32_t* cu_q = HostIndex(a.cu_seqlens_q, a.host_cu_seqlens_q);
  const int32_t* cu_kv = HostIndex(a.cu_seqlens_kv, a.host_cu_seqlens_kv);
  for (int b = 0; b < a.num_seqs; ++b) {
    SequenceView s;
    s.seqlen_q = cu_q[b + 1] - cu_q[b];
    s.seqlen_kv = cu_kv[b + 1] - cu_kv[b];
    s.q = StridedReader(a.dtype, a.q, a.q_strides, 0, cu_q[b]);
    s.k = StridedReader(a.dtype, a.k, a.k_strides, 0, cu_kv[b]);
    s.v = StridedReader(a.dtype, a.v, a.v_strides, 0, cu_kv[b]);
    s.out_row0 = cu_q[b];
    p.sequences.push_back(std::move(s));
  }
  return ComputeReference(p, precision);
}

ReferenceOutput ReferencePaged(const PagedAttentionArgs& a, Precision precision) {
  ReferenceProblem p =
      ProblemOf(a.dtype, a.num_heads_q, a.num_heads_kv, a.head_dim, a.options, 1, a.total_q);
  const int32_t* cu_q = HostIndex(a.cu_seqlens_q, a.host_cu_seqlens_q);
  const int32_t* cu_kv = HostIndex(a.cu_seqlens_kv, a.host_cu_seqlens_kv);
  const int32_t* table = HostIndex(a.block_table, a.host_block_table);
  for (int b = 0; b < a.num_seqs; ++b) {
    // Token t of sequence b: block table entry t / page_size, slot t % page_size of that block.
    const int32_t* blocks = table + static_cast<int64_t>(b) * a.block_table_stride;
    auto pool_reader = [&a, blocks](const void* pool) -> ElementReader {
      const Strides s = a.cache_strides;
      const DType dtype = a.dtype;
      const int64_t page = a.page_size;
      return [=](int64_t token, int head, int d) {
        const int64_t block = blocks[token / page];
        return LoadAsDouble(dtype, pool,
                            block * s.batch + (token % page) * s.row + head * s.head + d);
      };
    };
    SequenceView s;
    s.seqlen_q = cu_q[b + 1] - cu_q[b];
    s.seqlen_kv = cu_kv[b + 1] - cu_kv[b];
    s.q = StridedReader(a.dtype, a.q, a.q_strides, 0, cu_q[b]);
    s.k = pool_reader(a.k_cache);
    s.v = pool_reader(a.v_cache);
    s.out_row0 = cu_q[b];
    p.sequences.push_back(std::move(s));
  }
  return ComputeReference(p, precision);
}

}  // namespace flashkv::testbed
