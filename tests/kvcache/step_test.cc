// Whole layer steps (append + paged attention through RunLayerStep) on the CPU backend.
// Differential: a sequence built through a prefix hit, a fork (copy-on-write) and a swap round
// trip gives bit-for-bit the same attention as one built plainly from the same K/V, and both
// match a float64 reference. Also: tensors that do not fit the batch are refused by name.

#include <cmath>
#include <cstring>
#include <random>

#include "absl/strings/match.h"
#include "harness.h"

namespace flashkv::kvcache {
namespace {

using kvtest::Harness;
using kvtest::Step;
using kvtest::TestConfig;
using kvtest::ToBytes;
using kvtest::ToFloats;

constexpr int kLayers = 2;
constexpr int kKvHeads = 2;
constexpr int kQHeads = 4;
constexpr int kDim = 64;

struct StepCase {
  DType dtype;
  int page_size;
};

void PrintTo(const StepCase& c, std::ostream* os) {
  *os << DTypeName(c.dtype) << ", page " << c.page_size;
}

std::vector<float> RandomQ(DType dtype, int rows, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(rows) * kQHeads * kDim);
  for (float& x : q) x = kvtest::RoundTo(dtype, u(rng));
  return q;
}

// One committed step; returns each entry's output rows, packed, as floats.
std::vector<float> RunStep(Harness& h, int layer, const std::vector<Step>& steps,
                           const std::vector<float>& q) {
  const DType dtype = h.config().dtype;
  absl::StatusOr<LayerBatch> batch = h.Prepare(layer, steps);
  EXPECT_TRUE(batch.ok()) << batch.status();
  if (!batch.ok()) return {};
  const std::vector<char> k = h.PackedKv(layer, 0, steps), v = h.PackedKv(layer, 1, steps);
  const std::vector<char> qb = ToBytes(dtype, q);
  std::vector<char> out(qb.size(), static_cast<char>(0xff));  // NaN in every dtype
  const int64_t rows = batch->total_q();
  StepTensors t;
  t.q = TensorRef{dtype, rows, kQHeads, kDim, qb.data()};
  t.k = TensorRef{dtype, rows, kKvHeads, kDim, k.data()};
  t.v = TensorRef{dtype, rows, kKvHeads, kDim, v.data()};
  t.out = out.data();
  const absl::Status s = RunLayerStep(h.cache(), *batch, t, nullptr);
  EXPECT_TRUE(s.ok()) << s;
  h.Commit(*std::move(batch), layer, steps);
  return ToFloats(dtype, out.data(), q.size());
}

// float64 attention of the last n positions of `id` (length len after the step) at `layer`.
std::vector<double> Reference(const Harness& h, const std::string& id, int layer, int n, int len,
                              const std::vector<float>& q) {
  const std::vector<float> k = h.KvFloats(id, layer, 0, len);
  const std::vector<float> v = h.KvFloats(id, layer, 1, len);
  const double scale = 1.0 / std::sqrt(static_cast<double>(kDim));
  std::vector<double> out(static_cast<size_t>(n) * kQHeads * kDim);
  for (int i = 0; i < n; ++i) {
    const int visible = len - n + i + 1;  // causal, bottom-right aligned
    for (int hq = 0; hq < kQHeads; ++hq) {
      const int hk = hq / (kQHeads / kKvHeads);
      std::vector<double> s(visible);
      double m = -INFINITY;
      for (int j = 0; j < visible; ++j) {
        double dot = 0;
        for (int d = 0; d < kDim; ++d) {
          dot += static_cast<double>(q[(i * kQHeads + hq) * kDim + d]) * k[(j * kKvHeads + hk) * kDim + d];
        }
        s[j] = dot * scale;
        m = std::max(m, s[j]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - m));
      for (int d = 0; d < kDim; ++d) {
        double o = 0;
        for (int j = 0; j < visible; ++j) o += s[j] * v[(j * kKvHeads + hk) * kDim + d];
        out[(i * kQHeads + hq) * kDim + d] = o / sum;
      }
    }
  }
  return out;
}

double Tolerance(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 1e-4;
    case DType::kFloat16:
      return 1e-2;
    case DType::kBFloat16:
      return 6e-2;
  }
  return 0;
}

class StepTest : public ::testing::TestWithParam<StepCase> {};

TEST_P(StepTest, PrefixHitForkAndSwapGiveTheSameAttentionAsAPlainSequence) {
  const StepCase c = GetParam();
  const int page = c.page_size;
  const int total = std::max(4 * page + 3, 23);  // context after the last step
  const int chunk = 5;                             // the final prefill chunk, then one decode
  CacheConfig config = TestConfig(kLayers, page, 256, 256, c.dtype, kKvHeads, kDim);
  Harness h(config);
  const std::vector<int64_t> tokens = Harness::Prompt(77, total + 1);

  // Plainly: no token ids, so nothing is shared or cached.
  ASSERT_TRUE(h.Create("plain").ok());
  h.model["plain"].fixed = tokens;
  for (int done = 0; done < total - chunk - 1;) {
    const int n = std::min(7, total - chunk - 1 - done);
    FLASHKV_ASSERT_OK(h.AppendAllLayers("plain", n));
    done += n;
  }

  // Through the cache's machinery: a donor publishes two blocks and goes; the sequence hits
  // them, is forked mid-block, the child (same tokens) is swapped out and back, and goes on.
  ASSERT_EQ(*h.Create("donor", tokens), 0);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("donor", 2 * page + page / 2));
  FLASHKV_ASSERT_OK(h.Free("donor"));
  const int cached = *h.Create("fancy", tokens);
  ASSERT_EQ(cached, 2 * page);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("fancy", page / 2 + 1, /*with_ids=*/true));
  FLASHKV_ASSERT_OK(h.Fork("fancy", "child"));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("fancy", 1));  // the parent writes first: copy-on-write
  FLASHKV_ASSERT_OK(h.SwapOut("child"));
  const int built = h.model["child"].len[0];
  FLASHKV_ASSERT_OK(h.AppendAllLayers("child", total - chunk - 1 - built, /*with_ids=*/true));
  EXPECT_GE(h.cache().GetStats().cow_copies, page > 1 ? 1 : 0);
  EXPECT_EQ(h.cache().GetStats().swap_ins, 1);
  h.VerifyAll();

  int len = total - chunk - 1;
  for (int n : {chunk, 1}) {
    len += n;
    const std::vector<float> q = RandomQ(c.dtype, n, 1000 + n);
    for (int layer = 0; layer < kLayers; ++layer) {
      const std::vector<float> plain = RunStep(h, layer, {Step{"plain", n}}, q);
      const std::vector<float> child = RunStep(h, layer, {Step{"child", n, true}}, q);
      ASSERT_EQ(plain.size(), q.size());
      ASSERT_EQ(child.size(), q.size());
      EXPECT_EQ(std::memcmp(plain.data(), child.data(), plain.size() * sizeof(float)), 0)
          << "layer " << layer << " n " << n;
      const std::vector<double> ref = Reference(h, "plain", layer, n, len, q);
      for (size_t i = 0; i < ref.size(); ++i) {
        ASSERT_NEAR(child[i], ref[i], Tolerance(c.dtype)) << "element " << i << " layer " << layer;
      }
    }
  }
  // Both in one mixed batch with the same queries: the same rows again.
  const std::vector<float> q1 = RandomQ(c.dtype, 1, 5);
  std::vector<float> q2 = q1;
  q2.insert(q2.end(), q1.begin(), q1.end());
  for (int layer = 0; layer < kLayers; ++layer) {
    const std::vector<float> both = RunStep(h, layer, {Step{"child", 1}, Step{"plain", 1}}, q2);
    ASSERT_EQ(both.size(), q2.size());
    EXPECT_EQ(std::memcmp(both.data(), both.data() + q1.size(), q1.size() * sizeof(float)), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    DTypesAndPages, StepTest,
    ::testing::Values(StepCase{DType::kFloat32, 1}, StepCase{DType::kFloat32, 5},
                      StepCase{DType::kFloat32, 16}, StepCase{DType::kFloat16, 4},
                      StepCase{DType::kBFloat16, 3}),
    [](const ::testing::TestParamInfo<StepCase>& info) {
      return std::string(DTypeName(info.param.dtype)) + "_page" +
             std::to_string(info.param.page_size);
    });

TEST(StepTensorsTest, TensorsThatDoNotFitTheBatchAreRefusedByName) {
  Harness h(TestConfig(1, 4, 16, 0, DType::kFloat16, kKvHeads, kDim));
  ASSERT_TRUE(h.Create("a").ok());
  absl::StatusOr<LayerBatch> batch = h.Prepare(0, {Step{"a", 3}});
  ASSERT_TRUE(batch.ok());
  std::vector<char> buf(3 * kQHeads * kDim * 4);
  StepTensors good;
  good.q = TensorRef{DType::kFloat16, 3, kQHeads, kDim, buf.data()};
  good.k = TensorRef{DType::kFloat16, 3, kKvHeads, kDim, buf.data()};
  good.v = good.k;
  good.out = buf.data();
  FLASHKV_EXPECT_OK(ValidateStepTensors(h.cache(), *batch, good));
  struct Case {
    const char* text;
    void (*mutate)(StepTensors&);
  };
  const Case cases[] = {
      {"k.dtype (fp32) differs from the cache's (fp16)", [](StepTensors& t) { t.k.dtype = DType::kFloat32; }},
      {"v has 4 rows; the batch has 3 new tokens", [](StepTensors& t) { t.v.rows = 4; }},
      {"k has 1 heads; the cache has 2 KV heads", [](StepTensors& t) { t.k.heads = 1; }},
      {"q.head_dim (128) differs", [](StepTensors& t) { t.q.head_dim = 128; }},
      {"q has 3 heads", [](StepTensors& t) { t.q.heads = 3; }},
      {"q.dtype (bf16)", [](StepTensors& t) { t.q.dtype = DType::kBFloat16; }},
      {"out is null", [](StepTensors& t) { t.out = nullptr; }},
      {"v is null", [](StepTensors& t) { t.v.data = nullptr; }},
  };
  for (const Case& c : cases) {
    StepTensors t = good;
    c.mutate(t);
    const absl::Status s = RunLayerStep(h.cache(), *batch, t, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), c.text)) << s;
  }
  h.Abort(*std::move(batch));
  EXPECT_EQ(h.model["a"].len[0], 0);
}

}  // namespace
}  // namespace flashkv::kvcache
