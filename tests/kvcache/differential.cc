#include "differential.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "flashkv/cuda_backend.h"

namespace flashkv::kvcache::kvtest {

CacheConfig StepConfig(Backend backend, DType dtype, int page_size, int head_dim) {
  CacheConfig config =
      TestConfig(kStepLayers, page_size, 256, 256, dtype, kStepKvHeads, head_dim);
  config.backend = backend;
  return config;
}

std::vector<float> RandomQ(DType dtype, int rows, int head_dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(rows) * kStepQHeads * head_dim);
  for (float& x : q) x = RoundTo(dtype, u(rng));
  return q;
}

std::vector<float> RunStep(Harness& h, int layer, const std::vector<Step>& steps,
                           const std::vector<float>& q) {
  const CacheConfig& c = h.config();
  absl::StatusOr<LayerBatch> batch = h.Prepare(layer, steps);
  EXPECT_TRUE(batch.ok()) << batch.status();
  if (!batch.ok()) return {};
  const std::vector<char> k = h.PackedKv(layer, 0, steps), v = h.PackedKv(layer, 1, steps);
  const std::vector<char> qb = ToBytes(c.dtype, q);
  const std::vector<char> poison(qb.size(), static_cast<char>(0xff));  // NaN in every dtype
  BackendBuffer q_buf(c.backend, qb.size()), k_buf(c.backend, k.size()),
      v_buf(c.backend, v.size()), out_buf(c.backend, qb.size());
  FLASHKV_EXPECT_OK(q_buf.Upload(qb.data(), qb.size()));
  FLASHKV_EXPECT_OK(k_buf.Upload(k.data(), k.size()));
  FLASHKV_EXPECT_OK(v_buf.Upload(v.data(), v.size()));
  FLASHKV_EXPECT_OK(out_buf.Upload(poison.data(), poison.size()));
  const int64_t rows = batch->total_q();
  StepTensors t;
  t.q = TensorRef{c.dtype, rows, kStepQHeads, c.head_dim, q_buf.data()};
  t.k = TensorRef{c.dtype, rows, c.num_kv_heads, c.head_dim, k_buf.data()};
  t.v = TensorRef{c.dtype, rows, c.num_kv_heads, c.head_dim, v_buf.data()};
  t.out = out_buf.data();
  FLASHKV_EXPECT_OK(RunLayerStep(h.cache(), *batch, t, h.workspace()));
  h.Commit(*std::move(batch), layer, steps);
  std::vector<char> out(qb.size());
  FLASHKV_EXPECT_OK(out_buf.Download(out.data(), out.size()));
  return ToFloats(c.dtype, out.data(), q.size());
}

std::vector<double> Reference(const Harness& h, const std::string& id, int layer, int n, int len,
                              const std::vector<float>& q) {
  const int dim = h.config().head_dim, kv_heads = h.config().num_kv_heads;
  const std::vector<float> k = h.KvFloats(id, layer, 0, len);
  const std::vector<float> v = h.KvFloats(id, layer, 1, len);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  std::vector<double> out(static_cast<size_t>(n) * kStepQHeads * dim);
  for (int i = 0; i < n; ++i) {
    const int visible = len - n + i + 1;
    for (int hq = 0; hq < kStepQHeads; ++hq) {
      const int hk = hq / (kStepQHeads / kv_heads);
      std::vector<double> s(visible);
      double m = -INFINITY;
      for (int j = 0; j < visible; ++j) {
        double dot = 0;
        for (int d = 0; d < dim; ++d) {
          dot += static_cast<double>(q[(i * kStepQHeads + hq) * dim + d]) *
                 k[(static_cast<size_t>(j) * kv_heads + hk) * dim + d];
        }
        s[j] = dot * scale;
        m = std::max(m, s[j]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - m));
      for (int d = 0; d < dim; ++d) {
        double o = 0;
        for (int j = 0; j < visible; ++j) o += s[j] * v[(static_cast<size_t>(j) * kv_heads + hk) * dim + d];
        out[(i * kStepQHeads + hq) * dim + d] = o / sum;
      }
    }
  }
  return out;
}

double Tolerance(DType dtype) {
  // Outputs are averages of V rows in [-4, 4): absolute bounds a few output ulps wide.
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

void RunDifferential(const CacheConfig& config, bool bit_exact) {
  const int page = config.page_size;
  const int total = std::max(4 * page + 3, 23);  // context after the last full build step
  const int chunk = 5;                             // the final prefill chunk, then one decode
  Harness h(config);
  const std::vector<int64_t> tokens = Harness::Prompt(77, total + 2);

  // Plainly: no token ids, so nothing is shared or cached.
  ASSERT_TRUE(h.Create("plain").ok());
  h.model["plain"].fixed = tokens;
  const int base = total - chunk - 1;
  for (int done = 0; done < base;) {
    const int n = std::min(7, base - done);
    FLASHKV_ASSERT_OK(h.AppendAllLayers("plain", n));
    done += n;
  }

  // Through the machinery: a donor publishes two blocks and goes; "fancy" hits them and is
  // forked mid-block; the parent writes first (copy-on-write); the child (same tokens) is
  // swapped out and back and goes on.
  ASSERT_EQ(*h.Create("donor", tokens), 0);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("donor", 2 * page + page / 2));
  FLASHKV_ASSERT_OK(h.Free("donor"));
  ASSERT_EQ(*h.Create("fancy", tokens), 2 * page);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("fancy", page / 2 + 1, /*with_ids=*/true));
  FLASHKV_ASSERT_OK(h.Fork("fancy", "child"));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("fancy", 1));
  FLASHKV_ASSERT_OK(h.SwapOut("child"));
  const int built = h.model["child"].len[0];
  FLASHKV_ASSERT_OK(h.AppendAllLayers("child", base - built, /*with_ids=*/true));
  const CacheStats stats = h.cache().GetStats();
  EXPECT_EQ(stats.cow_copies, page > 1 ? 1 : 0);
  EXPECT_EQ(stats.swap_ins, 1);
  h.VerifyAll();

  const double tolerance = Tolerance(config.dtype);
  int len = base;
  for (int n : {chunk, 1}) {
    len += n;
    const std::vector<float> q = RandomQ(config.dtype, n, config.head_dim, 1000 + n);
    for (int layer = 0; layer < kStepLayers; ++layer) {
      const std::vector<float> plain = RunStep(h, layer, {Step{"plain", n}}, q);
      const std::vector<float> child = RunStep(h, layer, {Step{"child", n, true}}, q);
      ASSERT_EQ(plain.size(), q.size());
      ASSERT_EQ(child.size(), q.size());
      if (bit_exact) {
        EXPECT_EQ(std::memcmp(plain.data(), child.data(), plain.size() * sizeof(float)), 0)
            << "layer " << layer << " n " << n;
      }
      const std::vector<double> ref = Reference(h, "plain", layer, n, len, q);
      for (size_t i = 0; i < ref.size(); ++i) {
        if (!bit_exact) ASSERT_NEAR(plain[i], child[i], tolerance) << "element " << i;
        ASSERT_NEAR(child[i], ref[i], tolerance) << "element " << i << " layer " << layer;
      }
    }
  }
  // Both in one mixed batch with the same queries: the same rows again.
  const std::vector<float> q1 = RandomQ(config.dtype, 1, config.head_dim, 5);
  std::vector<float> q2 = q1;
  q2.insert(q2.end(), q1.begin(), q1.end());
  for (int layer = 0; layer < kStepLayers; ++layer) {
    const std::vector<float> both = RunStep(h, layer, {Step{"child", 1}, Step{"plain", 1}}, q2);
    ASSERT_EQ(both.size(), q2.size());
    for (size_t i = 0; i < q1.size(); ++i) {
      if (bit_exact) {
        ASSERT_EQ(both[i], both[q1.size() + i]) << "element " << i;
      } else {
        ASSERT_NEAR(both[i], both[q1.size() + i], tolerance) << "element " << i;
      }
    }
  }
}

}  // namespace flashkv::kvcache::kvtest
