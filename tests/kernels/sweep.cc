#include "kernels/sweep.h"

#include <iterator>

namespace flashkv::testbed {
namespace {

int IndexOf(DType dtype) {
  for (int i = 0; i < static_cast<int>(std::size(kAllDTypes)); ++i) {
    if (kAllDTypes[i] == dtype) return i;
  }
  return 0;
}

int IndexOf(int head_dim) {
  for (int i = 0; i < static_cast<int>(std::size(kSupportedHeadDims)); ++i) {
    if (kSupportedHeadDims[i] == head_dim) return i;
  }
  return 0;
}

struct LayoutSet {
  Layout q, kv, out;
};

}  // namespace

std::vector<SweepParam> SweepParams(Backend backend) {
  std::vector<SweepParam> params;
  for (DType dtype : kAllDTypes) {
    for (int head_dim : kSupportedHeadDims) {
      for (bool causal : {false, true}) {
        for (int variant = 0; variant < kSweepVariants; ++variant) {
          params.push_back(SweepParam{backend, dtype, head_dim, causal, variant});
        }
      }
    }
  }
  return params;
}

std::string SweepParamName(const ::testing::TestParamInfo<SweepParam>& info) {
  const SweepParam& p = info.param;
  return std::string(DTypeName(p.dtype)) + "_d" + std::to_string(p.head_dim) +
         (p.causal ? "_causal" : "_full") + "_v" + std::to_string(p.variant);
}

void PrintTo(const SweepParam& p, std::ostream* os) {
  *os << BackendName(p.backend) << " " << DTypeName(p.dtype) << " d" << p.head_dim
      << (p.causal ? " causal" : " full") << " variant " << p.variant;
}

int SweepRotation(const SweepParam& p) {
  return IndexOf(p.head_dim) + IndexOf(p.dtype) + 3 * p.variant;
}

AttentionConfig SweepConfig(const SweepParam& p, int group, int num_heads_kv) {
  static const std::vector<LayoutSet> kLayouts = {
      {Layout::kRowMajor, Layout::kRowMajor, Layout::kRowMajor},
      {Layout::kPadded, Layout::kHeadMajor, Layout::kPadded},
      {Layout::kHeadMajor, Layout::kPadded, Layout::kRowMajor},
  };
  static const std::vector<std::optional<float>> kScales = {std::nullopt, 0.3f, 1.0f};
  const int r = SweepRotation(p);
  AttentionConfig c;
  c.dtype = p.dtype;
  c.head_dim = p.head_dim;
  c.causal = p.causal;
  c.num_heads_kv = num_heads_kv;
  c.num_heads_q = group * num_heads_kv;
  const LayoutSet& layouts = Pick(kLayouts, r);
  c.q_layout = layouts.q;
  c.kv_layout = layouts.kv;
  c.out_layout = layouts.out;
  c.softmax_scale = Pick(kScales, r / 2 + p.variant);
  c.with_lse = r % 7 != 6;  // now and then no LSE: the null-pointer path
  return c;
}

}  // namespace flashkv::testbed
