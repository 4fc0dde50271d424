#pragma once

// The backends a kernels test runs on, and memory that lives where a backend computes: host heap
// for the CPU backend, device memory (flashkv::cuda::Malloc) for the CUDA backend.

#include <gtest/gtest.h>

#include <cstddef>
#include <ostream>
#include <string>
#include <vector>

#include "flashkv/attention.h"
#include "flashkv/kernel_status.h"

namespace flashkv::testbed {

enum class Backend { kCpu, kCuda };

// "Cpu" / "Cuda": the prefix of parameterised test names (ctest labels GPU tests by it).
const char* BackendName(Backend backend);
inline void PrintTo(Backend backend, std::ostream* os) { *os << BackendName(backend); }
inline const std::vector<Backend>& AllBackends() {
  static const std::vector<Backend> kAll = {Backend::kCpu, Backend::kCuda};
  return kAll;
}

// Empty when `backend` can run (dtype, head_dim) in this build on this machine, else the reason
// (no CUDA device; the instantiation is not compiled).
std::string UnavailableReason(Backend backend, DType dtype, int head_dim);
// Empty when `backend` can run anything at all here.
std::string BackendUnavailableReason(Backend backend);

// Memory on a backend. Move-only; frees on destruction. A zero-byte buffer holds nullptr.
class BackendBuffer {
 public:
  explicit BackendBuffer(Backend backend) : backend_(backend) {}
  BackendBuffer(BackendBuffer&& other) noexcept;
  BackendBuffer& operator=(BackendBuffer&& other) noexcept;
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;
  ~BackendBuffer();

  // Allocates `bytes` (replacing any earlier allocation) and copies them from host memory.
  KernelStatus Upload(const void* host, size_t bytes);
  // Copies the first `bytes` back to host memory.
  KernelStatus Download(void* host, size_t bytes) const;

  void* get() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void Release();

  Backend backend_;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Uploads a host vector; a convenience for index arrays.
template <typename T>
KernelStatus UploadVector(const std::vector<T>& host, BackendBuffer* buffer) {
  return buffer->Upload(host.data(), host.size() * sizeof(T));
}

// The backend's attention entry points, so one test body serves both backends. CUDA calls run on
// the default stream and are synchronised before they return.
KernelStatus RunFixed(Backend backend, const FixedAttentionArgs& args);
KernelStatus RunVarlen(Backend backend, const VarlenAttentionArgs& args);
KernelStatus RunPaged(Backend backend, const PagedAttentionArgs& args);
KernelStatus PlanPaged(Backend backend, const PagedAttentionArgs& args, PagedAttentionPlan* plan);
KernelStatus RunPlannedPaged(Backend backend, const PagedAttentionPlan& plan,
                             const PagedLayerTensors& tensors);
KernelStatus RunAppendKv(Backend backend, const KvAppendArgs& args);

}  // namespace flashkv::testbed

// GTEST_SKIP()s the current test when `backend` cannot run (dtype, head_dim) here.
#define FLASHKV_SKIP_UNLESS_RUNNABLE(backend, dtype, head_dim)                 \
  do {                                                                         \
    const std::string flashkv_reason_ =                                        \
        ::flashkv::testbed::UnavailableReason((backend), (dtype), (head_dim)); \
    if (!flashkv_reason_.empty()) GTEST_SKIP() << flashkv_reason_;             \
  } while (0)

#define FLASHKV_SKIP_UNLESS_AVAILABLE(backend)                                                 \
  do {                                                                                         \
    const std::string flashkv_reason_ = ::flashkv::testbed::BackendUnavailableReason(backend); \
    if (!flashkv_reason_.empty()) GTEST_SKIP() << flashkv_reason_;                             \
  } while (0)

// Asserts that a KernelStatus is OK, printing it otherwise.
#define FLASHKV_ASSERT_OK(expr)                                      \
  do {                                                               \
    const ::flashkv::KernelStatus flashkv_status_ = (expr);          \
    ASSERT_TRUE(flashkv_status_.ok()) << flashkv_status_.ToString(); \
  } while (0)
#define FLASHKV_EXPECT_OK(expr)                                      \
  do {                                                               \
    const ::flashkv::KernelStatus flashkv_status_ = (expr);          \
    EXPECT_TRUE(flashkv_status_.ok()) << flashkv_status_.ToString(); \
  } while (0)
