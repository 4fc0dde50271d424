#include "flashkv/server/status.h"

#include <gtest/gtest.h>

namespace flashkv::server {
namespace {

TEST(StatusTest, CodesAndMessagesTravelUnchanged) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  const struct {
    absl::Status in;
    grpc::StatusCode out;
  } cases[] = {
      {absl::InvalidArgumentError("q.dtype"), grpc::StatusCode::INVALID_ARGUMENT},
      {absl::NotFoundError("seq"), grpc::StatusCode::NOT_FOUND},
      {absl::AlreadyExistsError("seq"), grpc::StatusCode::ALREADY_EXISTS},
      {absl::ResourceExhaustedError("blocks"), grpc::StatusCode::RESOURCE_EXHAUSTED},
      {absl::FailedPreconditionError("layer"), grpc::StatusCode::FAILED_PRECONDITION},
      {absl::AbortedError("busy"), grpc::StatusCode::ABORTED},
      {absl::CancelledError("gone"), grpc::StatusCode::CANCELLED},
      {absl::DeadlineExceededError("late"), grpc::StatusCode::DEADLINE_EXCEEDED},
      {absl::UnavailableError("draining"), grpc::StatusCode::UNAVAILABLE},
      {absl::UnimplementedError("fp32"), grpc::StatusCode::UNIMPLEMENTED},
      {absl::InternalError("bug"), grpc::StatusCode::INTERNAL},
  };
  for (const auto& c : cases) {
    const grpc::Status s = ToGrpcStatus(c.in);
    EXPECT_EQ(s.error_code(), c.out) << c.in;
    EXPECT_EQ(s.error_message(), std::string(c.in.message()));
  }
}

TEST(StatusTest, KernelStatusesMapOneToOne) {
  const grpc::Status s = ToGrpcStatus(InvalidArgument("num_heads_q (12) must be a multiple"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "num_heads_q (12) must be a multiple");
  EXPECT_EQ(ToGrpcStatus(ResourceExhausted("x")).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ToGrpcStatus(Unavailable("x")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ToGrpcStatus(Internal("x")).error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_TRUE(ToGrpcStatus(KernelStatus::Ok()).ok());
}

TEST(StatusTest, CodeNames) {
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
  EXPECT_STREQ(GrpcCodeName(grpc::StatusCode::OK), "OK");
}

}  // namespace
}  // namespace flashkv::server
