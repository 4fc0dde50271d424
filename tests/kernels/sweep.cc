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
  Layout q, k, v, out;  // v is ignored by paged calls (both pools share strides)
};

struct FixedCase {
  int batch;
  int seqlen_q;
  int seqlen_kv;
  int group;  // Hq / Hkv
  int num_heads_kv;
};

// Lengths that are no multiple of any tile, Sq < Skv and Sq > Skv, decode (Sq = 1), one exact
// tile multiple; GQA groups 1..16. Sizes stay small: the float64 reference runs on the CPU.
const std::vector<FixedCase> kFixedCases = {
    {2, 1, 200, 8, 1},    // decode, GQA 8
    {2, 17, 63, 2, 2},    //
    {1, 65, 17, 4, 1},    // Sq > Skv: under causal the first 48 rows see no key
    {2, 63, 129, 1, 2},   //
    {1, 129, 65, 2, 1},   // Sq > Skv
    {3, 1, 1, 16, 1},     // decode over one key, GQA 16
    {1, 200, 200, 1, 1},  //
    {1, 64, 128, 4, 2},   // tile multiples
};

// A batch of sequences: new queries and keys (for paged calls: the context, new tokens included).
struct PackedCase {
  std::vector<int> q_lengths;
  std::vector<int> kv_lengths;
  int group;
  int num_heads_kv;
};

// Uneven lengths in one batch, zero-length sequences (no queries; queries but no keys), Sq > Skv
// within a sequence, decode batches, lengths that are no multiple of any tile.
const std::vector<PackedCase> kVarlenCases = {
    {{17, 0, 1, 63}, {63, 5, 200, 63}, 2, 2},
    {{1, 1, 1, 1, 1}, {1, 17, 0, 129, 65}, 8, 1},  // decodes, one with no context
    {{65, 3, 0}, {17, 0, 0}, 1, 2},                // Sq > Skv; queries without keys
    {{129, 17}, {129, 200}, 4, 1},
    {{1, 33, 0, 200}, {65, 33, 129, 1}, 16, 1},  // GQA 16
    {{63, 64, 65}, {63, 64, 65}, 2, 1},
    {{200, 0}, {17, 0}, 1, 1},
    {{5, 1, 40, 0}, {5, 257, 40, 0}, 4, 2},
};

// Prefill chunks over longer contexts, decodes, sequences with no queries or no context, contexts
// that end anywhere in a page, one sequence with more queries than context (allowed by the API:
// under causal its first rows see no key).
const std::vector<PackedCase> kPagedCases = {
    {{17, 0, 1, 63}, {80, 5, 200, 63}, 2, 2},
    {{1, 1, 1, 1, 1, 1}, {1, 17, 129, 65, 256, 33}, 8, 1},  // decode batch
    {{65, 3, 0}, {65, 40, 0}, 1, 2},
    {{129, 1}, {129, 200}, 4, 1},
    {{1, 33, 0, 20}, {65, 33, 129, 1}, 16, 1},  // GQA 16; 20 queries over 1 key
    {{63, 64, 65}, {63, 64, 65}, 2, 1},
    {{7, 0, 1}, {0, 0, 19}, 1, 1},  // queries without context
    {{5, 1, 40}, {21, 257, 40}, 4, 2},
};

std::string Describe(const PackedCase& c) {
  std::string s = "q_lens {";
  for (int l : c.q_lengths) s += std::to_string(l) + " ";
  s += "} kv_lens {";
  for (int l : c.kv_lengths) s += std::to_string(l) + " ";
  return s + "}";
}

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
      {Layout::kRowMajor, Layout::kRowMajor, Layout::kRowMajor, Layout::kRowMajor},
      {Layout::kPadded, Layout::kHeadMajor, Layout::kRowMajor, Layout::kPadded},
      {Layout::kHeadMajor, Layout::kPadded, Layout::kHeadMajor, Layout::kRowMajor},
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
  c.kv_layout = layouts.k;
  c.v_layout = layouts.v;
  c.out_layout = layouts.out;
  c.softmax_scale = Pick(kScales, r / 2 + p.variant);
  c.with_lse = r % 7 != 6;  // now and then no LSE: the null-pointer path
  return c;
}

FixedProblem SweepFixedProblem(const SweepParam& param, Rng& rng, std::string* description) {
  const FixedCase& c = Pick(kFixedCases, SweepRotation(param));
  FixedProblem p = FixedProblem::Random(SweepConfig(param, c.group, c.num_heads_kv), c.batch,
                                        c.seqlen_q, c.seqlen_kv, rng);
  *description = "B=" + std::to_string(c.batch) + " Sq=" + std::to_string(c.seqlen_q) +
                 " Skv=" + std::to_string(c.seqlen_kv) + " " + p.config.ToString();
  return p;
}

VarlenProblem SweepVarlenProblem(const SweepParam& param, Rng& rng, std::string* description) {
  const PackedCase& c = Pick(kVarlenCases, SweepRotation(param));
  VarlenProblem p = VarlenProblem::Random(SweepConfig(param, c.group, c.num_heads_kv), c.q_lengths,
                                          c.kv_lengths, rng);
  *description = Describe(c) + " " + p.config.ToString();
  return p;
}

PagedProblem SweepPagedProblem(const SweepParam& param, Rng& rng, std::string* description) {
  const int rotation = SweepRotation(param);
  const PackedCase& c = Pick(kPagedCases, rotation);
  PagedCacheOptions cache;
  cache.page_size = Pick(kSweepPageSizes, rotation + 1);
  cache.shared_prefix_pages = rotation % 3 == 0 ? 2 : 0;
  PagedProblem p = PagedProblem::Random(SweepConfig(param, c.group, c.num_heads_kv), c.q_lengths,
                                        c.kv_lengths, cache, rng);
  *description = "page " + std::to_string(cache.page_size) + " shared_pages " +
                 std::to_string(cache.shared_prefix_pages) + " " + Describe(c) + " " +
                 p.config.ToString();
  return p;
}

}  // namespace flashkv::testbed
