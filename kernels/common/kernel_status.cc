#include "flashkv/kernel_status.h"

namespace flashkv {
namespace {

const char* CodeName(KernelStatusCode code) {
  switch (code) {
    case KernelStatusCode::kOk:
      return "OK";
    case KernelStatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case KernelStatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case KernelStatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case KernelStatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case KernelStatusCode::kInternal:
      return "INTERNAL";
    case KernelStatusCode::kUnavailable:
      return "UNAVAILABLE";
  }
  return "UNKNOWN";
}

}  // namespace

std::string KernelStatus::ToString() const {
  if (ok()) return "OK";
  return std::string(CodeName(code_)) + ": " + message_;
}

}  // namespace flashkv
