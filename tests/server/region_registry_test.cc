// RegionRegistry with memfds of this very process: only sealed memfds are mapped, every slice is
// bounds-checked without overflow, tenants cannot see each other's regions, a released region
// stays mapped while a pinned slice lives, limits hold, and region tensors resolve into the
// request's bytes.

#include "flashkv/server/region_registry.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <limits>

#include "flashkv/server/region_tensors.h"

namespace flashkv::server {
namespace {

// A memfd of `size` bytes, sealed against shrinking unless `seal` is false.
class Memfd {
 public:
  Memfd(uint64_t size, bool seal = true) {
    fd_ = memfd_create("region-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(ftruncate(fd_, off_t(size)), 0);
    if (seal) EXPECT_EQ(fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
  }
  ~Memfd() { close(fd_); }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
};

wire::RegionSliceView Slice(uint64_t id, uint64_t offset) { return {true, id, offset}; }

TEST(RegionRegistryTest, MapsSealedMemfdsOnly) {
  RegionRegistry registry;
  Memfd unsealed(4096, /*seal=*/false);
  absl::StatusOr<uint64_t> id = registry.AttachHost("t", getpid(), unsealed.fd(), 4096);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(id.status().message().find("F_SEAL_SHRINK"), std::string::npos);

  Memfd sealed(4096);
  EXPECT_EQ(registry.AttachHost("t", getpid(), sealed.fd(), 8192).status().code(),
            absl::StatusCode::kFailedPrecondition);  // larger than the memfd
  EXPECT_EQ(registry.AttachHost("t", getpid(), 1 << 20, 4096).status().code(),
            absl::StatusCode::kNotFound);  // no such descriptor
  EXPECT_EQ(registry.AttachHost("t", getpid(), sealed.fd(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  id = registry.AttachHost("t", getpid(), sealed.fd(), 4096);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_NE(*id, 0u);
  EXPECT_EQ(registry.num_regions(), 1);
}

TEST(RegionRegistryTest, SlicesAreBoundsCheckedAndSeeTheClientsBytes) {
  RegionRegistry registry;
  Memfd memfd(4096);
  const uint64_t id = *registry.AttachHost("t", getpid(), memfd.fd(), 4096);
  void* mine = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.fd(), 0);
  ASSERT_NE(mine, MAP_FAILED);
  std::memcpy(static_cast<char*>(mine) + 100, "flashkv", 7);

  absl::StatusOr<RegionBytes> bytes = registry.Resolve("t", Slice(id, 100), 7, "q.region");
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(std::memcmp(bytes->data, "flashkv", 7), 0);
  EXPECT_TRUE(registry.Resolve("t", Slice(id, 0), 4096, "q").ok());
  EXPECT_TRUE(registry.Resolve("t", Slice(id, 4096), 0, "q").ok());
  for (auto [offset, size] : {std::pair<uint64_t, uint64_t>{4090, 7}, {4097, 0}, {0, 4097},
                              {std::numeric_limits<uint64_t>::max(), 2},
                              {8, std::numeric_limits<uint64_t>::max() - 4}}) {
    absl::StatusOr<RegionBytes> out = registry.Resolve("t", Slice(id, offset), size, "out");
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << offset << " " << size;
  }
  EXPECT_EQ(registry.Resolve("t", Slice(id, 8), 8, "q", 64).status().code(),
            absl::StatusCode::kInvalidArgument);  // alignment
  munmap(mine, 4096);
}

TEST(RegionRegistryTest, TenantsAreIsolatedAndReleasesPinned) {
  RegionRegistry registry;
  Memfd memfd(4096);
  int released = 0;
  const uint64_t id =
      *registry.AttachHost("alice", getpid(), memfd.fd(), 4096, [&released] { ++released; });
  EXPECT_EQ(registry.Resolve("bob", Slice(id, 0), 8, "q").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry.Release("bob", id).code(), absl::StatusCode::kNotFound);

  absl::StatusOr<RegionBytes> pinned = registry.Resolve("alice", Slice(id, 0), 8, "q");
  ASSERT_TRUE(pinned.ok());
  EXPECT_TRUE(registry.Release("alice", id).ok());
  EXPECT_EQ(released, 1);
  EXPECT_EQ(registry.Resolve("alice", Slice(id, 0), 8, "q").status().code(),
            absl::StatusCode::kNotFound);
  pinned->data[0] = 42;  // still mapped: the pin holds it
  EXPECT_EQ(registry.Release("alice", id).code(), absl::StatusCode::kNotFound);
}

TEST(RegionRegistryTest, LimitsAndReleaseAll) {
  RegionRegistry registry(RegionLimits{2, 10000});
  Memfd memfd(8192);
  int released = 0;
  auto count = [&released] { ++released; };
  ASSERT_TRUE(registry.AttachHost("t", getpid(), memfd.fd(), 4096, count).ok());
  EXPECT_EQ(registry.AttachHost("t", getpid(), memfd.fd(), 8192).status().code(),
            absl::StatusCode::kResourceExhausted);  // bytes
  ASSERT_TRUE(registry.AttachHost("t", getpid(), memfd.fd(), 1000, count).ok());
  EXPECT_EQ(registry.AttachHost("t", getpid(), memfd.fd(), 10).status().code(),
            absl::StatusCode::kResourceExhausted);  // regions
  EXPECT_TRUE(registry.AttachHost("other", getpid(), memfd.fd(), 4096).ok());
  registry.ReleaseAll();
  EXPECT_EQ(released, 2);
  EXPECT_EQ(registry.num_regions(), 0);
}

TEST(RegionTensorsTest, RegionTensorsReadAsRequestBytes) {
  RegionRegistry registry;
  Memfd memfd(4096);
  const uint64_t id = *registry.AttachHost("t", getpid(), memfd.fd(), 4096);
  void* mine = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.fd(), 0);
  ASSERT_NE(mine, MAP_FAILED);
  for (int i = 0; i < 4096; ++i) static_cast<uint8_t*>(mine)[i] = uint8_t(i * 7);

  const std::string wire_bytes = "0123456789";
  wire::MessageBytes message = wire::MessageBytes::FromSlices({grpc::Slice(wire_bytes)});
  wire::TensorView inline_tensor{true, 1, {5}, wire::Span{0, 10}, {}};
  wire::TensorView q{true, 1, {2, 3}, {}, Slice(id, 128)};   // 12 bytes at 128
  wire::TensorView k{true, 3, {0, 4}, {}, Slice(id, 4096)};  // empty, at the end
  RegionAccess access{&registry, "t"};
  ASSERT_TRUE(ResolveRegionTensors(access, {{&inline_tensor, "v"}, {&q, "q"}, {&k, "k"}},
                                   &message)
                  .ok());
  EXPECT_EQ(inline_tensor.data.offset, 0u);
  ASSERT_EQ(q.data.size, 12u);
  uint8_t got[12];
  message.CopyTo(q.data, got);
  EXPECT_EQ(std::memcmp(got, static_cast<uint8_t*>(mine) + 128, 12), 0);
  // In place: the server's own mapping of the region, not a copy.
  EXPECT_EQ(message.Contiguous(q.data), registry.Resolve("t", Slice(id, 128), 12, "q")->data);
  EXPECT_EQ(k.data.size, 0u);

  wire::TensorView both{true, 1, {2}, wire::Span{0, 4}, Slice(id, 0)};
  EXPECT_EQ(ResolveRegionTensors(access, {{&both, "entries[0].q"}}, &message).code(),
            absl::StatusCode::kInvalidArgument);
  wire::TensorView outside{true, 3, {1025}, {}, Slice(id, 0)};
  absl::Status s = ResolveRegionTensors(access, {{&outside, "k"}}, &message);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("k.region: [0, 0 + 4100) lies outside"), std::string::npos) << s;
  EXPECT_EQ(ResolveRegionTensors(RegionAccess{}, {{&outside, "k"}}, &message).code(),
            absl::StatusCode::kFailedPrecondition);
  munmap(mine, 4096);
}

// The CPU kernels read and write region tensors in place, as elements: an offset inside an
// element is refused (the fuzzer found an LSE written at an odd address), for inputs and outputs.
TEST(RegionTensorsTest, OffsetsMustBeMultiplesOfTheElementSize) {
  RegionRegistry registry;
  Memfd memfd(4096);
  const uint64_t id = *registry.AttachHost("t", getpid(), memfd.fd(), 4096);
  RegionAccess access{&registry, "t"};
  wire::MessageBytes message = wire::MessageBytes::FromSlices({grpc::Slice(std::string("x"))});

  wire::TensorView half_odd{true, 1, {2, 3}, {}, Slice(id, 129)};
  absl::Status s = ResolveRegionTensors(access, {{&half_odd, "entries[0].q"}}, &message);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("entries[0].q.region.offset (129) must be a multiple of 2"),
            std::string::npos)
      << s;
  wire::TensorView float_at_2{true, 3, {4}, {}, Slice(id, 2)};
  EXPECT_EQ(ResolveRegionTensors(access, {{&float_at_2, "k"}}, &message).code(),
            absl::StatusCode::kInvalidArgument);
  wire::TensorView half_at_2{true, 2, {4}, {}, Slice(id, 2)};
  EXPECT_TRUE(ResolveRegionTensors(access, {{&half_at_2, "k"}}, &message).ok());

  auto lse = ResolveOutputSlice(access, Slice(id, 6), 16, sizeof(float), "lse");
  EXPECT_EQ(lse.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(lse.status().message().find("lse.offset (6) must be a multiple of 4"),
            std::string::npos)
      << lse.status();
  auto out = ResolveOutputSlice(access, Slice(id, 6), 16, 2, "out");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->has_value());
}

// The stated size of a CUDA region against the allocation the driver reports (the registry asks
// cuMemGetAddressRange on attach; tests/integration/cuda_regions_test.cc does it on a GPU).
TEST(CheckCudaRegionSizeTest, FitsFromTheHandlesBaseToTheAllocationsEnd) {
  alignas(64) static uint8_t allocation[4096];
  EXPECT_TRUE(CheckCudaRegionSize(4096, allocation, 4096, allocation).ok());
  EXPECT_TRUE(CheckCudaRegionSize(1, allocation, 4096, allocation).ok());
  EXPECT_TRUE(CheckCudaRegionSize(1024, allocation, 4096, allocation + 3072).ok());
}

TEST(CheckCudaRegionSizeTest, ALyingSizeIsRefusedNamingBothSizes) {
  alignas(64) static uint8_t allocation[4096];
  absl::Status s = CheckCudaRegionSize(4097, allocation, 4096, allocation);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("size (4097 bytes)"), std::string::npos) << s;
  EXPECT_NE(s.message().find("4096"), std::string::npos) << s;
  // Handle base inside the allocation: what lies after it counts, not the whole allocation.
  s = CheckCudaRegionSize(2048, allocation, 4096, allocation + 3072);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("1024 bytes from the handle's base"), std::string::npos) << s;
  EXPECT_EQ(CheckCudaRegionSize(std::numeric_limits<uint64_t>::max(), allocation, 4096, allocation)
                .code(),
            absl::StatusCode::kInvalidArgument);
  // A pointer outside the reported allocation is the driver contradicting itself.
  EXPECT_EQ(CheckCudaRegionSize(1, allocation + 1024, 1024, allocation).code(),
            absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace flashkv::server
