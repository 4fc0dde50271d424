// The stateless AttentionService through the generated stub against a real in-process server:
// outputs equal the float64 reference across dtypes, head dims, GQA, causal and uneven lengths,
// and every malformed request gets INVALID_ARGUMENT naming the field.

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "flashkv/base/notification.h"
#include "flashkv/cpu_backend.h"
#include "testing/reference.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

class AttentionRpcTest : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(SmallModelConfig());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  static grpc::Status Call(const v1::AttentionRequest& request, v1::AttentionResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return server_->attention().Attention(&context, request, response);
  }
  static grpc::Status CallVarlen(const v1::AttentionVarlenRequest& request,
                                 v1::AttentionResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return server_->attention().AttentionVarlen(&context, request, response);
  }

  static TestServer* server_;
};
TestServer* AttentionRpcTest::server_ = nullptr;

struct FixedCase {
  int batch, sq, skv, hq, hkv;
};

// Runs one fixed-length request and compares out and lse with the reference, batch by batch.
void CheckFixed(DType dtype, int d, bool causal, const FixedCase& c, std::mt19937_64& rng,
                bool with_scale) {
  SCOPED_TRACE(std::string(DTypeName(dtype)) + " D=" + std::to_string(d) +
               " causal=" + std::to_string(causal) + " B=" + std::to_string(c.batch) +
               " Sq=" + std::to_string(c.sq) + " Skv=" + std::to_string(c.skv) +
               " Hq=" + std::to_string(c.hq) + " Hkv=" + std::to_string(c.hkv));
  const HostTensor q = RandomTensor(dtype, {c.batch, c.sq, c.hq, d}, rng);
  const HostTensor k = RandomTensor(dtype, {c.batch, c.skv, c.hkv, d}, rng);
  const HostTensor v = RandomTensor(dtype, {c.batch, c.skv, c.hkv, d}, rng);
  v1::AttentionRequest request;
  q.ToProto(request.mutable_q());
  k.ToProto(request.mutable_k());
  v.ToProto(request.mutable_v());
  request.set_causal(causal);
  request.set_return_lse(true);
  const double scale = with_scale ? 0.3 : 1.0 / std::sqrt(double(d));
  if (with_scale) request.set_softmax_scale(0.3f);
  v1::AttentionResponse response;
  const grpc::Status status = AttentionRpcTest::Call(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const HostTensor out = FromProto(response.out());
  EXPECT_EQ(out.shape, q.shape);
  EXPECT_EQ(out.dtype, dtype);
  const HostTensor lse = FromProto(response.lse());
  EXPECT_EQ(lse.shape, (std::vector<int64_t>{c.batch, c.hq, c.sq}));
  EXPECT_EQ(lse.dtype, DType::kFloat32);

  const size_t q_per_batch = size_t(c.sq) * c.hq * d, kv_per_batch = size_t(c.skv) * c.hkv * d;
  std::vector<double> want(q.values.size()), want_lse(size_t(c.batch) * c.hq * c.sq);
  for (int b = 0; b < c.batch; ++b) {
    // data() + offset, not &v[offset]: with Sq or Skv 0 the vectors are empty, and indexing one
    // binds a reference to null (UBSan).
    ReferenceAttention(q.values.data() + b * q_per_batch, k.values.data() + b * kv_per_batch,
                       v.values.data() + b * kv_per_batch, c.sq, c.skv, c.hq, c.hkv, d, causal,
                       scale, want.data() + b * q_per_batch,
                       want_lse.data() + size_t(b) * c.hq * c.sq);
  }
  EXPECT_EQ(CompareValues(out.values, want, Tolerance(dtype)), "");
  EXPECT_EQ(CompareValues(lse.values, want_lse, 1e-3), "");
}

TEST_F(AttentionRpcTest, FixedMatchesReference) {
  std::mt19937_64 rng(7);
  const FixedCase cases[] = {
      {2, 5, 9, 4, 2},     // GQA 2, Sq < Skv
      {1, 7, 7, 8, 1},     // MQA
      {3, 1, 17, 2, 2},    // decode-like
      {1, 6, 3, 4, 4},     // Sq > Skv: under causal the first rows see no key
      {1, 33, 40, 16, 1},  // GQA 16
      {2, 0, 4, 2, 1},     // no queries
  };
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    for (int d : {64, 128}) {
      if (!cpu::IsCompiled(dtype, d)) continue;
      for (bool causal : {false, true}) {
        for (const FixedCase& c : cases) CheckFixed(dtype, d, causal, c, rng, c.hq == 8);
      }
    }
  }
}

TEST_F(AttentionRpcTest, VarlenMatchesReferenceWithZeroLengthSequences) {
  std::mt19937_64 rng(8);
  const std::vector<int> q_lens = {3, 0, 5, 1, 6}, kv_lens = {4, 2, 5, 0, 3};
  std::vector<int32_t> cu_q = {0}, cu_kv = {0};
  for (size_t i = 0; i < q_lens.size(); ++i) {
    cu_q.push_back(cu_q.back() + q_lens[i]);
    cu_kv.push_back(cu_kv.back() + kv_lens[i]);
  }
  const int hq = 4, hkv = 2;
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    for (int d : {64, 128}) {
      if (!cpu::IsCompiled(dtype, d)) continue;
      for (bool causal : {false, true}) {
        SCOPED_TRACE(std::string(DTypeName(dtype)) + " D=" + std::to_string(d) +
                     " causal=" + std::to_string(causal));
        const HostTensor q = RandomTensor(dtype, {cu_q.back(), hq, d}, rng);
        const HostTensor k = RandomTensor(dtype, {cu_kv.back(), hkv, d}, rng);
        const HostTensor v = RandomTensor(dtype, {cu_kv.back(), hkv, d}, rng);
        v1::AttentionVarlenRequest request;
        q.ToProto(request.mutable_q());
        k.ToProto(request.mutable_k());
        v.ToProto(request.mutable_v());
        for (int32_t x : cu_q) request.add_cu_seqlens_q(x);
        for (int32_t x : cu_kv) request.add_cu_seqlens_kv(x);
        request.set_causal(causal);
        request.set_return_lse(true);
        v1::AttentionResponse response;
        const grpc::Status status = CallVarlen(request, &response);
        ASSERT_TRUE(status.ok()) << status.error_message();
        const HostTensor out = FromProto(response.out());
        const HostTensor lse = FromProto(response.lse());
        ASSERT_EQ(lse.shape, (std::vector<int64_t>{hq, cu_q.back()}));
        std::vector<double> want(q.values.size()), want_lse(lse.values.size());
        for (size_t s = 0; s < q_lens.size(); ++s) {
          std::vector<double> seq_lse(size_t(hq) * q_lens[s]);
          ReferenceAttention(
              q.values.data() + size_t(cu_q[s]) * hq * d,
              k.values.data() + size_t(cu_kv[s]) * hkv * d,
              v.values.data() + size_t(cu_kv[s]) * hkv * d, q_lens[s], kv_lens[s], hq, hkv, d,
              causal, 1.0 / std::sqrt(double(d)), want.data() + size_t(cu_q[s]) * hq * d,
              seq_lse.data());
          for (int h = 0; h < hq; ++h) {
            for (int i = 0; i < q_lens[s]; ++i) {
              want_lse[size_t(h) * cu_q.back() + cu_q[s] + i] = seq_lse[size_t(h) * q_lens[s] + i];
            }
          }
        }
        EXPECT_EQ(CompareValues(out.values, want, Tolerance(dtype)), "");
        EXPECT_EQ(CompareValues(lse.values, want_lse, 1e-3), "");
      }
    }
  }
}

TEST_F(AttentionRpcTest, LseIsAbsentUnlessAsked) {
  std::mt19937_64 rng(9);
  v1::AttentionRequest request;
  RandomTensor(DType::kFloat32, {1, 2, 2, 64}, rng).ToProto(request.mutable_q());
  RandomTensor(DType::kFloat32, {1, 3, 1, 64}, rng).ToProto(request.mutable_k());
  RandomTensor(DType::kFloat32, {1, 3, 1, 64}, rng).ToProto(request.mutable_v());
  v1::AttentionResponse response;
  ASSERT_TRUE(Call(request, &response).ok());
  EXPECT_TRUE(response.has_out());
  EXPECT_FALSE(response.has_lse());
}

// A valid request, mutated one field at a time.
struct BadCase {
  const char* name;
  std::function<void(v1::AttentionRequest*)> mutate;
  const char* message;
};

TEST_F(AttentionRpcTest, EveryInvalidFieldIsNamed) {
  std::mt19937_64 rng(10);
  v1::AttentionRequest valid;
  RandomTensor(DType::kFloat16, {2, 3, 4, 64}, rng).ToProto(valid.mutable_q());
  RandomTensor(DType::kFloat16, {2, 5, 2, 64}, rng).ToProto(valid.mutable_k());
  RandomTensor(DType::kFloat16, {2, 5, 2, 64}, rng).ToProto(valid.mutable_v());
  const BadCase cases[] = {
      {"q missing", [](auto* r) { r->clear_q(); }, "q is missing"},
      {"v missing", [](auto* r) { r->clear_v(); }, "v is missing"},
      {"dtype unspecified", [](auto* r) { r->mutable_q()->set_dtype(v1::DTYPE_UNSPECIFIED); },
       "q.dtype (DTYPE_UNSPECIFIED) must be DTYPE_FLOAT16, DTYPE_BFLOAT16 or DTYPE_FLOAT32"},
      {"dtype unknown", [](auto* r) { r->mutable_k()->set_dtype(static_cast<v1::DType>(9)); },
       "k.dtype (9) must be"},
      {"dtype mismatch", [](auto* r) { r->mutable_v()->set_dtype(v1::DTYPE_BFLOAT16); },
       "v.dtype (DTYPE_BFLOAT16) must match q.dtype (DTYPE_FLOAT16)"},
      {"rank", [](auto* r) { r->mutable_q()->mutable_shape()->RemoveLast(); },
       "q.shape [2,3,4] must have 4 dimensions [B,Sq,Hq,D]"},
      {"batch", [](auto* r) { r->mutable_k()->set_shape(0, 3); },
       "k.shape[0] (B) = 3 must equal q.shape[0] (2)"},
      {"v length", [](auto* r) { r->mutable_v()->set_shape(1, 4); },
       "v.shape[1] (Skv) = 4 must equal k.shape[1] (5)"},
      {"negative", [](auto* r) { r->mutable_q()->set_shape(1, -1); },
       "q.shape[1] (Sq) = -1 must be in [0, "},
      {"huge", [](auto* r) { r->mutable_q()->set_shape(1, int64_t{1} << 40); },
       "must be in [0, 2147483647]"},
      {"data size", [](auto* r) { r->mutable_q()->mutable_data()->pop_back(); },
       "q.data has 3071 bytes; shape [2,3,4,64] of fp16 needs 3072"},
      {"head dim",
       [](auto* r) {
         for (auto* t : {r->mutable_q(), r->mutable_k(), r->mutable_v()}) {
           t->set_shape(3, 16);
           t->mutable_data()->resize(t->data().size() / 4);
         }
       },
       "q.shape[-1] (D) = 16 must be one of 32, 64, 96, 128, 192, 256"},
      {"gqa",
       [](auto* r) {
         r->mutable_q()->set_shape(2, 3);
         r->mutable_q()->mutable_data()->resize(2 * 3 * 3 * 64 * 2);
       },
       "q heads (Hq = 3) must be a multiple of k/v heads (Hkv = 2)"},
      {"scale nan", [](auto* r) { r->set_softmax_scale(std::nanf("")); }, "softmax_scale"},
      {"scale zero", [](auto* r) { r->set_softmax_scale(0.0f); }, "must be finite and > 0"},
  };
  for (const BadCase& c : cases) {
    v1::AttentionRequest request = valid;
    c.mutate(&request);
    v1::AttentionResponse response;
    const grpc::Status status = Call(request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_NE(status.error_message().find(c.message), std::string::npos)
        << c.name << ": " << status.error_message();
  }
  v1::AttentionResponse response;
  EXPECT_TRUE(Call(valid, &response).ok()) << "the unmutated request must pass";
}

TEST_F(AttentionRpcTest, InvalidCuSeqlensAreNamed) {
  std::mt19937_64 rng(11);
  v1::AttentionVarlenRequest valid;
  RandomTensor(DType::kFloat32, {5, 2, 64}, rng).ToProto(valid.mutable_q());
  RandomTensor(DType::kFloat32, {7, 1, 64}, rng).ToProto(valid.mutable_k());
  RandomTensor(DType::kFloat32, {7, 1, 64}, rng).ToProto(valid.mutable_v());
  for (int x : {0, 2, 5}) valid.add_cu_seqlens_q(x);
  for (int x : {0, 3, 7}) valid.add_cu_seqlens_kv(x);
  const struct {
    const char* name;
    std::function<void(v1::AttentionVarlenRequest*)> mutate;
    const char* message;
  } cases[] = {
      {"empty", [](auto* r) { r->clear_cu_seqlens_q(); },
       "cu_seqlens_q has 0 entries, must have num_seqs + 1 >= 2"},
      {"sizes differ", [](auto* r) { r->add_cu_seqlens_kv(7); },
       "cu_seqlens_kv has 4 entries, must have 3"},
      {"start", [](auto* r) { r->set_cu_seqlens_q(0, 1); }, "cu_seqlens_q[0] must be 0"},
      {"decreasing", [](auto* r) { r->set_cu_seqlens_kv(1, 8); },
       "cu_seqlens_kv[2] (7) must be >= cu_seqlens_kv[1] (8)"},
      {"end", [](auto* r) { r->set_cu_seqlens_q(2, 4); },
       "cu_seqlens_q[2] (4) must equal q.shape[0] (5)"},
      {"k heads", [](auto* r) { r->mutable_v()->set_shape(1, 2); },
       "v.shape[1] (Hkv) = 2 must equal k.shape[1] (1)"},
  };
  for (const auto& c : cases) {
    v1::AttentionVarlenRequest request = valid;
    c.mutate(&request);
    v1::AttentionResponse response;
    const grpc::Status status = CallVarlen(request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_NE(status.error_message().find(c.message), std::string::npos)
        << c.name << ": " << status.error_message();
  }
  v1::AttentionResponse response;
  EXPECT_TRUE(CallVarlen(valid, &response).ok());
}

TEST_F(AttentionRpcTest, MalformedBytesAreRejected) {
  grpc::GenericStub stub(server_->channel());
  const std::string garbage = "\x0a\xff\xff\xff\xff\x0f";  // a length far past the end
  grpc::Slice slice(garbage);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext context;
  Notification done;
  grpc::Status status;
  stub.UnaryCall(&context, "/flashkv.v1.AttentionService/Attention", grpc::StubOptions(), &request,
                 &response, [&](grpc::Status s) {
                   status = s;
                   done.Notify();
                 });
  done.WaitForNotification();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("malformed AttentionRequest"), std::string::npos)
      << status.error_message();
}

}  // namespace
}  // namespace flashkv::testing
