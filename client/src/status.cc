#include "flashkv/client/status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace flashkv {

absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view rpc) {
  if (status.ok()) return absl::OkStatus();
  const auto code = static_cast<absl::StatusCode>(status.error_code());
  if (!rpc.empty() && status.error_message().empty()) {
    return absl::Status(code, absl::StrCat(rpc, ": ", absl::StatusCodeToString(code)));
  }
  return absl::Status(code, status.error_message());
}

absl::Status FromKernel(const KernelStatus& status, absl::string_view what) {
  if (status.ok()) return absl::OkStatus();
  const auto code = static_cast<absl::StatusCode>(status.code());
  if (what.empty()) return absl::Status(code, status.message());
  return absl::Status(code, absl::StrCat(what, ": ", status.message()));
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace flashkv
