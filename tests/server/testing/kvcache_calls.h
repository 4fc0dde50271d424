#pragma once

// One KvCacheService call each, as integration tests make them through the generated stub: a
// 60-second deadline and, when `token` is not empty, "authorization: Bearer <token>".

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "flashkv/v1/kvcache.grpc.pb.h"

namespace flashkv::testing {

using KvCacheStub = flashkv::v1::KvCacheService::Stub;

// Sets the deadline and the bearer token of a call.
void PrepareCall(grpc::ClientContext& context, const std::string& token = "");

// `cached` (optional) receives the prompt tokens found in the prefix cache.
grpc::Status CreateSequence(KvCacheStub& stub, const std::string& id, const std::string& token = "",
                            const std::vector<int64_t>& prompt = {}, uint32_t* cached = nullptr);
grpc::Status FreeSequence(KvCacheStub& stub, const std::string& id, const std::string& token = "");
grpc::Status StepCall(KvCacheStub& stub, const flashkv::v1::StepRequest& request,
                      flashkv::v1::StepResponse* response, const std::string& token = "");
// Expects the call to succeed.
flashkv::v1::ServerStats GetStats(KvCacheStub& stub, const std::string& token = "");

}  // namespace flashkv::testing
