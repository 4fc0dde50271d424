#pragma once

// Reads a fuzzer's input as a stream of small decisions (as libFuzzer's FuzzedDataProvider, which
// the ordinary replay build does not have): one or two bytes per decision; once the bytes run out
// every decision is 0 / false and exhausted() is true, so any input is a complete program.

#include <cstddef>
#include <cstdint>

namespace flashkv::fuzz {

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  uint8_t Byte() { return position_ < size_ ? data_[position_++] : 0; }
  // In [0, n); n >= 1. Two bytes when n > 256.
  int Below(int n) {
    if (n <= 1) return 0;
    uint32_t value = Byte();
    if (n > 256) value = (value << 8) | Byte();
    return static_cast<int>(value % static_cast<uint32_t>(n));
  }
  // In [lo, hi].
  int Between(int lo, int hi) { return lo + Below(hi - lo + 1); }
  // True with probability about p.
  bool Chance(double p) { return Byte() < p * 256.0; }
  bool exhausted() const { return position_ >= size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t position_ = 0;
};

}  // namespace flashkv::fuzz
