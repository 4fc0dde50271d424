#pragma once

#include <string>
#include <utility>

namespace flashkv {

// Error codes of the kernels layer. They mirror the gRPC/absl canonical codes of the same names so
// the service maps them one to one; the kernels library itself stays free of absl and gRPC.
enum class KernelStatusCode {
  kOk = 0,
  kInvalidArgument = 3,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
};

// The result of a kernels-layer call: a code and, on error, a message that names the offending
// argument and the limit it broke. Cheap to return by value; `[[nodiscard]]` so no error is dropped.
class [[nodiscard]] KernelStatus {
 public:
  KernelStatus() = default;
  KernelStatus(KernelStatusCode code, std::string message)
      : code_(code), message_(std::move(message)) {}

  static KernelStatus Ok() { return KernelStatus(); }

  bool ok() const { return code_ == KernelStatusCode::kOk; }
  KernelStatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: q.shape[2] ..." — for logs and test failure messages.
  std::string ToString() const;

 private:
  KernelStatusCode code_ = KernelStatusCode::kOk;
  std::string message_;
};

inline KernelStatus InvalidArgument(std::string message) {
  return KernelStatus(KernelStatusCode::kInvalidArgument, std::move(message));
}
inline KernelStatus Unimplemented(std::string message) {
  return KernelStatus(KernelStatusCode::kUnimplemented, std::move(message));
}
inline KernelStatus Internal(std::string message) {
  return KernelStatus(KernelStatusCode::kInternal, std::move(message));
}
inline KernelStatus Unavailable(std::string message) {
  return KernelStatus(KernelStatusCode::kUnavailable, std::move(message));
}
inline KernelStatus FailedPrecondition(std::string message) {
  return KernelStatus(KernelStatusCode::kFailedPrecondition, std::move(message));
}
inline KernelStatus ResourceExhausted(std::string message) {
  return KernelStatus(KernelStatusCode::kResourceExhausted, std::move(message));
}

}  // namespace flashkv

// Returns early from the enclosing function when `expr` is an error status.
#define FLASHKV_RETURN_IF_ERROR(expr)              \
  do {                                             \
    ::flashkv::KernelStatus flashkv_status_ = (expr); \
    if (!flashkv_status_.ok()) return flashkv_status_; \
  } while (0)
