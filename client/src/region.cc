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

// The AttachRegion stream, on a completion queue of its own that is polled only while the region
// is attached and released. (A callback reactor would keep a read outstanding, and gRPC's
// callback threads would then poll the channel's connection for good: they take the responses of
// the client's other calls off the socket and hand them over, a thread switch per response that
// a runner on the data plane would pay on every step.) The server writes the region id once and
// keeps the stream open; nothing more is read until the call is ended.
class SharedRegion::Attachment {
 public:
  grpc::ClientContext* context() { return &context_; }

  // Starts the call and waits at most `wait` for the region id.
  absl::StatusOr<uint64_t> Start(v1::RegionService::Stub* stub,
                                 const v1::AttachRegionRequest& request, absl::Duration wait) {
    call_ = stub->PrepareAsyncAttachRegion(&context_, request, &cq_);
    call_->StartCall(Tag(kStart));
    call_->Read(&response_, Tag(kRead));
    bool read_ok = false, timed_out = false;
    absl::Time deadline = absl::Now() + wait;
    for (int pending = 2; pending > 0;) {
      void* tag;
      bool ok;
      const auto next = cq_.AsyncNext(&tag, &ok, absl::ToChronoTime(deadline));
      if (next == grpc::CompletionQueue::TIMEOUT) {
        context_.TryCancel();  // the remaining events come quickly now
        timed_out = true;
        deadline = absl::InfiniteFuture();
        continue;
      }
      if (next != grpc::CompletionQueue::GOT_EVENT) break;
      --pending;
      if (tag == Tag(kRead)) read_ok = ok;
    }
    if (read_ok && !timed_out) return response_.region_id();
    const grpc::Status status = End();
    if (timed_out) {
      return absl::DeadlineExceededError(
          absl::StrCat("AttachRegion: no answer within ", absl::FormatDuration(wait)));
    }
    if (!status.ok()) return FromGrpcStatus(status, "AttachRegion");
    return absl::InternalError("AttachRegion ended without a region id");
  }

  // Cancels the call (a no-op once the server ended it) and returns its final status. Idempotent.
  grpc::Status End() {
    if (ended_ || call_ == nullptr) return status_;
    ended_ = true;
    context_.TryCancel();
    call_->Finish(&status_, Tag(kFinish));
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok) && tag != Tag(kFinish)) {
    }
    return status_;
  }

  ~Attachment() {
    End();
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }

 private:
  enum Op { kStart = 1, kRead, kFinish };
  static void* Tag(Op op) { return reinterpret_cast<void*>(static_cast<intptr_t>(op)); }

  grpc::ClientContext context_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::ClientAsyncReader<v1::AttachRegionResponse>> call_;
  v1::AttachRegionResponse response_;
  bool ended_ = false;
  grpc::Status status_;
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
  auto attachment = std::make_unique<Attachment>();
  // The stream lives as long as the region: no deadline on it (the wait below is bounded).
  if (absl::Status s = prepare(attachment->context()); !s.ok()) return s;
  attachment->context()->set_deadline(std::chrono::system_clock::time_point::max());
  absl::StatusOr<uint64_t> id = attachment->Start(stub, request, wait);
  if (!id.ok()) return id.status();  // the call is over: nothing to release
  region->attachment_ = std::move(attachment);
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
  absl::MutexLock lock(&release_mu_);
  if (released_) return absl::FailedPreconditionError(absl::StrCat("region ", id_, " was released"));
  return absl::OkStatus();
}

absl::Status SharedRegion::Release() {
  absl::MutexLock lock(&release_mu_);
  if (released_) return release_status_;
  released_ = true;
  if (attachment_ != nullptr) {
    // Unregister first, so that the region is gone from the server when this returns; ending
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
    attachment_->End();
  }
  memory_.reset();  // unmapped (or freed) only once the server has let go
  data_ = nullptr;
  return release_status_;
}

}  // namespace flashkv
