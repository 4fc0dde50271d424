#pragma once

// Host tensors in a storage dtype with an explicit layout, the random and poison fills every
// kernels test uses, and the per-test random seed.
//
// A HostTensor holds a logical [outer, rows, heads, dim] tensor (fixed-length: [B, S, H, D];
// packed varlen: [1, T, H, D]; cache pool: [num_blocks, page_size, H, D]) inside an allocation
// that may be larger than the logical elements (padded layouts). Every element of the allocation
// starts as a NaN poison pattern, so a kernel that writes outside its output, or leaves part of it
// unwritten, is caught bit-exactly, and one that reads padding it should not touch gets NaNs.

#include <gtest/gtest.h>

#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "flashkv/attention.h"
#include "flashkv/dtype.h"

namespace flashkv {
// Test parameters print as "fp16", not as bytes.
inline void PrintTo(DType dtype, std::ostream* os) { *os << DTypeName(dtype); }
}  // namespace flashkv

namespace flashkv::testbed {

using Rng = std::mt19937_64;

// A fresh seed per test (std::random_device), unless FLASHKV_TEST_SEED is set to reproduce a
// failing run. While alive it adds "seed N" to every failure message of the test.
class SeededRng {
 public:
  SeededRng();
  SeededRng(const SeededRng&) = delete;
  SeededRng& operator=(const SeededRng&) = delete;

  Rng& rng() { return rng_; }
  uint64_t seed() const { return seed_; }

 private:
  uint64_t seed_;
  Rng rng_;
  ::testing::ScopedTrace trace_;
};

// A standard-normal sample, redrawn until it is not zero once rounded to `dtype`: zeros hide
// indexing bugs (a kernel reading the wrong element of an all-zero tensor is "right").
float NonZeroNormal(Rng& rng, DType dtype, float stddev = 1.0f);

// How a logical [outer, rows, heads, dim] tensor is laid out. The head dim is always contiguous.
enum class Layout {
  kRowMajor,   // [outer, rows, heads, dim], dense
  kHeadMajor,  // [outer, heads, rows, dim], dense (the dense cache-pool layout of the API)
  kPadded,     // [outer, rows, heads, dim] with gaps after every head, row and outer index
  kOddPadded,  // kPadded with odd gaps: head vectors not 16-byte aligned (vector loads must cope)
};
const char* LayoutName(Layout layout);

// The gaps of kPadded, in elements. Multiples of 8 keep every head vector 16-byte aligned for
// 2-byte dtypes, as in a slice of a fused QKV tensor; kOddPadded uses 1, 3 and 5.
struct Gaps {
  int64_t head, row, outer;
};
inline constexpr Gaps kPaddedGaps{8, 16, 24};
inline constexpr Gaps kOddPaddedGaps{1, 3, 5};

struct Shape4 {
  int64_t outer = 0;
  int64_t rows = 0;
  int64_t heads = 0;
  int64_t dim = 0;
  int64_t Elements() const { return outer * rows * heads * dim; }
};

// Element strides of `layout` for `shape`, and the elements the allocation needs.
Strides LayoutStrides(Layout layout, const Shape4& shape);
int64_t LayoutCapacity(Layout layout, const Shape4& shape);

// The NaN bit pattern outputs and unused memory are filled with. Signalling NaNs with a payload no
// arithmetic produces, so "still poison" means "never written".
uint32_t PoisonBits(DType dtype);

// The exact value of element `index` of a `dtype` array, as a double.
double LoadAsDouble(DType dtype, const void* base, int64_t index);

// A tensor in host memory. Copyable (tests snapshot them). Not thread-safe.
class HostTensor {
 public:
  HostTensor() = default;
  // Every element of the allocation, gaps included, starts as poison.
  HostTensor(DType dtype, const Shape4& shape, Layout layout);
  HostTensor(DType dtype, const Shape4& shape, const Strides& strides, int64_t capacity);

  DType dtype() const { return dtype_; }
  const Shape4& shape() const { return shape_; }
  const Strides& strides() const { return strides_; }
  int64_t capacity() const { return capacity_; }  // elements in the allocation
  size_t bytes() const { return storage_.size(); }
  void* data() { return storage_.data(); }
  const void* data() const { return storage_.data(); }

  int64_t Offset(int64_t outer, int64_t row, int64_t head, int64_t d) const {
    return outer * strides_.batch + row * strides_.row + head * strides_.head + d;
  }
  double Get(int64_t outer, int64_t row, int64_t head, int64_t d) const {
    return GetAt(Offset(outer, row, head, d));
  }
  // Rounds `value` to the dtype.
  void Set(int64_t outer, int64_t row, int64_t head, int64_t d, float value) {
    SetAt(Offset(outer, row, head, d), value);
  }

  double GetAt(int64_t index) const { return LoadAsDouble(dtype_, storage_.data(), index); }
  void SetAt(int64_t index, float value);
  uint32_t BitsAt(int64_t index) const;
  void SetBitsAt(int64_t index, uint32_t bits);
  bool IsPoisonAt(int64_t index) const { return BitsAt(index) == PoisonBits(dtype_); }

  // Poisons the whole allocation.
  void Poison();
  // Fills the logical elements with NonZeroNormal samples; gaps keep what they hold.
  void FillNormal(Rng& rng, float stddev = 1.0f);
  // A mask over the allocation (size capacity()): the elements of the logical tensor.
  std::vector<bool> LogicalMask() const;

 private:
  DType dtype_ = DType::kFloat32;
  Shape4 shape_;
  Strides strides_;
  int64_t capacity_ = 0;
  std::vector<uint8_t> storage_;
};

// A float32 vector (LSE buffers) filled with the fp32 poison pattern.
std::vector<float> PoisonedFloats(size_t count);
bool IsPoison(float value);

}  // namespace flashkv::testbed
