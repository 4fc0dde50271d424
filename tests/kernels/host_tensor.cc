#include "kernels/host_tensor.h"

#include <cstdlib>
#include <cstring>
#include <limits>

namespace flashkv::testbed {
namespace {

uint64_t ChooseSeed() {
  // A reproduction hook for tests only: a failing seed printed by one run is replayed with
  // FLASHKV_TEST_SEED=N on the next.
  if (const char* forced = std::getenv("FLASHKV_TEST_SEED"); forced != nullptr && *forced != 0) {
    return std::strtoull(forced, nullptr, 10);
  }
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

std::string SeedMessage(uint64_t seed) {
  return "random seed " + std::to_string(seed) +
         " (rerun with FLASHKV_TEST_SEED=" + std::to_string(seed) + ")";
}

const Gaps* GapsOf(Layout layout) {
  if (layout == Layout::kPadded) return &kPaddedGaps;
  if (layout == Layout::kOddPadded) return &kOddPaddedGaps;
  return nullptr;
}

}  // namespace

SeededRng::SeededRng()
    : seed_(ChooseSeed()), rng_(seed_), trace_(__FILE__, __LINE__, SeedMessage(seed_)) {}

float NonZeroNormal(Rng& rng, DType dtype, float stddev) {
  std::normal_distribution<float> normal(0.0f, stddev);
  for (;;) {
    const float x = normal(rng);
    float rounded = x;
    if (dtype == DType::kFloat16) rounded = ToFloat(ToFloat16(x));
    if (dtype == DType::kBFloat16) rounded = ToFloat(ToBFloat16(x));
    if (rounded != 0.0f) return rounded;
  }
}

const char* LayoutName(Layout layout) {
  switch (layout) {
    case Layout::kRowMajor:
      return "rowmajor";
    case Layout::kHeadMajor:
      return "headmajor";
    case Layout::kPadded:
      return "padded";
    case Layout::kOddPadded:
      return "oddpadded";
  }
  return "unknown";
}

Strides LayoutStrides(Layout layout, const Shape4& s) {
  if (const Gaps* gaps = GapsOf(layout)) {
    const int64_t head = s.dim + gaps->head;
    const int64_t row = s.heads * head + gaps->row;
    return Strides{s.rows * row + gaps->outer, row, head};
  }
  switch (layout) {
    case Layout::kRowMajor:
      return Strides{s.rows * s.heads * s.dim, s.heads * s.dim, s.dim};
    case Layout::kHeadMajor:
      return Strides{s.rows * s.heads * s.dim, s.dim, s.rows * s.dim};
    default:
      return Strides{};
  }
}

int64_t LayoutCapacity(Layout layout, const Shape4& s) {
  if (s.Elements() == 0) return 0;
  const Strides st = LayoutStrides(layout, s);
  // One past the last logical element, plus the trailing gap of a padded layout (so a kernel that
  // over-reads the last row hits poison inside the allocation).
  const int64_t last =
      (s.outer - 1) * st.batch + (s.rows - 1) * st.row + (s.heads - 1) * st.head + s.dim;
  const Gaps* gaps = GapsOf(layout);
  return gaps != nullptr ? last + gaps->head + gaps->row + gaps->outer : last;
}

uint32_t PoisonBits(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return 0x7da5u;  // exponent all ones, quiet bit clear, payload 0x1a5
    case DType::kBFloat16:
      return 0x7fa5u;  // exponent all ones, quiet bit clear, payload 0x25
    case DType::kFloat32:
      return 0x7fa5a5a5u;
  }
  return 0;
}

double LoadAsDouble(DType dtype, const void* base, int64_t index) {
  switch (dtype) {
    case DType::kFloat16:
      return ToFloat(static_cast<const Float16*>(base)[index]);
    case DType::kBFloat16:
      return ToFloat(static_cast<const BFloat16*>(base)[index]);
    case DType::kFloat32:
      return static_cast<const float*>(base)[index];
  }
  return std::numeric_limits<double>::quiet_NaN();
}

HostTensor::HostTensor(DType dtype, const Shape4& shape, Layout layout)
    : HostTensor(dtype, shape, LayoutStrides(layout, shape), LayoutCapacity(layout, shape)) {}

HostTensor::HostTensor(DType dtype, const Shape4& shape, const Strides& strides, int64_t capacity)
    : dtype_(dtype),
      shape_(shape),
      strides_(strides),
      capacity_(capacity),
      storage_(static_cast<size_t>(capacity) * DTypeSize(dtype)) {
  Poison();
}

void HostTensor::SetAt(int64_t index, float value) {
  switch (dtype_) {
    case DType::kFloat16:
      reinterpret_cast<Float16*>(storage_.data())[index] = ToFloat16(value);
      return;
    case DType::kBFloat16:
      reinterpret_cast<BFloat16*>(storage_.data())[index] = ToBFloat16(value);
      return;
    case DType::kFloat32:
      reinterpret_cast<float*>(storage_.data())[index] = value;
      return;
  }
}

uint32_t HostTensor::BitsAt(int64_t index) const {
  if (dtype_ == DType::kFloat32) {
    uint32_t bits;
    std::memcpy(&bits, storage_.data() + index * 4, 4);
    return bits;
  }
  uint16_t bits;
  std::memcpy(&bits, storage_.data() + index * 2, 2);
  return bits;
}

void HostTensor::SetBitsAt(int64_t index, uint32_t bits) {
  if (dtype_ == DType::kFloat32) {
    std::memcpy(storage_.data() + index * 4, &bits, 4);
    return;
  }
  const uint16_t half = static_cast<uint16_t>(bits);
  std::memcpy(storage_.data() + index * 2, &half, 2);
}

void HostTensor::Poison() {
  const uint32_t bits = PoisonBits(dtype_);
  for (int64_t i = 0; i < capacity_; ++i) SetBitsAt(i, bits);
}

void HostTensor::FillNormal(Rng& rng, float stddev) {
  for (int64_t o = 0; o < shape_.outer; ++o) {
    for (int64_t r = 0; r < shape_.rows; ++r) {
      for (int64_t h = 0; h < shape_.heads; ++h) {
        for (int64_t d = 0; d < shape_.dim; ++d)
          Set(o, r, h, d, NonZeroNormal(rng, dtype_, stddev));
      }
    }
  }
}

std::vector<bool> HostTensor::LogicalMask() const {
  std::vector<bool> mask(static_cast<size_t>(capacity_), false);
  for (int64_t o = 0; o < shape_.outer; ++o) {
    for (int64_t r = 0; r < shape_.rows; ++r) {
      for (int64_t h = 0; h < shape_.heads; ++h) {
        for (int64_t d = 0; d < shape_.dim; ++d) mask[Offset(o, r, h, d)] = true;
      }
    }
  }
  return mask;
}

std::vector<float> PoisonedFloats(size_t count) {
  // Bits are copied, never a float value: a signalling NaN may be quieted by a float move.
  std::vector<float> values(count);
  const uint32_t bits = PoisonBits(DType::kFloat32);
  for (float& v : values) std::memcpy(&v, &bits, sizeof bits);
  return values;
}

bool IsPoison(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits == PoisonBits(DType::kFloat32);
}

}  // namespace flashkv::testbed
