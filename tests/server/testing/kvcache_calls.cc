#include "testing/kvcache_calls.h"

#include <gtest/gtest.h>

#include <chrono>

namespace flashkv::testing {

namespace v1 = flashkv::v1;

void PrepareCall(grpc::ClientContext& context, const std::string& token) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
}

grpc::Status CreateSequence(KvCacheStub& stub, const std::string& id, const std::string& token,
                            const std::vector<int64_t>& prompt, uint32_t* cached) {
  grpc::ClientContext context;
  PrepareCall(context, token);
  v1::CreateSequenceRequest request;
  request.set_sequence_id(id);
  for (int64_t t : prompt) request.add_token_ids(t);
  v1::CreateSequenceResponse response;
  const grpc::Status status = stub.CreateSequence(&context, request, &response);
  if (cached != nullptr) *cached = response.cached_tokens();
  return status;
}

grpc::Status FreeSequence(KvCacheStub& stub, const std::string& id, const std::string& token) {
  grpc::ClientContext context;
  PrepareCall(context, token);
  v1::FreeSequenceRequest request;
  request.set_sequence_id(id);
  v1::FreeSequenceResponse response;
  return stub.FreeSequence(&context, request, &response);
}

grpc::Status StepCall(KvCacheStub& stub, const v1::StepRequest& request, v1::StepResponse* response,
                      const std::string& token) {
  grpc::ClientContext context;
  PrepareCall(context, token);
  return stub.Step(&context, request, response);
}

v1::ServerStats GetStats(KvCacheStub& stub, const std::string& token) {
  grpc::ClientContext context;
  PrepareCall(context, token);
  v1::ServerStats stats;
  const grpc::Status status = stub.GetStats(&context, v1::GetStatsRequest(), &stats);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return stats;
}

}  // namespace flashkv::testing
