// Where region tensors may be used: host regions on any backend, CUDA regions only on the device
// that computes, with errors that name the field, the region's device and the needed one.

#include "flashkv/server/region_tensors.h"

#include <gtest/gtest.h>

#include <string>

namespace flashkv::server {
namespace {

TEST(CheckRegionPlacementTest, HostRegionsGoEverywhere) {
  EXPECT_TRUE(CheckRegionPlacement("entries[0].q.region", 7, -1, kCpuCompute, "x").ok());
  EXPECT_TRUE(CheckRegionPlacement("entries[0].q.region", 7, -1, 0, "x").ok());
  EXPECT_TRUE(CheckRegionPlacement("entries[0].q.region", 7, -1, 3, "x").ok());
}

TEST(CheckRegionPlacementTest, CudaRegionOnItsOwnDevice) {
  EXPECT_TRUE(CheckRegionPlacement("out", 7, 0, 0, "x").ok());
  EXPECT_TRUE(CheckRegionPlacement("out", 7, 2, 2, "x").ok());
}

TEST(CheckRegionPlacementTest, CudaRegionOnAnotherDeviceNamesBothDevices) {
  const absl::Status s =
      CheckRegionPlacement("entries[3].k.region", 42, 1, 0, "the sequence's KV cache");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(s.message());
  for (const char* part : {"entries[3].k.region", "region 42", "CUDA device 1",
                           "the sequence's KV cache is on CUDA device 0", "on device 0"}) {
    EXPECT_NE(message.find(part), std::string::npos) << part << " in: " << message;
  }
}

TEST(CheckRegionPlacementTest, CudaRegionOnTheCpuBackend) {
  const absl::Status s = CheckRegionPlacement("lse", 9, 0, kCpuCompute, "x");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(s.message());
  for (const char* part : {"lse", "region 9", "CUDA device 0", "CPU backend", "host"}) {
    EXPECT_NE(message.find(part), std::string::npos) << part << " in: " << message;
  }
}

}  // namespace
}  // namespace flashkv::server
