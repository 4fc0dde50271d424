// The load generator's building blocks: length distributions, the latency histogram and the
// synthetic data.

#include <cmath>
#include <random>
#include <set>

#include "config.h"
#include "device_inputs.h"
#include "flashkv/client/tensor.h"
#include "flashkv/cuda_backend.h"
#include "gtest/gtest.h"
#include "histogram.h"
#include "length_distribution.h"
#include "request_source.h"
#include "runner.h"
#include "synthetic_data.h"

namespace flashkv::loadgen {
namespace {

TEST(LengthDistributionTest, FormsAndBounds) {
  std::mt19937_64 rng(1);
  EXPECT_EQ(LengthDistribution::Parse("17")->Sample(rng), 17);
  EXPECT_EQ(LengthDistribution::Parse("fixed:9")->Sample(rng), 9);
  LengthDistribution u = *LengthDistribution::Parse("uniform:3:5");
  std::set<int64_t> seen;
  for (int i = 0; i < 200; ++i) seen.insert(u.Sample(rng));
  EXPECT_EQ(seen, (std::set<int64_t>{3, 4, 5}));
  LengthDistribution chat = *LengthDistribution::Parse("chat-prompt:0.5");
  int64_t long_ones = 0;
  for (int i = 0; i < 2000; ++i) {
    const int64_t n = chat.Sample(rng);
    ASSERT_GE(n, 1);
    ASSERT_LE(n, chat.max());
    long_ones += n > 1000;
  }
  EXPECT_GT(long_ones, 10);  // the tail exists
  EXPECT_LT(long_ones, 400);
  LengthDistribution ln = *LengthDistribution::Parse("lognormal:100:0.5:150");
  for (int i = 0; i < 500; ++i) ASSERT_LE(ln.Sample(rng), 150);
  for (const char* bad : {"0", "uniform:5:3", "uniform:1", "zipf:3", "lognormal:-1:1", "fixed:x"}) {
    EXPECT_FALSE(LengthDistribution::Parse(bad).ok()) << bad;
  }
}

TEST(LatencyHistogramTest, PercentilesWithinBucketPrecision) {
  LatencyHistogram h, other;
  for (int i = 1; i <= 1000; ++i) (i % 2 ? h : other).Record(absl::Microseconds(i));
  h.Merge(other);
  EXPECT_EQ(h.count(), 1000u);
  EXPECT_NEAR(h.PercentileMs(0.5), 0.5, 0.5 * 0.03);
  EXPECT_NEAR(h.PercentileMs(0.99), 0.99, 0.99 * 0.03);
  EXPECT_DOUBLE_EQ(h.MaxMs(), 1.0);
  EXPECT_DOUBLE_EQ(h.MinMs(), 0.001);
  EXPECT_NEAR(h.MeanMs(), 0.5005, 1e-9);
  const auto cdf = h.Cdf();
  ASSERT_FALSE(cdf.empty());
  EXPECT_DOUBLE_EQ(cdf.back().second, 1.0);
  for (size_t i = 1; i < cdf.size(); ++i) EXPECT_GT(cdf[i].first, cdf[i - 1].first);
  EXPECT_EQ(LatencyHistogram().PercentileMs(0.5), 0);
}

TEST(SyntheticDataTest, DeterministicNonZeroAndSpread) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    std::vector<std::byte> a(1001 * 4), b(1001 * 4);
    FillValues(dtype, 42, 1001, a.data());
    FillValues(dtype, 42, 1001, b.data());
    EXPECT_EQ(a, b);
    std::vector<float> f(1001);
    ConvertToFloat(dtype, a.data(), f.data(), 1001);
    double sum = 0;
    for (float x : f) {
      ASSERT_NE(x, 0.0f);
      ASSERT_LE(std::fabs(x), 1.0f);
      sum += x;
    }
    EXPECT_LT(std::fabs(sum / 1001), 0.1);  // centred
    FillValues(dtype, 43, 1001, b.data());
    EXPECT_NE(a, b);
  }
  // A chain hash depends on every earlier token.
  EXPECT_NE(ChainHash(ChainHash(kChainStart, 1), 2), ChainHash(ChainHash(kChainStart, 2), 2));
}

TEST(SyntheticDataTest, ValuesArePinned) {
  // The function is a contract (device_inputs.cu makes the same values on the GPU, and prefixes
  // cached by an earlier run must stay consistent): these were computed independently (Python).
  const float want[] = {0.8829193115234375f,  0.3937530517578125f, 0.7750091552734375f,
                        -0.6801910400390625f, 0.2447052001953125f, -0.8510894775390625f};
  float got[6];
  FillValues(DType::kFloat32, 42, 6, got);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(got[i], want[i]) << i;
}

TEST(DeviceInputsTest, WritesTheHostsValuesAtEachJobsOffsetOnly) {
  const size_t elem = 2;
  absl::StatusOr<std::unique_ptr<DeviceInputs>> inputs = DeviceInputs::Create(DType::kBFloat16, 4);
#ifndef FLASHKV_WITH_CUDA
  EXPECT_EQ(inputs.status().code(), absl::StatusCode::kFailedPrecondition);
  GTEST_SKIP() << "no CUDA in this build: " << inputs.status();
#endif
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  const FillJob jobs[] = {{11, 0, 13}, {12, 64 * elem, 4096}, {13, 5000 * elem, 1}};
  const size_t bytes = 5008 * elem;
  void* device = nullptr;
  ASSERT_TRUE(cuda::Malloc(&device, bytes).ok());
  ASSERT_TRUE(cuda::Memset(device, 0xff, bytes, nullptr).ok());  // poison
  ASSERT_TRUE((*inputs)->Fill(static_cast<std::byte*>(device), jobs).ok());
  std::vector<std::byte> got(bytes), want(bytes, std::byte{0xff});
  ASSERT_TRUE(cuda::MemcpyDeviceToHost(got.data(), device, bytes, nullptr).ok());
  ASSERT_TRUE(cuda::StreamSynchronize(nullptr).ok());
  ASSERT_TRUE(cuda::Free(device).ok());
  for (const FillJob& job : jobs)
    FillValues(DType::kBFloat16, job.seed, job.count, &want[job.offset]);
  EXPECT_EQ(got, want);  // the jobs' values, and the poison everywhere else
  // More jobs than the room it was made for: refused, not overrun.
  const FillJob five[5] = {};
  EXPECT_EQ((*inputs)->Fill(nullptr, five).code(), absl::StatusCode::kInternal);
}

TEST(LoadgenConfigTest, DeviceInputsNeedCudaRegionsAndTheGapIsNotNegative) {
  LoadgenConfig c;
  c.run_id = "t";
  c.inputs = InputSource::kDevice;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);  // bytes plane
  c.data_plane = DataPlane::kShm;
  c.region_memory = RegionMemory::kHost;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.Validate().message().find("--inputs=device"), std::string::npos);
  c.region_memory = RegionMemory::kAuto;
  EXPECT_TRUE(c.Validate().ok());
  c.layer_gap = absl::Microseconds(-1);
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RequestSourceTest, OpenLoopArrivalsArePoissonAtTheRate) {
  LoadgenConfig config;
  config.rate = 40;
  config.run_id = "x";
  const absl::Time start = absl::UnixEpoch();
  RequestSource source(config, 4096, start);
  int64_t arrived = 0;
  absl::Time last = start;
  // Poll over 100 simulated seconds; each request keeps its scheduled arrival time.
  for (absl::Time now = start; now < start + absl::Seconds(100); now += absl::Milliseconds(10)) {
    while (std::optional<Request> r = source.Next(now)) {
      ASSERT_LE(r->arrival, now);
      ASSERT_GE(r->arrival, last);
      last = r->arrival;
      ++arrived;
    }
  }
  EXPECT_NEAR(arrived, 4000, 4 * std::sqrt(4000.0));  // 4 sigma
}

TEST(RequestSourceTest, ClosedLoopBoundsPrefixesAndContext) {
  LoadgenConfig config;
  config.requests = 50;
  config.prefix_pool = 2;
  config.prefix_len = LengthDistribution::Fixed(20);
  config.prefix_fraction = 1.0;
  config.prompt_len = LengthDistribution::Fixed(30);
  config.output_len = LengthDistribution::Fixed(60);
  config.run_id = "x";
  RequestSource source(config, /*max_context=*/64, absl::Now());
  std::set<std::vector<int64_t>> prefixes;
  int n = 0;
  while (std::optional<Request> r = source.Next(absl::Now())) {
    ++n;
    EXPECT_TRUE(r->from_pool);
    EXPECT_EQ(r->prompt.size(), 50u);
    EXPECT_EQ(r->output_len, 14);  // clipped: prompt + output fit max_context
    prefixes.insert(std::vector<int64_t>(r->prompt.begin(), r->prompt.begin() + 20));
  }
  EXPECT_EQ(n, 50);
  EXPECT_EQ(prefixes.size(), 2u);
  EXPECT_TRUE(source.Exhausted());
  EXPECT_EQ(source.NextAvailable(absl::Now()), absl::InfiniteFuture());
}

TEST(ChooseRegionMemoryTest, AutoTakesCudaForOneCudaDeviceOnly) {
  LoadgenConfig config;
  EXPECT_EQ(*ChooseRegionMemory(config, "cuda", 1, true, 1), "");  // bytes: no region
  config.data_plane = DataPlane::kShm;
  EXPECT_EQ(*ChooseRegionMemory(config, "cuda", 1, true, 1), "cuda");
  EXPECT_EQ(*ChooseRegionMemory(config, "cpu", 1, true, 1), "host");
  // Sequences spread over several devices; a region lives on one.
  EXPECT_EQ(*ChooseRegionMemory(config, "cuda", 2, true, 2), "host");
  EXPECT_EQ(*ChooseRegionMemory(config, "cuda", 1, false, 0), "host");  // no CUDA here
  config.region_cuda_device = 1;
  EXPECT_EQ(*ChooseRegionMemory(config, "cuda", 1, true, 1), "host");  // no such device here
}

TEST(ChooseRegionMemoryTest, ForcedChoices) {
  LoadgenConfig config;
  config.data_plane = DataPlane::kShm;
  config.region_memory = RegionMemory::kHost;
  EXPECT_EQ(*ChooseRegionMemory(config, "cuda", 1, true, 1), "host");
  config.region_memory = RegionMemory::kCuda;
  EXPECT_EQ(*ChooseRegionMemory(config, "cpu", 1, true, 1), "cuda");  // the server will refuse
  absl::StatusOr<std::string> none = ChooseRegionMemory(config, "cuda", 1, false, 0);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(none.status().message().find("no CUDA"), absl::string_view::npos) << none.status();
}

}  // namespace
}  // namespace flashkv::loadgen
