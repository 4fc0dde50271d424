// ChooseBackend: stateless attention calls spread round-robin over the backends, except calls
// with CUDA regions, which run on the backend of their device or are refused naming the field
// and both devices.

#include "flashkv/server/attention_calls.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace flashkv::server {
namespace {

// A backend that only tells where it computes.
class FakeBackend final : public AttentionBackend {
 public:
  explicit FakeBackend(int device) : device_(device) {}
  std::string name() const override { return "fake:" + std::to_string(device_); }
  int cuda_device() const override { return device_; }
  bool IsCompiled(DType, int) const override { return true; }
  absl::Status RunFixed(const FixedAttentionArgs&, const OnDevice&) override {
    return absl::OkStatus();
  }
  absl::Status RunVarlen(const VarlenAttentionArgs&, const OnDevice&) override {
    return absl::OkStatus();
  }

 private:
  int device_;
};

AttentionCall CallOnDevice(int device, const char* field = "q.region", uint64_t region = 5) {
  AttentionCall call;
  call.device = device;
  call.device_field = field;
  call.device_region_id = region;
  return call;
}

TEST(ChooseBackendTest, HostCallsTakeTurns) {
  FakeBackend a(0), b(1);
  const std::vector<AttentionBackend*> backends = {&a, &b};
  const AttentionCall call;  // no CUDA region
  EXPECT_EQ(*ChooseBackend(call, backends, 0), &a);
  EXPECT_EQ(*ChooseBackend(call, backends, 1), &b);
  EXPECT_EQ(*ChooseBackend(call, backends, 2), &a);
}

TEST(ChooseBackendTest, CudaRegionsPickTheirDevice) {
  FakeBackend a(0), b(1);
  const std::vector<AttentionBackend*> backends = {&a, &b};
  for (size_t turn = 0; turn < 4; ++turn) {
    EXPECT_EQ(*ChooseBackend(CallOnDevice(1), backends, turn), &b) << turn;
    EXPECT_EQ(*ChooseBackend(CallOnDevice(0), backends, turn), &a) << turn;
  }
}

TEST(ChooseBackendTest, CudaRegionOnADeviceNotServedIsRefused) {
  FakeBackend a(0), b(1);
  const std::vector<AttentionBackend*> backends = {&a, &b};
  absl::StatusOr<AttentionBackend*> chosen = ChooseBackend(CallOnDevice(3, "out", 77), backends, 0);
  ASSERT_FALSE(chosen.ok());
  EXPECT_EQ(chosen.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(chosen.status().message());
  for (const char* part : {"out", "region 77", "CUDA device 3", "CUDA device 0"}) {
    EXPECT_NE(message.find(part), std::string::npos) << part << " in: " << message;
  }
}

TEST(ChooseBackendTest, CudaRegionOnTheCpuBackendIsRefused) {
  FakeBackend cpu(kCpuCompute);
  const std::vector<AttentionBackend*> backends = {&cpu};
  absl::StatusOr<AttentionBackend*> chosen =
      ChooseBackend(CallOnDevice(0, "k.region"), backends, 0);
  ASSERT_FALSE(chosen.ok());
  EXPECT_EQ(chosen.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(chosen.status().message().find("k.region"), absl::string_view::npos);
  EXPECT_NE(chosen.status().message().find("CPU backend"), absl::string_view::npos);
}

TEST(AttentionBackendTest, CpuBackendRefusesDevicePointers) {
  std::unique_ptr<AttentionBackend> cpu = NewCpuAttentionBackend();
  EXPECT_EQ(cpu->cuda_device(), kCpuCompute);
  OnDevice on_device;
  on_device.out = true;
  EXPECT_EQ(cpu->RunFixed(FixedAttentionArgs{}, on_device).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cpu->RunVarlen(VarlenAttentionArgs{}, on_device).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace flashkv::server
