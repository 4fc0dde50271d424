#include "cpu/reference_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace flashkv::cpu {
namespace {

template <class T>
void NaiveAttentionTyped(const FixedAttentionArgs& a, int head_begin, int head_end) {
  const T* q = static_cast<const T*>(a.q);
  const T* k = static_cast<const T*>(a.k);
  const T* v = static_cast<const T*>(a.v);
  T* out = static_cast<T*>(a.out);
  const float scale = ResolveSoftmaxScale(a.options, a.head_dim);
  const int group = a.num_heads_q / a.num_heads_kv;
  const int64_t diagonal = int64_t{a.seqlen_kv} - a.seqlen_q;
  std::vector<float> scores(static_cast<size_t>(a.seqlen_kv));
  std::vector<float> acc(static_cast<size_t>(a.head_dim));
  for (int b = 0; b < a.batch; ++b) {
    for (int h = head_begin; h < head_end; ++h) {
      const int kv_head = h / group;
      for (int i = 0; i < a.seqlen_q; ++i) {
        const T* qi = q + b * a.q_strides.batch + i * a.q_strides.row + h * a.q_strides.head;
        int64_t keys = a.seqlen_kv;
        if (a.options.causal) keys = std::max<int64_t>(0, std::min<int64_t>(keys, i + diagonal + 1));
        float max_score = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < keys; ++j) {
          const T* kj = k + b * a.k_strides.batch + j * a.k_strides.row + kv_head * a.k_strides.head;
          float dot = 0;
          for (int d = 0; d < a.head_dim; ++d) dot += ToFloat(qi[d]) * ToFloat(kj[d]);
          scores[static_cast<size_t>(j)] = dot * scale;
          max_score = std::max(max_score, dot * scale);
        }
        float sum = 0;
        for (int64_t j = 0; j < keys; ++j) {
          scores[static_cast<size_t>(j)] = std::exp(scores[static_cast<size_t>(j)] - max_score);
          sum += scores[static_cast<size_t>(j)];
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < keys; ++j) {
          const T* vj = v + b * a.v_strides.batch + j * a.v_strides.row + kv_head * a.v_strides.head;
          for (int d = 0; d < a.head_dim; ++d) {
            acc[static_cast<size_t>(d)] += scores[static_cast<size_t>(j)] * ToFloat(vj[d]);
          }
        }
        T* oi = out + b * a.out_strides.batch + i * a.out_strides.row + h * a.out_strides.head;
        const float inv = sum > 0 ? 1.0f / sum : 0.0f;
        for (int d = 0; d < a.head_dim; ++d) oi[d] = FromFloat<T>(acc[static_cast<size_t>(d)] * inv);
        if (a.lse != nullptr) {
          a.lse[(int64_t{b} * a.num_heads_q + h) * a.seqlen_q + i] =
              sum > 0 ? max_score + std::log(sum) : -std::numeric_limits<float>::infinity();
        }
      }
    }
  }
}

}  // namespace

void NaiveAttention(const FixedAttentionArgs& args, int head_begin, int head_end) {
  switch (args.dtype) {
    case DType::kFloat32:
      return NaiveAttentionTyped<float>(args, head_begin, head_end);
    case DType::kBFloat16:
      return NaiveAttentionTyped<BFloat16>(args, head_begin, head_end);
    case DType::kFloat16:
      return NaiveAttentionTyped<Float16>(args, head_begin, head_end);
  }
}

}  // namespace flashkv::cpu
