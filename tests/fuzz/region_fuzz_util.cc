#include "region_fuzz_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_check.h"

namespace flashkv::fuzz {
namespace {

// A sealed memfd of this process, attached as clients attach theirs. Each 32-bit word holds two
// fp16 halves near 1 (read as fp32 or bf16 they are finite too).
uint64_t AttachRegion(server::RegionRegistry* registry, const char* tenant) {
  const int fd = memfd_create("flashkv-fuzz", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  FUZZ_CHECK(fd >= 0) << "memfd_create";
  FUZZ_CHECK(ftruncate(fd, kRegionBytes) == 0) << "ftruncate";
  FUZZ_CHECK(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0) << "F_ADD_SEALS";
  void* map = mmap(nullptr, kRegionBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  FUZZ_CHECK(map != MAP_FAILED) << "mmap";
  auto* words = static_cast<uint32_t*>(map);
  for (uint64_t i = 0; i < kRegionBytes / 4; ++i) words[i] = 0x3c003c00u + (i % 64) * 0x00010001u;
  munmap(map, kRegionBytes);
  absl::StatusOr<uint64_t> id = registry->AttachHost(tenant, getpid(), fd, kRegionBytes);
  FUZZ_CHECK(id.ok()) << id.status();
  close(fd);  // the registry holds its own mapping
  return *id;
}

}  // namespace

FuzzRegions& SharedRegions() {
  static FuzzRegions* regions = [] {
    auto* r = new FuzzRegions;
    r->own = AttachRegion(&r->registry, kTenant);
    r->other = AttachRegion(&r->registry, kOtherTenant);
    return r;
  }();
  return *regions;
}

bool PatchSlice(v1::RegionSlice* slice, const FuzzRegions& regions) {
  const uint64_t pick = slice->region_id() % 3;
  if (pick == 0) return false;
  slice->set_region_id(pick == 1 ? regions.own : regions.other);
  slice->set_offset(slice->offset() % (2 * kRegionBytes));
  return pick == 2;
}

bool IsClientError(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument ||
         s.code() == absl::StatusCode::kNotFound ||
         s.code() == absl::StatusCode::kFailedPrecondition ||
         s.code() == absl::StatusCode::kUnimplemented;
}

}  // namespace flashkv::fuzz
