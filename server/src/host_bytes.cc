#include "flashkv/server/host_bytes.h"

#include <new>

namespace flashkv::server {

std::shared_ptr<HostBytes> HostBytes::Allocate(size_t size) {
  auto* data = static_cast<uint8_t*>(
      ::operator new(size == 0 ? kAlignment : size, std::align_val_t(kAlignment)));
  return std::shared_ptr<HostBytes>(new HostBytes(data, size));
}

HostBytes::~HostBytes() { ::operator delete(data_, std::align_val_t(kAlignment)); }

}  // namespace flashkv::server
