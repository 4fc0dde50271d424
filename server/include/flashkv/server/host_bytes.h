#pragma once

// A heap buffer with 64-byte alignment (cache lines, and the widest SIMD loads of the CPU
// kernels), owned through shared_ptr so that response slices can reference it after the handler
// that filled it is gone (flashkv/wire/message_builder.h).

#include <cstddef>
#include <cstdint>
#include <memory>

namespace flashkv::server {

class HostBytes {
 public:
  static constexpr size_t kAlignment = 64;

  // Uninitialised. Never null (allocation failure throws std::bad_alloc, as new does).
  static std::shared_ptr<HostBytes> Allocate(size_t size);

  ~HostBytes();
  HostBytes(const HostBytes&) = delete;
  HostBytes& operator=(const HostBytes&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  HostBytes(uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t* data_;
  size_t size_;
};

}  // namespace flashkv::server
