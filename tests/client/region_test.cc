// The C++ client's shared-memory data plane against the real server (in-process, CPU backend):
// Step, StepSession and Attention with inputs placed in a SharedRegion and outputs written into
// it, checked against the CPU implementation and against the same request sent as bytes; region
// reuse across steps; bounds errors naming the field; release; tenant ownership.

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "flashkv/client/client.h"
#include "flashkv/client/region.h"
#include "flashkv/cuda_backend.h"
#include "fake_service.h"
#include "gtest/gtest.h"
#include "test_util.h"
#include "testing/test_server.h"
#include "verify.h"

namespace flashkv::testing {
namespace {

constexpr char kTokenA[] = "alpha-token-0123456789abcdef";
constexpr char kTokenB[] = "bravo-token-0123456789abcdef";

class RegionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server::ServerConfig config = SmallModelConfig();
    config.model.dtype = DType::kFloat32;
    config.model.head_dim = CompiledHeadDim(DType::kFloat32);
    if (config.model.head_dim == 0) GTEST_SKIP() << "float32 not in this build";
    // Two tenants, so that ownership can be checked.
    char pattern[] = "/tmp/flashkv-region-test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    config.security.tokens_file = dir_ + "/tokens.txt";
    std::ofstream(config.security.tokens_file)
        << kTokenA << " alpha\n" << kTokenB << " bravo\n";
    absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = ClientFor(server_->target(), kTokenA);
    const server::ModelShape& m = server_->config().model;
    hq_ = m.num_q_heads;
    hkv_ = m.num_kv_heads;
    d_ = m.head_dim;
  }

  void TearDown() override {
    client_.reset();
    server_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Copies `tensor` into a fresh allocation of `region`.
  RegionTensor Put(SharedRegion& region, const HostTensor& tensor) {
    absl::StatusOr<RegionTensor> placed =
        region.Allocate(tensor.dtype(), Shape(tensor.shape().begin(), tensor.shape().end()));
    EXPECT_TRUE(placed.ok()) << placed.status();
    std::memcpy(placed->mutable_data(), tensor.data(), tensor.num_bytes());
    return *placed;
  }

  // An output slot, poisoned so that rows the server did not write cannot pass.
  RegionTensor Poisoned(SharedRegion& region, Shape shape) {
    absl::StatusOr<RegionTensor> out = region.Allocate(DType::kFloat32, std::move(shape));
    EXPECT_TRUE(out.ok()) << out.status();
    std::memset(out->mutable_data(), 0xff, out->num_bytes());  // NaN
    return *out;
  }

  std::string dir_;
  std::unique_ptr<TestServer> server_;
  std::unique_ptr<Client> client_;
  int64_t hq_ = 0, hkv_ = 0, d_ = 0;
  std::mt19937 rng_{5};
};

// Two sequences get the same tokens, one through the region and one as bytes, over every layer
// of a prefill and several decodes; the region is reset and its offsets reused at every step.
TEST_F(RegionTest, StepThroughARegionMatchesBytesAndTheCpu) {
  absl::StatusOr<std::unique_ptr<SharedRegion>> region = client_->AttachHostRegion(1 << 20);
  ASSERT_TRUE(region.ok()) << region.status();
  ASSERT_TRUE((*region)->status().ok());
  EXPECT_EQ((*region)->device(), -1);
  ASSERT_TRUE(client_->CreateSequence("shm").ok());
  ASSERT_TRUE(client_->CreateSequence("bytes").ok());
  const int layers = server_->config().model.num_layers;
  std::vector<std::vector<float>> k(layers), v(layers);  // per layer, the context's K/V
  for (int64_t n : {7, 1, 1, 1}) {
    for (int layer = 0; layer < layers; ++layer) {
      HostTensor q = RandomTensor(DType::kFloat32, {n, hq_, d_}, rng_);
      HostTensor kt = RandomTensor(DType::kFloat32, {n, hkv_, d_}, rng_);
      HostTensor vt = RandomTensor(DType::kFloat32, {n, hkv_, d_}, rng_);
      (*region)->Reset();
      const RegionTensor rq = Put(**region, q), rk = Put(**region, kt), rv = Put(**region, vt);
      const RegionTensor out = Poisoned(**region, {n, hq_, d_});
      StepInput in_region{"shm", rq.view(), rk.view(), rv.view(), {}};
      in_region.out = out.slice();
      const StepInput as_bytes{"bytes", q.view(), kt.view(), vt.view(), {}};
      StepTiming timing;
      absl::StatusOr<std::vector<HostTensor>> got =
          client_->Step(layer, {in_region, as_bytes}, {}, &timing);
      ASSERT_TRUE(got.ok()) << got.status();
      ASSERT_EQ(got->size(), 2u);
      EXPECT_EQ((*got)[0].num_bytes(), 0u) << "the output went to the region";
      EXPECT_GT(timing.kernel, absl::ZeroDuration());
      EXPECT_GE(timing.server, timing.kernel);

      const std::vector<float> kf = kt.ToFloats(), vf = vt.ToFloats();
      k[layer].insert(k[layer].end(), kf.begin(), kf.end());
      v[layer].insert(v[layer].end(), vf.begin(), vf.end());
      const int64_t context = static_cast<int64_t>(k[layer].size()) / (hkv_ * d_);
      HostTensor kc = *HostTensor::FromFloats(DType::kFloat32, {1, context, hkv_, d_}, k[layer]);
      HostTensor vc = *HostTensor::FromFloats(DType::kFloat32, {1, context, hkv_, d_}, v[layer]);
      absl::StatusOr<HostTensor> want =
          tools::CpuAttention(TensorView(DType::kFloat32, {1, n, hq_, d_}, q.data()), kc.view(),
                              vc.view(), true, std::nullopt);
      ASSERT_TRUE(want.ok()) << want.status();
      const TensorView from_region(DType::kFloat32, {1, n, hq_, d_}, out.data());
      const tools::Comparison c =
          tools::Compare(from_region, want->view(), tools::DefaultTolerance(DType::kFloat32));
      EXPECT_TRUE(c.ok()) << "layer " << layer << ": " << c.mismatches << " mismatches";
      EXPECT_EQ(std::memcmp(out.data(), (*got)[1].data(), out.num_bytes()), 0)
          << "layer " << layer << ": region and bytes outputs differ";
    }
  }
}

// A pipelined stream whose requests each use their own slots of one region.
TEST_F(RegionTest, StepSessionSendsRegionDescriptors) {
  absl::StatusOr<std::unique_ptr<SharedRegion>> region = client_->AttachHostRegion(1 << 20);
  ASSERT_TRUE(region.ok()) << region.status();
  ASSERT_TRUE(client_->CreateSequence("s").ok());
  ASSERT_TRUE(client_->CreateSequence("b").ok());
  StepSessionOptions options;
  options.max_in_flight = 3;
  absl::StatusOr<std::unique_ptr<StepSession>> session = client_->OpenStepSession(options);
  ASSERT_TRUE(session.ok()) << session.status();
  std::vector<HostTensor> keep;
  std::vector<RegionTensor> outs;
  for (int layer = 0; layer < 3; ++layer) {
    HostTensor q = RandomTensor(DType::kFloat32, {2, hq_, d_}, rng_);
    HostTensor kt = RandomTensor(DType::kFloat32, {2, hkv_, d_}, rng_);
    HostTensor vt = RandomTensor(DType::kFloat32, {2, hkv_, d_}, rng_);
    StepInput in_region{"s", Put(**region, q).view(), Put(**region, kt).view(),
                        Put(**region, vt).view(), {}};
    outs.push_back(Poisoned(**region, {2, hq_, d_}));
    in_region.out = outs.back().slice();
    // The bytes entry's tensors must outlive the request's response: kept until the end.
    keep.push_back(std::move(q));
    keep.push_back(std::move(kt));
    keep.push_back(std::move(vt));
    const StepInput as_bytes{"b", keep[keep.size() - 3].view(), keep[keep.size() - 2].view(),
                             keep.back().view(), {}};
    absl::StatusOr<uint64_t> id = (*session)->Send(layer, {in_region, as_bytes});
    ASSERT_TRUE(id.ok()) << id.status();
  }
  for (int layer = 0; layer < 3; ++layer) {
    absl::StatusOr<v1::StepResponse> response = (*session)->Receive();
    ASSERT_TRUE(response.ok()) << response.status();
    ASSERT_EQ(response->out_size(), 2);
    EXPECT_TRUE(response->out(0).has_region());
    EXPECT_GT(response->kernel_ns(), 0u);
    const std::string& bytes = response->out(1).data();
    ASSERT_EQ(bytes.size(), outs[layer].num_bytes());
    EXPECT_EQ(std::memcmp(outs[layer].data(), bytes.data(), bytes.size()), 0) << "layer " << layer;
  }
  EXPECT_TRUE((*session)->Finish().ok());
}

TEST_F(RegionTest, AttentionReadsAndWritesTheRegion) {
  absl::StatusOr<std::unique_ptr<SharedRegion>> region = client_->AttachHostRegion(1 << 20);
  ASSERT_TRUE(region.ok()) << region.status();
  for (bool varlen : {false, true}) {
    (*region)->Reset();
    const Shape q_shape = varlen ? Shape{9, hq_, d_} : Shape{1, 9, hq_, d_};
    const Shape kv_shape = varlen ? Shape{12, hkv_, d_} : Shape{1, 12, hkv_, d_};
    HostTensor q = RandomTensor(DType::kFloat32, q_shape, rng_);
    HostTensor k = RandomTensor(DType::kFloat32, kv_shape, rng_);
    HostTensor v = RandomTensor(DType::kFloat32, kv_shape, rng_);
    AttentionInput bytes;
    bytes.q = q.view();
    bytes.k = k.view();
    bytes.v = v.view();
    bytes.causal = true;
    bytes.return_lse = true;
    if (varlen) {
      bytes.cu_seqlens_q = {0, 4, 9};
      bytes.cu_seqlens_kv = {0, 5, 12};
    }
    AttentionInput shm = bytes;
    shm.q = Put(**region, q).view();
    shm.k = Put(**region, k).view();
    shm.v = Put(**region, v).view();
    const RegionTensor out = Poisoned(**region, q_shape);
    const RegionTensor lse = Poisoned(**region, {q.num_elements() / d_});
    shm.out = out.slice();
    shm.lse = lse.slice();
    absl::StatusOr<AttentionResult> want =
        varlen ? client_->AttentionVarlen(bytes) : client_->Attention(bytes);
    ASSERT_TRUE(want.ok()) << want.status();
    absl::StatusOr<AttentionResult> got =
        varlen ? client_->AttentionVarlen(shm) : client_->Attention(shm);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->out.num_bytes(), 0u);
    ASSERT_EQ(want->out.num_bytes(), out.num_bytes());
    EXPECT_EQ(std::memcmp(out.data(), want->out.data(), out.num_bytes()), 0) << varlen;
    ASSERT_TRUE(want->lse.has_value());
    ASSERT_EQ(want->lse->num_bytes(), lse.num_bytes());
    EXPECT_EQ(std::memcmp(lse.data(), want->lse->data(), lse.num_bytes()), 0) << varlen;
  }
}

TEST_F(RegionTest, BoundsErrorsNameTheField) {
  absl::StatusOr<std::unique_ptr<SharedRegion>> region = client_->AttachHostRegion(64 << 10);
  ASSERT_TRUE(region.ok()) << region.status();
  SharedRegion& r = **region;
  // Client side: slices that leave the region are refused before anything is sent.
  absl::StatusOr<RegionTensor> past = r.At(60 << 10, DType::kFloat32, {1025}, "q offset");
  EXPECT_EQ(past.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(past.status().message().find("q offset"), absl::string_view::npos) << past.status();
  EXPECT_EQ(r.Allocate(DType::kFloat32, {1 << 20}).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(r.At(0, DType::kFloat32, {-1}).status().code(), absl::StatusCode::kInvalidArgument);

  // Server side: a hand-made descriptor past the end is INVALID_ARGUMENT naming the tensor.
  ASSERT_TRUE(client_->CreateSequence("seq").ok());
  HostTensor q = RandomTensor(DType::kFloat32, {1, hq_, d_}, rng_);
  HostTensor kv = RandomTensor(DType::kFloat32, {1, hkv_, d_}, rng_);
  const TensorView k_past_end(DType::kFloat32, {1, hkv_, d_}, nullptr,
                              RegionSlice{r.id(), r.size() - 16});
  absl::StatusOr<std::vector<HostTensor>> got =
      client_->Step(0, {StepInput{"seq", q.view(), k_past_end, kv.view(), {}}});
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
  EXPECT_NE(got.status().message().find("entries[0].k"), absl::string_view::npos)
      << got.status();
  StepInput out_past_end{"seq", q.view(), kv.view(), kv.view(), {}};
  out_past_end.out = RegionSlice{r.id(), r.size() - 64};
  got = client_->Step(0, {out_past_end});
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
  EXPECT_NE(got.status().message().find("entries[0].out"), absl::string_view::npos)
      << got.status();
  // Both refusals changed nothing: the sequence still steps from an empty context.
  EXPECT_TRUE(client_->Step(0, {StepInput{"seq", q.view(), kv.view(), kv.view(), {}}}).ok());
}

TEST_F(RegionTest, ReleasedRegionsAreGone) {
  absl::StatusOr<std::unique_ptr<SharedRegion>> region = client_->AttachHostRegion(64 << 10);
  ASSERT_TRUE(region.ok()) << region.status();
  const uint64_t id = (*region)->id();
  absl::StatusOr<RegionTensor> q = (*region)->Allocate(DType::kFloat32, {1, 1, hq_, d_});
  ASSERT_TRUE(q.ok());
  std::memset(q->mutable_data(), 0, q->num_bytes());
  const TensorView stale = q->view();
  EXPECT_TRUE((*region)->Release().ok());
  EXPECT_TRUE((*region)->Release().ok()) << "idempotent";
  EXPECT_EQ((*region)->status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*region)->data(), nullptr);
  // The server no longer knows it: naming it is NOT_FOUND, with the field.
  HostTensor kv = RandomTensor(DType::kFloat32, {1, 1, hkv_, d_}, rng_);
  AttentionInput input;
  input.q = TensorView(DType::kFloat32, {1, 1, hq_, d_}, nullptr, RegionSlice{id, 0});
  input.k = kv.view();
  input.v = kv.view();
  absl::StatusOr<AttentionResult> got = client_->Attention(input);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
  EXPECT_NE(got.status().message().find("q"), absl::string_view::npos) << got.status();
}

// A region belongs to the tenant (bearer token) that attached it: another tenant's requests
// cannot name it, and cannot tell it from a region that does not exist.
TEST_F(RegionTest, RegionsBelongToTheirTenant) {
  absl::StatusOr<std::unique_ptr<SharedRegion>> region = client_->AttachHostRegion(64 << 10);
  ASSERT_TRUE(region.ok()) << region.status();
  std::unique_ptr<Client> other = ClientFor(server_->target(), kTokenB);
  HostTensor q = RandomTensor(DType::kFloat32, {1, 3, hq_, d_}, rng_);
  HostTensor kv = RandomTensor(DType::kFloat32, {1, 3, hkv_, d_}, rng_);
  const RegionTensor out = Poisoned(**region, {1, 3, hq_, d_});
  AttentionInput input;
  input.q = q.view();
  input.k = kv.view();
  input.v = kv.view();
  input.out = out.slice();
  absl::StatusOr<AttentionResult> theirs = other->Attention(input);
  EXPECT_EQ(theirs.status().code(), absl::StatusCode::kNotFound) << theirs.status();
  EXPECT_NE(theirs.status().message().find("out"), absl::string_view::npos) << theirs.status();
  EXPECT_TRUE(client_->Attention(input).ok()) << "the owner can";
  EXPECT_TRUE((*region)->status().ok());
}

TEST_F(RegionTest, DeviceRegionsNeedCuda) {
  if (cuda::DeviceCount() > 0) GTEST_SKIP() << "a GPU is present";
  absl::StatusOr<std::unique_ptr<SharedRegion>> region = client_->AttachDeviceRegion(4096, 0);
  EXPECT_EQ(region.status().code(), absl::StatusCode::kUnavailable) << region.status();
}

}  // namespace
}  // namespace flashkv::testing
