#include "flashkv/server/tensor_checks.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace flashkv::server {
namespace {

wire::TensorView View(int32_t dtype, std::vector<int64_t> shape, size_t bytes) {
  wire::TensorView t;
  t.present = true;
  t.dtype = dtype;
  t.shape.assign(shape.begin(), shape.end());
  t.data = wire::Span{0, bytes};
  return t;
}

TensorSpec KvSpec() {
  return TensorSpec{
      "entries[2].k",
      {{"n", kAnyDim, ""}, {"Hkv", 8, "the model's kv heads"}, {"D", 128, "the model's head dim"}},
      DType::kFloat16,
      "the model's dtype"};
}

TEST(TensorChecksTest, AcceptsAMatchingTensor) {
  absl::StatusOr<DType> dtype = CheckTensor(View(1, {3, 8, 128}, 3 * 8 * 128 * 2), KvSpec());
  ASSERT_TRUE(dtype.ok()) << dtype.status();
  EXPECT_EQ(*dtype, DType::kFloat16);
  EXPECT_TRUE(CheckTensor(View(1, {0, 8, 128}, 0), KvSpec()).ok());
}

TEST(TensorChecksTest, NamesTheFieldAndTheLimit) {
  const struct {
    wire::TensorView view;
    const char* message;
  } cases[] = {
      {wire::TensorView{}, "entries[2].k is missing"},
      {View(3, {3, 8, 128}, 3 * 8 * 128 * 4),
       "entries[2].k.dtype (DTYPE_FLOAT32) must match the model's dtype (DTYPE_FLOAT16)"},
      {View(0, {3, 8, 128}, 0), "entries[2].k.dtype (DTYPE_UNSPECIFIED) must be"},
      {View(1, {3, 8}, 48), "entries[2].k.shape [3,8] must have 3 dimensions [n,Hkv,D]"},
      {View(1, {3, 4, 128}, 3 * 4 * 128 * 2),
       "entries[2].k.shape[1] (Hkv) = 4 must equal the model's kv heads (8)"},
      {View(1, {-3, 8, 128}, 0), "entries[2].k.shape[0] (n) = -3 must be in [0, 2147483647]"},
      {View(1, {3, 8, 128}, 7),
       "entries[2].k.data has 7 bytes; shape [3,8,128] of fp16 needs 6144"},
      {View(1, {2147483647, 8, 128}, 7), "needs 4398046509056"},
  };
  for (const auto& c : cases) {
    const absl::StatusOr<DType> dtype = CheckTensor(c.view, KvSpec());
    EXPECT_EQ(dtype.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_NE(dtype.status().message().find(c.message), std::string::npos) << dtype.status();
  }
}

TEST(TensorChecksTest, SaturatesInsteadOfOverflowing) {
  TensorSpec spec{"t",
                  {{"a", kAnyDim, ""}, {"b", kAnyDim, ""}, {"c", kAnyDim, ""}, {"d", kAnyDim, ""}},
                  std::nullopt,
                  ""};
  const int64_t big = 2147483647;
  // 2^31^4 * 4 overflows 64 bits; the product must not wrap around to a small match.
  const absl::StatusOr<DType> dtype = CheckTensor(View(3, {big, big, big, big}, 0), spec);
  EXPECT_FALSE(dtype.ok());
  EXPECT_NE(dtype.status().message().find("needs 18446744073709551615"), std::string::npos)
      << dtype.status();
}

TEST(TensorChecksTest, BytesInPlaceWhenContiguousAndAlignedElseCopied) {
  // A payload starting at an odd offset of one slice, then one split over two slices.
  std::string first(33, '\0'), second(16, '\0');
  for (int i = 0; i < 33; ++i) first[i] = char(i);
  for (int i = 0; i < 16; ++i) second[i] = char(100 + i);
  const wire::MessageBytes message =
      wire::MessageBytes::FromSlices({grpc::Slice(first), grpc::Slice(second)});
  for (size_t offset = 0; offset < 8; ++offset) {
    const wire::Span span{offset, 16};
    const bool aligned = reinterpret_cast<uintptr_t>(message.Contiguous(span)) % 4 == 0;
    const TensorBytes bytes = TensorBytes::Get(message, span, DType::kFloat32);
    EXPECT_EQ(bytes.copied(), !aligned) << offset;
    EXPECT_EQ(static_cast<const char*>(bytes.data())[0], char(offset));
  }
  const TensorBytes odd = TensorBytes::Get(message, wire::Span{1, 8}, DType::kFloat16);
  EXPECT_TRUE(odd.copied());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(odd.data()) % 64, 0u);
  EXPECT_EQ(static_cast<const char*>(odd.data())[0], 1);
  const TensorBytes split = TensorBytes::Get(message, wire::Span{30, 6}, DType::kFloat16);
  EXPECT_TRUE(split.copied());
  const char* p = static_cast<const char*>(split.data());
  EXPECT_EQ(std::string(p, 6), std::string("\x1e\x1f\x20\x64\x65\x66", 6));
}

}  // namespace
}  // namespace flashkv::server
