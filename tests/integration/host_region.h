#pragma once

// A host (memfd) region of the test process registered with a test server, for the data-plane
// tests.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>

#include "flashkv/v1/region.grpc.pb.h"
#include "testing/test_server.h"

namespace flashkv::testing {

// A sealed memfd of this process, mapped, and registered with the server for as long as the
// AttachRegion call lasts.
class HostRegion {
 public:
  HostRegion(TestServer& server, size_t size) : size_(size) {
    fd_ = memfd_create("step-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    EXPECT_EQ(ftruncate(fd_, off_t(size)), 0);
    EXPECT_EQ(fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
    data_ = static_cast<uint8_t*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0));
    stub_ = flashkv::v1::RegionService::NewStub(server.channel());
    flashkv::v1::AttachRegionRequest request;
    request.set_size(size);
    request.mutable_host()->set_pid(getpid());
    request.mutable_host()->set_fd(fd_);
    reader_ = stub_->AttachRegion(&context_, request);
    flashkv::v1::AttachRegionResponse response;
    attached_ = reader_->Read(&response);
    id_ = response.region_id();
  }
  ~HostRegion() {
    context_.TryCancel();
    flashkv::v1::AttachRegionResponse ignored;
    while (reader_->Read(&ignored)) {
    }
    (void)reader_->Finish();
    munmap(data_, size_);
    close(fd_);
  }
  bool attached() const { return attached_; }
  uint64_t id() const { return id_; }
  uint8_t* data() const { return data_; }

  // Moves `tensor`'s bytes to `offset` in the region and makes it name them there.
  void Place(flashkv::v1::Tensor* tensor, size_t offset) {
    std::memcpy(data_ + offset, tensor->data().data(), tensor->data().size());
    tensor->clear_data();
    tensor->mutable_region()->set_region_id(id_);
    tensor->mutable_region()->set_offset(offset);
  }

 private:
  size_t size_;
  int fd_ = -1;
  uint8_t* data_ = nullptr;
  std::unique_ptr<flashkv::v1::RegionService::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<flashkv::v1::AttachRegionResponse>> reader_;
  bool attached_ = false;
  uint64_t id_ = 0;
};

}  // namespace flashkv::testing
