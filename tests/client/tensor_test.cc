#include "flashkv/client/tensor.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace flashkv {
namespace {

TEST(TensorTest, Float16AndBFloat16RoundTripAtTheirPrecision) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  std::vector<float> values(1000);
  for (float& x : values) x = dist(rng);
  for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    absl::StatusOr<HostTensor> t = HostTensor::FromFloats(dtype, {10, 100}, values);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->num_bytes(), values.size() * DTypeSize(dtype));
    const std::vector<float> back = t->ToFloats();
    // Round to nearest: half an ulp at |x| < 4, i.e. 2^-11 * 4 (fp16), 2^-8 * 4 (bf16).
    const float tol = dtype == DType::kFloat16    ? 4.0f / 2048
                      : dtype == DType::kBFloat16 ? 4.0f / 256
                                                  : 0;
    for (size_t i = 0; i < values.size(); ++i) {
      ASSERT_LE(std::fabs(back[i] - values[i]), tol) << DTypeName(dtype) << " at " << i;
    }
    EXPECT_EQ(t->view().GetFloat(17), back[17]);
  }
}

TEST(TensorTest, KnownBitPatterns) {
  const float values[] = {1.0f, -2.0f, 65504.0f, 1e9f};
  absl::StatusOr<HostTensor> h = HostTensor::FromFloats(DType::kFloat16, {4}, values);
  ASSERT_TRUE(h.ok());
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(h->data());
  EXPECT_EQ(bits[0], 0x3c00);
  EXPECT_EQ(bits[1], 0xc000);
  EXPECT_EQ(bits[2], 0x7bff);
  EXPECT_EQ(bits[3], 0x7c00);  // overflow to +inf
  absl::StatusOr<HostTensor> b = HostTensor::FromFloats(DType::kBFloat16, {4}, values);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(reinterpret_cast<const uint16_t*>(b->data())[0], 0x3f80);
}

TEST(TensorTest, ProtoRoundTripMovesBytes) {
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  HostTensor t = *HostTensor::FromFloats(DType::kBFloat16, {2, 3}, values);
  v1::Tensor proto;
  std::move(t).MoveToProto(&proto);
  EXPECT_EQ(proto.dtype(), v1::DTYPE_BFLOAT16);
  EXPECT_EQ(proto.shape_size(), 2);
  EXPECT_EQ(proto.data().size(), 12u);
  absl::StatusOr<HostTensor> back = HostTensor::FromProto(std::move(proto), "out");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToFloats(), values);
}

TEST(TensorTest, ValidationNamesTheField) {
  v1::Tensor proto;
  proto.set_dtype(v1::DTYPE_FLOAT16);
  proto.add_shape(2);
  proto.add_shape(3);
  proto.set_data(std::string(10, '\0'));
  absl::Status s = ValidateTensorProto(proto, "entries[1].q");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "entries[1].q.data (10 bytes) must be 12 bytes for fp16 shape [2,3]");

  proto.set_dtype(v1::DTYPE_UNSPECIFIED);
  s = ValidateTensorProto(proto, "out");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("out.dtype (0)"), absl::string_view::npos) << s;

  proto.set_dtype(v1::DTYPE_FLOAT32);
  proto.set_shape(0, -1);
  EXPECT_NE(ValidateTensorProto(proto, "k").message().find("negative"), absl::string_view::npos);

  proto.clear_shape();
  for (int i = 0; i < 4; ++i) proto.add_shape(int64_t{1} << 20);
  EXPECT_NE(ValidateTensorProto(proto, "v").message().find("too large"), absl::string_view::npos);

  EXPECT_FALSE(HostTensor::FromFloats(DType::kFloat32, {2, 2}, std::vector<float>(3)).ok());
  EXPECT_FALSE(HostTensor::FromBytes(DType::kFloat16, {3}, std::string(5, 'x')).ok());
}

}  // namespace
}  // namespace flashkv
