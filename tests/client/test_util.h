#pragma once

// Small helpers shared by the client tests: random tensors and a client on a fake server.

#include <memory>
#include <random>
#include <vector>

#include "fake_service.h"
#include "flashkv/client/client.h"
#include "gtest/gtest.h"

namespace flashkv::testing {

inline std::vector<float> RandomFloats(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> values(n);
  for (float& x : values) x = dist(rng);
  return values;
}

inline HostTensor RandomTensor(DType dtype, Shape shape, std::mt19937& rng) {
  return *HostTensor::FromFloats(dtype, shape, RandomFloats(NumElements(shape), rng));
}

inline std::unique_ptr<Client> ClientFor(const std::string& target, std::string token = "") {
  ClientConfig config;
  config.channel.target = target;
  config.bearer_token = std::move(token);
  config.default_timeout = absl::Seconds(20);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(config);
  EXPECT_TRUE(client.ok()) << client.status();
  return *std::move(client);
}

// Max |a - b| over two equally long float vectors.
inline float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

}  // namespace flashkv::testing
