#include "flashkv/server/region_registry.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "flashkv/cuda_backend.h"

namespace flashkv::server {
namespace {

class HostRegion : public MappedRegion {
 public:
  HostRegion(uint8_t* data, uint64_t size) : MappedRegion(data, size, -1) {}
  ~HostRegion() override { munmap(data(), size()); }
};

class CudaRegion : public MappedRegion {
 public:
  CudaRegion(uint8_t* data, uint64_t size, int device) : MappedRegion(data, size, device) {}
  ~CudaRegion() override {
    if (cuda::SetDevice(device()).ok()) (void)cuda::IpcCloseMemHandle(data());
  }
};

// Closes a descriptor on every path out of AttachHost.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) close(fd);
  }
};

uint64_t RandomId() {
  // Ids are capabilities within a tenant: unguessable, never 0 (proto3's "unset").
  static thread_local std::mt19937_64 rng(std::random_device{}());
  uint64_t id = 0;
  while (id == 0) id = rng();
  return id;
}

}  // namespace

RegionRegistry::~RegionRegistry() {
  // A region stream that ends while the server stops calls Forget on a gRPC thread; gRPC's Wait
  // orders that call before this destructor, but through gRPC's own synchronisation, which TSan
  // does not see (Debian's gRPC is not instrumented). Taking the lock once shows TSan the order
  // that already holds, so freeing the lock and the map does not read as a race with that call.
  MutexLock lock(&mu_);
}

absl::StatusOr<uint64_t> RegionRegistry::AttachHost(absl::string_view tenant, int pid, int fd,
                                                    uint64_t size,
                                                    std::function<void()> on_release) {
  if (size == 0) return absl::InvalidArgumentError("size must be > 0");
  if (pid <= 0 || fd < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("host.pid (", pid, ") must be > 0 and host.fd (", fd, ") >= 0"));
  }
  const std::string path = absl::StrCat("/proc/", pid, "/fd/", fd);
  FdCloser file{open(path.c_str(), O_RDWR | O_CLOEXEC)};
  if (file.fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno),
                                            " (client and server must share a host, a PID "
                                            "namespace and a user)"));
  }
  const int seals = fcntl(file.fd, F_GET_SEALS);
  if (seals < 0 || (seals & F_SEAL_SHRINK) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(path,
                     " must be a memfd sealed with F_SEAL_SHRINK (memfd_create with "
                     "MFD_ALLOW_SEALING, then F_ADD_SEALS), so it cannot shrink under the "
                     "server's mapping"));
  }
  struct stat st {};
  if (fstat(file.fd, &st) != 0 || uint64_t(st.st_size) < size) {
    return absl::FailedPreconditionError(
        absl::StrCat("size (", size, ") exceeds the memfd's ", uint64_t(st.st_size), " bytes"));
  }
  {
    MutexLock lock(&mu_);
    if (auto s = CheckLimits(tenant, size); !s.ok()) return s;
  }
  void* data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, file.fd, 0);
  if (data == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("mmap of ", size, " bytes failed: ", std::strerror(errno)));
  }
  return Insert(tenant, std::make_shared<HostRegion>(static_cast<uint8_t*>(data), size),
                std::move(on_release));
}

absl::StatusOr<uint64_t> RegionRegistry::AttachCuda(absl::string_view tenant,
                                                    absl::string_view handle, int device,
                                                    uint64_t size,
                                                    std::function<void()> on_release) {
  if (size == 0) return absl::InvalidArgumentError("size must be > 0");
  if (handle.size() != cuda::kIpcHandleBytes) {
    return absl::InvalidArgumentError(absl::StrCat("cuda.handle has ", handle.size(),
                                                   " bytes, must have ", cuda::kIpcHandleBytes));
  }
  if (device < 0 || device >= cuda::DeviceCount()) {
    return absl::InvalidArgumentError(absl::StrCat("cuda.device (", device, ") must be < ",
                                                   cuda::DeviceCount(), " (visible devices)"));
  }
  {
    MutexLock lock(&mu_);
    if (auto s = CheckLimits(tenant, size); !s.ok()) return s;
  }
  cuda::IpcMemHandle raw;
  std::memcpy(raw.bytes, handle.data(), handle.size());
  void* data = nullptr;
  KernelStatus status = cuda::SetDevice(device);
  if (status.ok()) status = cuda::IpcOpenMemHandle(raw, &data);
  if (!status.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open the CUDA IPC handle on device ", device, ": ", status.message()));
  }
  // Owned from here: closed on every path out.
  auto region = std::make_shared<CudaRegion>(static_cast<uint8_t*>(data), size, device);
  // The client states the size; the server's kernels then read and write up to it. A size past
  // the exported allocation would make them fault in the server's own CUDA context, a sticky
  // error that ends the service for every tenant: the driver's view of the allocation decides.
  void* base = nullptr;
  size_t allocation = 0;
  status = cuda::MemGetAddressRange(data, &base, &allocation);
  if (!status.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot verify the CUDA IPC region's size on device ", device, ": ", status.message()));
  }
  if (auto s = CheckCudaRegionSize(size, static_cast<uint8_t*>(base), allocation,
                                   static_cast<uint8_t*>(data));
      !s.ok()) {
    return s;
  }
  return Insert(tenant, std::move(region), std::move(on_release));
}

absl::Status CheckCudaRegionSize(uint64_t size, const uint8_t* allocation_base,
                                 uint64_t allocation_bytes, const uint8_t* data) {
  const uint64_t allocation_end = reinterpret_cast<uintptr_t>(allocation_base) + allocation_bytes;
  const uint64_t start = reinterpret_cast<uintptr_t>(data);
  if (start < reinterpret_cast<uintptr_t>(allocation_base) || start > allocation_end) {
    return absl::InternalError(absl::StrCat("the opened CUDA IPC handle lies outside the ",
                                            allocation_bytes,
                                            "-byte allocation the driver reports for it"));
  }
  const uint64_t available = allocation_end - start;
  if (size > available) {
    return absl::InvalidArgumentError(absl::StrCat(
        "size (", size, " bytes) exceeds the exported CUDA allocation, which has ", available,
        " bytes from the handle's base (allocation of ", allocation_bytes, " bytes)"));
  }
  return absl::OkStatus();
}

absl::Status RegionRegistry::CheckLimits(absl::string_view tenant, uint64_t size) const {
  int count = 0;
  uint64_t bytes = 0;
  for (const auto& [id, entry] : regions_) {
    if (entry.tenant != tenant) continue;
    ++count;
    bytes += entry.region->size();
  }
  if (count + 1 > limits_.max_regions_per_tenant || bytes + size > limits_.max_bytes_per_tenant) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the tenant holds ", count, " regions of ", bytes, " bytes; one more of ",
                     size, " would pass the limits (", limits_.max_regions_per_tenant, " regions, ",
                     limits_.max_bytes_per_tenant, " bytes)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> RegionRegistry::Insert(absl::string_view tenant,
                                                std::shared_ptr<MappedRegion> region,
                                                std::function<void()> on_release) {
  MutexLock lock(&mu_);
  uint64_t id = RandomId();
  while (regions_.contains(id)) id = RandomId();
  regions_[id] = Entry{std::string(tenant), std::move(region), std::move(on_release)};
  return id;
}

absl::Status RegionRegistry::Release(absl::string_view tenant, uint64_t region_id) {
  std::function<void()> on_release;
  {
    MutexLock lock(&mu_);
    auto it = regions_.find(region_id);
    if (it == regions_.end() || it->second.tenant != tenant) {
      return absl::NotFoundError(absl::StrCat("region ", region_id, " not found"));
    }
    on_release = std::move(it->second.on_release);
    regions_.erase(it);
  }
  if (on_release) on_release();
  return absl::OkStatus();
}

void RegionRegistry::Forget(uint64_t region_id) {
  MutexLock lock(&mu_);
  regions_.erase(region_id);
}

void RegionRegistry::ReleaseAll() {
  std::vector<std::function<void()>> callbacks;
  {
    MutexLock lock(&mu_);
    for (auto& [id, entry] : regions_) {
      if (entry.on_release) callbacks.push_back(std::move(entry.on_release));
    }
    regions_.clear();
  }
  for (auto& callback : callbacks) callback();
}

absl::StatusOr<RegionBytes> RegionRegistry::Resolve(absl::string_view tenant,
                                                    const wire::RegionSliceView& slice,
                                                    uint64_t bytes, absl::string_view field,
                                                    uint64_t alignment) const {
  std::shared_ptr<MappedRegion> region;
  {
    MutexLock lock(&mu_);
    auto it = regions_.find(slice.region_id);
    if (it == regions_.end() || it->second.tenant != tenant) {
      return absl::NotFoundError(
          absl::StrCat(field, ".region_id: region ", slice.region_id, " not found"));
    }
    region = it->second.region;
  }
  // offset + bytes <= size, written so that it cannot overflow.
  if (slice.offset > region->size() || bytes > region->size() - slice.offset) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": [", slice.offset, ", ", slice.offset, " + ", bytes,
                     ") lies outside region ", slice.region_id, " of ", region->size(), " bytes"));
  }
  if (alignment > 1 && slice.offset % alignment != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".offset (", slice.offset, ") must be a multiple of ", alignment));
  }
  return RegionBytes{region, region->data() + slice.offset, bytes};
}

int RegionRegistry::num_regions() const {
  MutexLock lock(&mu_);
  return static_cast<int>(regions_.size());
}

}  // namespace flashkv::server
