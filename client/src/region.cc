#include "flashkv/client/region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "flashkv/client/status.h"
#include "flashkv/cuda_backend.h"

namespace flashkv {
namespace {

absl::Status ErrnoError(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// KernelStatus codes are the canonical ones.
absl::Status FromKernel(const KernelStatus& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.code()), absl::StrCat(what, ": ", s.message()));
}

// Bytes of `shape` x `dtype`, or INVALID_ARGUMENT naming `field` for a negative or overflowing
// shape.
absl::StatusOr<uint64_t> ByteCount(DType dtype, absl::Span<const int64_t> shape,
                                   absl::string_view field) {
  uint64_t bytes = DTypeSize(dtype);
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": shape ", ShapeString(shape), " has a negative dimension"));
    }
    if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() / 2 / uint64_t(d)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": shape ", ShapeString(shape), " is too large"));
    }
    bytes *= uint64_t(d);
  }
  return bytes;
}

}  // namespace

// The region's memory: a sealed memfd mapped here, or a cudaMalloc allocation.
struct SharedRegion::Memory {
  ~Memory() {
    if (host != nullptr) munmap(host, size);
    if (fd >= 0) close(fd);
    if (device_ptr != nullptr && cuda::SetDevice(device).ok()) (void)cuda::Free(device_ptr);
  }
  uint64_t size = 0;
  int fd = -1;
  void* host = nullptr;
  int device = -1;
  void* device_ptr = nullptr;

  std::byte* data() const {
    return static_cast<std::byte*>(device_ptr != nullptr ? device_ptr : host);
  }

  static absl::StatusOr<std::unique_ptr<Memory>> Host(uint64_t size) {
    auto memory = std::make_unique<Memory>();
    memory->size = size;
    memory->fd = memfd_create("flashkv-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (memory->fd < 0) return ErrnoError("memfd_create");
    if (ftruncate(memory->fd, static_cast<off_t>(size)) != 0) {
      return ErrnoError(absl::StrCat("ftruncate to ", size, " bytes"));
    }
    // Sealed at its size for good: the server maps it, and memory that shrank under a mapping
    // would fault on the server's next access.
    if (fcntl(memory->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
      return ErrnoError("sealing the memfd");
    }
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, memory->fd, 0);
    if (p == MAP_FAILED) return ErrnoError(absl::StrCat("mmap of ", size, " bytes"));
    memory->host = p;
    return memory;
  }

  static absl::StatusOr<std::unique_ptr<Memory>> Device(uint64_t size, int device,
                                                        cuda::IpcMemHandle* handle) {
    auto memory = std::make_unique<Memory>();
    memory->size = size;
    memory->device = device;
    if (auto s = FromKernel(cuda::SetDevice(device), absl::StrCat("device ", device)); !s.ok()) {
      return s;
    }
    if (auto s = FromKernel(cuda::Malloc(&memory->device_ptr, size),
                            absl::StrCat("cudaMalloc of ", size, " bytes"));
        !s.ok()) {
      memory->device_ptr = nullptr;
      return s;
    }
    if (auto s = FromKernel(cuda::IpcGetMemHandle(memory->device_ptr, handle), "IPC handle");
        !s.ok()) {
      return s;
    }
    return memory;
  }
};

// The AttachRegion stream: the first response carries the region id, and the stream then stays
// open (a read outstanding) until the server ends it or the client cancels it.
class SharedRegion::Reactor : public grpc::ClientReadReactor<v1::AttachRegionResponse> {
 public:
  explicit Reactor(v1::AttachRegionRequest request) : request_(std::move(request)) {}
  grpc::ClientContext* context() { return &context_; }
  const v1::AttachRegionRequest* request() const { return &request_; }

  void Start() {
    StartRead(&response_);
    StartCall();
  }

  // The region id, once the first response came; the stream's status if it ended first.
  absl::StatusOr<uint64_t> AwaitAttached(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto ready = +[](Reactor* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(r->mu_) {
      return r->attached_ || r->done_;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(ready, this), timeout)) {
      context_.TryCancel();
      return absl::DeadlineExceededError(absl::StrCat("AttachRegion: no answer within ",
                                                      absl::FormatDuration(timeout)));
    }
    if (attached_) return id_;
    if (!status_.ok()) return FromGrpcStatus(status_, "AttachRegion");
    return absl::InternalError("AttachRegion ended without a region id");
  }

  // OK while the stream is open; otherwise its final status.
  std::optional<grpc::Status> Ended() {
    absl::MutexLock lock(&mu_);
    if (!done_) return std::nullopt;
    return status_;
  }

  void AwaitDone() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended; OnDone follows
    {
      absl::MutexLock lock(&mu_);
      if (!attached_) {
        attached_ = true;
        id_ = response_.region_id();
      }
    }
    StartRead(&response_);  // the server writes once; this read ends with the stream
  }

  void OnDone(const grpc::Status& status) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
    done_ = true;
  }

 private:
  grpc::ClientContext context_;
  const v1::AttachRegionRequest request_;
  v1::AttachRegionResponse response_;
  absl::Mutex mu_;
  bool attached_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t id_ ABSL_GUARDED_BY(mu_) = 0;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

SharedRegion::SharedRegion(v1::RegionService::Stub* stub, Prepare prepare,
                           std::unique_ptr<Memory> memory)
    : stub_(stub), prepare_(std::move(prepare)), memory_(std::move(memory)) {
  data_ = memory_->data();
  size_ = memory_->size;
  device_ = memory_->device_ptr != nullptr ? memory_->device : -1;
}

absl::StatusOr<std::unique_ptr<SharedRegion>> SharedRegion::AttachHost(
    v1::RegionService::Stub* stub, Prepare prepare, uint64_t size, absl::Duration wait) {
  if (size == 0) return absl::InvalidArgumentError("region size must be > 0");
  absl::StatusOr<std::unique_ptr<Memory>> memory = Memory::Host(size);
  if (!memory.ok()) return memory.status();
  v1::AttachRegionRequest request;
  request.set_size(size);
  request.mutable_host()->set_pid(getpid());
  request.mutable_host()->set_fd((*memory)->fd);
  return Attach(stub, std::move(prepare), *std::move(memory), std::move(request), wait);
}

absl::StatusOr<std::unique_ptr<SharedRegion>> SharedRegion::AttachDevice(
    v1::RegionService::Stub* stub, Prepare prepare, uint64_t size, int device,
    absl::Duration wait) {
  if (size == 0) return absl::InvalidArgumentError("region size must be > 0");
  cuda::IpcMemHandle handle;
  absl::StatusOr<std::unique_ptr<Memory>> memory = Memory::Device(size, device, &handle);
  if (!memory.ok()) return memory.status();
  v1::AttachRegionRequest request;
  request.set_size(size);
  request.mutable_cuda()->set_handle(reinterpret_cast<const char*>(handle.bytes),
                                     sizeof handle.bytes);
  request.mutable_cuda()->set_device(device);
  return Attach(stub, std::move(prepare), *std::move(memory), std::move(request), wait);
}

absl::StatusOr<std::unique_ptr<SharedRegion>> SharedRegion::Attach(
    v1::RegionService::Stub* stub, Prepare prepare, std::unique_ptr<Memory> memory,
    v1::AttachRegionRequest request, absl::Duration wait) {
  std::unique_ptr<SharedRegion> region(new SharedRegion(stub, prepare, std::move(memory)));
  auto reactor = std::make_unique<Reactor>(std::move(request));
  // The stream lives as long as the region: no deadline on it (the wait below is bounded).
  if (absl::Status s = prepare(reactor->context()); !s.ok()) return s;
  reactor->context()->set_deadline(std::chrono::system_clock::time_point::max());
  stub->async()->AttachRegion(reactor->context(), reactor->request(), reactor.get());
  reactor->Start();
  region->reactor_ = std::move(reactor);
  absl::StatusOr<uint64_t> id = region->reactor_->AwaitAttached(wait);
  if (!id.ok()) {
    region->reactor_->AwaitDone();  // a cancelled or failed stream: nothing to release
    return id.status();
  }
  region->id_ = *id;
  return region;
}

SharedRegion::~SharedRegion() { (void)Release(); }

absl::StatusOr<RegionTensor> SharedRegion::Allocate(DType dtype, Shape shape) {
  absl::StatusOr<uint64_t> bytes = ByteCount(dtype, shape, "Allocate");
  if (!bytes.ok()) return bytes.status();
  const uint64_t offset = (next_ + kRegionAlignment - 1) / kRegionAlignment * kRegionAlignment;
  if (offset > size_ || *bytes > size_ - offset) {
    return absl::ResourceExhaustedError(
        absl::StrCat("region ", id_, " of ", size_, " bytes has ", offset > size_ ? 0 : size_ - offset,
                     " bytes left; ", DTypeName(dtype), " ", ShapeString(shape), " needs ",
                     *bytes));
  }
  next_ = offset + *bytes;
  return RegionTensor(dtype, std::move(shape), id_, offset, data_ + offset, device_ >= 0);
}

absl::StatusOr<RegionTensor> SharedRegion::At(uint64_t offset, DType dtype, Shape shape,
                                              absl::string_view field) const {
  absl::StatusOr<uint64_t> bytes = ByteCount(dtype, shape, field);
  if (!bytes.ok()) return bytes.status();
  if (offset > size_ || *bytes > size_ - offset) {
    return absl::InvalidArgumentError(absl::StrCat(field, " (", offset, ") + ", *bytes,
                                                   " bytes of ", DTypeName(dtype), " ",
                                                   ShapeString(shape), " exceeds region ", id_,
                                                   " of ", size_, " bytes"));
  }
  return RegionTensor(dtype, std::move(shape), id_, offset, data_ + offset, device_ >= 0);
}

absl::Status SharedRegion::status() const {
  std::optional<grpc::Status> ended = reactor_ != nullptr ? reactor_->Ended() : std::nullopt;
  if (!ended.has_value()) return absl::OkStatus();
  if (!ended->ok()) return FromGrpcStatus(*ended, "AttachRegion");
  return absl::FailedPreconditionError(absl::StrCat("region ", id_, " was released"));
}

absl::Status SharedRegion::Release() {
  absl::MutexLock lock(&release_mu_);
  if (released_) return release_status_;
  released_ = true;
  if (reactor_ != nullptr && !reactor_->Ended().has_value()) {
    // Unregister first, so that the region is gone from the server when this returns; cancelling
    // the stream alone would release it too, but asynchronously.
    grpc::ClientContext context;
    absl::Status s = prepare_(&context);
    if (s.ok()) {
      v1::ReleaseRegionRequest request;
      request.set_region_id(id_);
      v1::ReleaseRegionResponse response;
      s = FromGrpcStatus(stub_->ReleaseRegion(&context, request, &response), "ReleaseRegion");
    }
    release_status_ = s;
    reactor_->context()->TryCancel();
  }
  if (reactor_ != nullptr) reactor_->AwaitDone();
  memory_.reset();  // unmapped (or freed) only once the server has let go
  data_ = nullptr;
  return release_status_;
}

}  // namespace flashkv
