// The shared-memory data plane on GPUs: Step and Attention with q, k, v and the outputs in a CUDA
// IPC region that another process exported (cuda_region_peer: CUDA IPC cannot open a handle in
// the exporting process), checked against the float64 reference after poisoning the outputs;
// a region that claims more bytes than its allocation, slices out of bounds, a region on the
// wrong device and CUDA regions on the CPU backend are refused. Label gpu: skips without a CUDA
// device (the checks themselves are unit-tested on the CPU, tests/server/region_tensors_test.cc).

#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "flashkv/cuda_backend.h"
#include "flashkv/v1/region.grpc.pb.h"
#include "pipe_io.h"
#include "testing/conversation.h"
#include "testing/reference.h"
#include "testing/test_server.h"

extern char** environ;

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

// cuda_region_peer, spawned with pipes to its stdin and stdout.
class CudaPeer {
 public:
  // Null (with a test failure) when the peer cannot start.
  static std::unique_ptr<CudaPeer> Start(int device, uint64_t bytes) {
    auto peer = std::unique_ptr<CudaPeer>(new CudaPeer());
    int to_peer[2], from_peer[2];
    if (pipe(to_peer) != 0 || pipe(from_peer) != 0) {
      ADD_FAILURE() << "pipe: " << std::strerror(errno);
      return nullptr;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, to_peer[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, from_peer[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, to_peer[1]);
    posix_spawn_file_actions_addclose(&actions, from_peer[0]);
    const std::string binary = PeerBinary();
    const std::string device_arg = std::to_string(device), bytes_arg = std::to_string(bytes);
    char* argv[] = {const_cast<char*>(binary.c_str()), const_cast<char*>(device_arg.c_str()),
                    const_cast<char*>(bytes_arg.c_str()), nullptr};
    const int spawned = posix_spawn(&peer->pid_, binary.c_str(), &actions, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(to_peer[0]);
    close(from_peer[1]);
    peer->in_ = to_peer[1];
    peer->out_ = from_peer[0];
    if (spawned != 0) {
      ADD_FAILURE() << "posix_spawn " << binary << ": " << std::strerror(spawned);
      peer->pid_ = -1;
      return nullptr;
    }
    peer->handle_.resize(cuda::kIpcHandleBytes);
    if (!peer->ReadAll(peer->handle_.data(), peer->handle_.size())) {
      ADD_FAILURE() << "cuda_region_peer exported no handle (see its stderr)";
      return nullptr;
    }
    return peer;
  }

  ~CudaPeer() {
    if (in_ >= 0) close(in_);  // the peer ends on EOF
    if (out_ >= 0) close(out_);
    if (pid_ > 0) {
      int status = 0;
      waitpid(pid_, &status, 0);
    }
  }

  const std::string& handle() const { return handle_; }

  void Write(uint64_t offset, const std::string& bytes) {
    Request('W', offset, bytes.size());
    ASSERT_TRUE(WriteAll(bytes.data(), bytes.size()));
    ExpectAck();
  }
  std::string Read(uint64_t offset, uint64_t length) {
    Request('R', offset, length);
    std::string bytes(length, '\0');
    EXPECT_TRUE(ReadAll(bytes.data(), length)) << "peer read of " << length << " bytes";
    return bytes;
  }
  void Poison(uint64_t offset, uint64_t length) {
    Request('P', offset, length);
    ExpectAck();
  }

 private:
  CudaPeer() = default;

  // Beside this test binary when it is there (a bundle carried to a GPU machine), else where the
  // build put it.
  static std::string PeerBinary() {
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
      std::string beside(self, static_cast<size_t>(n));
      beside = beside.substr(0, beside.rfind('/') + 1) + "cuda_region_peer";
      if (access(beside.c_str(), X_OK) == 0) return beside;
    }
    return FLASHKV_CUDA_REGION_PEER;
  }

  void Request(char op, uint64_t offset, uint64_t length) {
    const uint64_t header[2] = {offset, length};
    EXPECT_TRUE(WriteAll(&op, 1) && WriteAll(header, sizeof header)) << "peer request " << op;
  }
  void ExpectAck() {
    char ack = 0;
    EXPECT_TRUE(ReadAll(&ack, 1) && ack == 'k') << "peer did not acknowledge";
  }
  bool WriteAll(const void* data, size_t bytes) { return testing::WriteAll(in_, data, bytes); }
  bool ReadAll(void* data, size_t bytes) { return testing::ReadAll(out_, data, bytes); }

  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string handle_;
};

// A peer's allocation registered with the server (AttachRegion) for as long as this lives.
class CudaRegion {
 public:
  CudaRegion(TestServer& server, const std::string& handle, int device, uint64_t size) {
    stub_ = v1::RegionService::NewStub(server.channel());
    v1::AttachRegionRequest request;
    request.set_size(size);
    request.mutable_cuda()->set_handle(handle);
    request.mutable_cuda()->set_device(device);
    reader_ = stub_->AttachRegion(&context_, request);
    v1::AttachRegionResponse response;
    attached_ = reader_->Read(&response);
    id_ = response.region_id();
    if (!attached_) {
      status_ = reader_->Finish();
      finished_ = true;
    }
  }
  ~CudaRegion() {
    if (finished_) return;
    context_.TryCancel();
    v1::AttachRegionResponse ignored;
    while (reader_->Read(&ignored)) {
    }
    (void)reader_->Finish();
  }
  bool attached() const { return attached_; }
  // Why the attachment failed.
  const grpc::Status& status() const { return status_; }
  uint64_t id() const { return id_; }

 private:
  std::unique_ptr<v1::RegionService::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::AttachRegionResponse>> reader_;
  bool attached_ = false;
  bool finished_ = false;
  grpc::Status status_;
  uint64_t id_ = 0;
};

constexpr uint64_t kRegionBytes = 4 << 20;

// The small test model on CUDA device 0, fp16 with head dim 128 (compiled into every CUDA build
// the presets make).
server::ServerConfig CudaConfig() {
  server::ServerConfig c = SmallModelConfig();
  c.backend = server::BackendChoice::kCuda;
  c.cuda_devices = {0};
  c.model.dtype = DType::kFloat16;
  c.model.head_dim = 128;
  c.kv_cache_bytes = 64 << 20;
  return c;
}

class CudaRegionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    if (!cuda::IsCompiled(DType::kFloat16, 128)) GTEST_SKIP() << "fp16 head dim 128 not built";
  }

  // Starts a server on `config`, the peer on `device` with `alloc` bytes, and registers
  // `region_size` bytes of it (on device `region_device` of the server's numbering).
  void StartAll(const server::ServerConfig& config, int device = 0, uint64_t alloc = kRegionBytes) {
    absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    peer_ = CudaPeer::Start(device, alloc);
    ASSERT_NE(peer_, nullptr);
  }
  void Attach(int device = 0, uint64_t size = kRegionBytes) {
    region_ = std::make_unique<CudaRegion>(*server_, peer_->handle(), device, size);
    ASSERT_TRUE(region_->attached()) << region_->status().error_message();
  }

  // Moves `tensor`'s bytes to `offset` in the region and makes it name them there.
  void Place(v1::Tensor* tensor, uint64_t offset) {
    peer_->Write(offset, tensor->data());
    tensor->clear_data();
    tensor->mutable_region()->set_region_id(region_->id());
    tensor->mutable_region()->set_offset(offset);
  }
  // The output rows a response left in the region at `offset`, as a tensor with bytes.
  v1::Tensor FromRegion(const v1::Tensor& described, uint64_t offset, uint64_t bytes) {
    EXPECT_TRUE(described.data().empty()) << "the output went to the region";
    EXPECT_EQ(described.region().region_id(), region_->id());
    EXPECT_EQ(described.region().offset(), offset);
    v1::Tensor tensor = described;
    tensor.clear_region();
    tensor.set_data(peer_->Read(offset, bytes));
    return tensor;
  }

  grpc::Status Step(const v1::StepRequest& request, v1::StepResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return server_->kvcache().Step(&context, request, response);
  }
  void Create(const std::string& id) {
    grpc::ClientContext context;
    v1::CreateSequenceRequest request;
    request.set_sequence_id(id);
    v1::CreateSequenceResponse response;
    ASSERT_TRUE(server_->kvcache().CreateSequence(&context, request, &response).ok());
  }

  std::unique_ptr<TestServer> server_;
  std::unique_ptr<CudaPeer> peer_;
  std::unique_ptr<CudaRegion> region_;
};

// Row bytes of the CUDA test model: q and out [Hq=4, D=128], k and v [Hkv=2, D=128], fp16.
constexpr uint64_t kQRow = 4 * 128 * 2, kKvRow = 2 * 128 * 2;
// Where each tensor kind lives in the region.
constexpr uint64_t kQAt = 0, kKAt = 1 << 20, kVAt = 2 << 20, kOutAt = 3 << 20;

TEST_F(CudaRegionsTest, StepReadsAndWritesTheRegionOnTheDevice) {
  ASSERT_NO_FATAL_FAILURE(StartAll(CudaConfig()));
  ASSERT_NO_FATAL_FAILURE(Attach());
  for (const char* id : {"a", "b", "plain"}) ASSERT_NO_FATAL_FAILURE(Create(id));
  ReferenceCache reference(server_->config().model);
  std::mt19937_64 rng(11);
  for (int layer = 0; layer < 3; ++layer) {
    SCOPED_TRACE("layer " + std::to_string(layer));
    // 1. A runner's batch laid out row after row: the kernels read q, k, v and write out in place.
    {
      const int na = 5, nb = 3;
      const v1::StepEntry a = reference.MakeEntry("a", na, rng);
      const v1::StepEntry b = reference.MakeEntry("b", nb, rng);
      v1::StepEntry pa = a, pb = b;
      Place(pa.mutable_q(), kQAt);
      Place(pa.mutable_k(), kKAt);
      Place(pa.mutable_v(), kVAt);
      Place(pb.mutable_q(), kQAt + na * kQRow);
      Place(pb.mutable_k(), kKAt + na * kKvRow);
      Place(pb.mutable_v(), kVAt + na * kKvRow);
      pa.mutable_out()->set_region_id(region_->id());
      pa.mutable_out()->set_offset(kOutAt);
      pb.mutable_out()->set_region_id(region_->id());
      pb.mutable_out()->set_offset(kOutAt + na * kQRow);
      peer_->Poison(kOutAt, (na + nb) * kQRow);
      v1::StepResponse response;
      const grpc::Status status = Step(MakeStep(layer, {pa, pb}), &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      ASSERT_EQ(response.out_size(), 2);
      EXPECT_EQ(reference.Apply(layer, a, FromRegion(response.out(0), kOutAt, na * kQRow)), "");
      EXPECT_EQ(
          reference.Apply(layer, b, FromRegion(response.out(1), kOutAt + na * kQRow, nb * kQRow)),
          "");
    }
    // 2. Scattered rows beside an entry in bytes: region rows are copied device-side into the
    // launch's staging, and the outputs out of it (the plain entry's come back in the response).
    {
      const v1::StepEntry a = reference.MakeEntry("a", 1, rng);
      const v1::StepEntry plain = reference.MakeEntry("plain", 2, rng);
      const v1::StepEntry b = reference.MakeEntry("b", 2, rng);
      v1::StepEntry pa = a, pb = b;
      Place(pa.mutable_q(), kQAt + 64 * kQRow);  // b's rows first, with gaps
      Place(pa.mutable_k(), kKAt + 64 * kKvRow);
      Place(pa.mutable_v(), kVAt + 64 * kKvRow);
      Place(pb.mutable_q(), kQAt + 8 * kQRow);
      Place(pb.mutable_k(), kKAt + 8 * kKvRow);
      Place(pb.mutable_v(), kVAt + 8 * kKvRow);
      const uint64_t out_a = kOutAt + 32 * kQRow, out_b = kOutAt + 4 * kQRow;
      pa.mutable_out()->set_region_id(region_->id());
      pa.mutable_out()->set_offset(out_a);
      pb.mutable_out()->set_region_id(region_->id());
      pb.mutable_out()->set_offset(out_b);
      peer_->Poison(out_a, kQRow);
      peer_->Poison(out_b, 2 * kQRow);
      v1::StepResponse response;
      const grpc::Status status = Step(MakeStep(layer, {pa, plain, pb}), &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      ASSERT_EQ(response.out_size(), 3);
      EXPECT_EQ(reference.Apply(layer, a, FromRegion(response.out(0), out_a, kQRow)), "");
      EXPECT_EQ(reference.Apply(layer, plain, response.out(1)), "");
      EXPECT_EQ(reference.Apply(layer, b, FromRegion(response.out(2), out_b, 2 * kQRow)), "");
    }
  }
}

// A batched step (StepRequest.batch): one q, k, v and out slice for the whole batch, read and
// written in place on the device; the response names the batch's output slice.
TEST_F(CudaRegionsTest, BatchedStepReadsAndWritesTheRegionOnTheDevice) {
  ASSERT_NO_FATAL_FAILURE(StartAll(CudaConfig()));
  ASSERT_NO_FATAL_FAILURE(Attach());
  for (const char* id : {"a", "b"}) ASSERT_NO_FATAL_FAILURE(Create(id));
  ReferenceCache reference(server_->config().model);
  std::mt19937_64 rng(13);
  for (int layer = 0; layer < 3; ++layer) {
    SCOPED_TRACE("layer " + std::to_string(layer));
    const int na = 4, nb = 1;
    const v1::StepEntry a = reference.MakeEntry("a", na, rng);
    const v1::StepEntry b = reference.MakeEntry("b", nb, rng);
    v1::StepRequest request;
    request.set_layer(layer);
    v1::StepBatch* batch = request.mutable_batch();
    batch->add_sequence_ids("a");
    batch->add_sequence_ids("b");
    batch->add_num_tokens(na);
    batch->add_num_tokens(nb);
    const std::tuple<v1::Tensor*, const v1::Tensor*, const v1::Tensor*, uint64_t> tensors[] = {
        {batch->mutable_q(), &a.q(), &b.q(), kQAt},
        {batch->mutable_k(), &a.k(), &b.k(), kKAt},
        {batch->mutable_v(), &a.v(), &b.v(), kVAt}};
    for (const auto& [whole, of_a, of_b, at] : tensors) {
      *whole = *of_a;
      whole->set_shape(0, na + nb);
      whole->set_data(of_a->data() + of_b->data());
      Place(whole, at);
    }
    batch->mutable_out()->set_region_id(region_->id());
    batch->mutable_out()->set_offset(kOutAt);
    peer_->Poison(kOutAt, (na + nb) * kQRow);
    v1::StepResponse response;
    const grpc::Status status = Step(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.out_size(), 0);
    ASSERT_TRUE(response.has_batch_out());
    ASSERT_EQ(response.batch_out().shape_size(), 3);
    EXPECT_EQ(response.batch_out().shape(0), na + nb);
    for (const auto& [entry, row, n] : {std::tuple{&a, 0, na}, std::tuple{&b, na, nb}}) {
      v1::Tensor described = response.batch_out();
      described.set_shape(0, n);
      const uint64_t at = kOutAt + uint64_t(row) * kQRow;
      described.mutable_region()->set_offset(at);
      EXPECT_EQ(reference.Apply(layer, *entry, FromRegion(described, at, n * kQRow)), "")
          << entry->sequence_id();
    }
  }
}

// Decode passes over CUDA memory (docs/api.md#decode-passes): the pass's metadata is copied to
// the device once at layer 0; every layer reads q, k and v in place in the region and writes out
// there, except layer 1 of each pass, whose tensors come as bytes (staged and uploaded). Two
// passes on one stream, each layer against the float64 reference with the outputs poisoned.
TEST_F(CudaRegionsTest, DecodePassesReadAndWriteTheRegionOnTheDevice) {
  ASSERT_NO_FATAL_FAILURE(StartAll(CudaConfig()));
  ASSERT_NO_FATAL_FAILURE(Attach());
  for (const char* id : {"a", "b", "c"}) ASSERT_NO_FATAL_FAILURE(Create(id));
  ReferenceCache reference(server_->config().model);
  std::mt19937_64 rng(17);
  const int layers = server_->config().model.num_layers;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = server_->kvcache().StepStream(&context);
  for (uint64_t pass = 1; pass <= 2; ++pass) {
    const int n = pass == 1 ? 3 : 1;  // a prompt of 3 tokens each, then a decode token
    for (int layer = 0; layer < layers; ++layer) {
      SCOPED_TRACE("pass " + std::to_string(pass) + " layer " + std::to_string(layer));
      std::vector<v1::StepEntry> entries;
      for (const char* id : {"a", "b", "c"}) entries.push_back(reference.MakeEntry(id, n, rng));
      v1::StepRequest request;
      request.set_layer(layer);
      v1::StepBatch* batch = request.mutable_batch();
      *batch = MakeBatch(entries);
      batch->set_pass_id(pass);
      if (layer > 0) {
        batch->clear_sequence_ids();
        batch->clear_num_tokens();
      }
      const bool in_region = layer != 1;
      if (in_region) {
        Place(batch->mutable_q(), kQAt);
        Place(batch->mutable_k(), kKAt);
        Place(batch->mutable_v(), kVAt);
      }
      batch->mutable_out()->set_region_id(region_->id());
      batch->mutable_out()->set_offset(kOutAt);
      peer_->Poison(kOutAt, 3 * n * kQRow);
      ASSERT_TRUE(stream->Write(request));
      v1::StepResponse response;
      ASSERT_TRUE(stream->Read(&response));
      ASSERT_TRUE(response.has_batch_out());
      for (int i = 0; i < 3; ++i) {
        v1::Tensor described = response.batch_out();
        described.set_shape(0, n);
        const uint64_t at = kOutAt + uint64_t(i) * n * kQRow;
        described.mutable_region()->set_offset(at);
        EXPECT_EQ(reference.Apply(layer, entries[i], FromRegion(described, at, n * kQRow)), "")
            << entries[i].sequence_id();
      }
    }
  }
  stream->WritesDone();
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(CudaRegionsTest, StepRefusesSlicesOutOfBoundsAndOutputsOverInputs) {
  ASSERT_NO_FATAL_FAILURE(StartAll(CudaConfig()));
  ASSERT_NO_FATAL_FAILURE(Attach(0, kRegionBytes));
  ASSERT_NO_FATAL_FAILURE(Create("a"));
  ReferenceCache reference(server_->config().model);
  std::mt19937_64 rng(12);
  v1::StepEntry entry = reference.MakeEntry("a", 4, rng);
  Place(entry.mutable_q(), kQAt);
  Place(entry.mutable_k(), kKAt);
  Place(entry.mutable_v(), kVAt);
  // The last rows of v would run past the region's end.
  entry.mutable_v()->mutable_region()->set_offset(kRegionBytes - 2 * kKvRow);
  v1::StepResponse response;
  grpc::Status status = Step(MakeStep(0, {entry}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("entries[0].v"), std::string::npos)
      << status.error_message();
  EXPECT_NE(status.error_message().find("lies outside region"), std::string::npos)
      << status.error_message();
  // An output past the end.
  entry.mutable_v()->mutable_region()->set_offset(kVAt);
  entry.mutable_out()->set_region_id(region_->id());
  entry.mutable_out()->set_offset(kRegionBytes - kQRow);
  status = Step(MakeStep(0, {entry}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("entries[0].out"), std::string::npos)
      << status.error_message();
  // An output over its own k, in device memory as in host memory.
  entry.mutable_out()->set_offset(kKAt);
  status = Step(MakeStep(0, {entry}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("entries[0].out overlaps entries[0].k"), std::string::npos)
      << status.error_message();
}

TEST_F(CudaRegionsTest, AttentionReadsAndWritesTheRegionOnTheDevice) {
  ASSERT_NO_FATAL_FAILURE(StartAll(CudaConfig()));
  ASSERT_NO_FATAL_FAILURE(Attach());
  std::mt19937_64 rng(13);
  const int batch = 2, sq = 5, skv = 9, hq = 4, hkv = 2, d = 128;
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "full");
    const HostTensor q = RandomTensor(DType::kFloat16, {batch, sq, hq, d}, rng);
    const HostTensor k = RandomTensor(DType::kFloat16, {batch, skv, hkv, d}, rng);
    const HostTensor v = RandomTensor(DType::kFloat16, {batch, skv, hkv, d}, rng);
    v1::AttentionRequest request;
    q.ToProto(request.mutable_q());
    k.ToProto(request.mutable_k());
    v.ToProto(request.mutable_v());
    Place(request.mutable_q(), kQAt);
    Place(request.mutable_k(), kKAt);
    Place(request.mutable_v(), kVAt);
    request.set_causal(causal);
    request.set_return_lse(true);
    const uint64_t out_bytes = q.bytes.size(), lse_at = kOutAt + (1 << 19);
    const uint64_t lse_bytes = uint64_t(batch) * hq * sq * sizeof(float);
    request.mutable_out()->set_region_id(region_->id());
    request.mutable_out()->set_offset(kOutAt);
    request.mutable_lse()->set_region_id(region_->id());
    request.mutable_lse()->set_offset(lse_at);
    peer_->Poison(kOutAt, out_bytes);
    peer_->Poison(lse_at, lse_bytes);
    v1::AttentionResponse response;
    grpc::ClientContext context;
    const grpc::Status status = server_->attention().Attention(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    const HostTensor out = FromProto(FromRegion(response.out(), kOutAt, out_bytes));
    const HostTensor lse = FromProto(FromRegion(response.lse(), lse_at, lse_bytes));
    const size_t q_per = size_t(sq) * hq * d, kv_per = size_t(skv) * hkv * d;
    std::vector<double> want(q.values.size()), want_lse(size_t(batch) * hq * sq);
    for (int b = 0; b < batch; ++b) {
      ReferenceAttention(q.values.data() + b * q_per, k.values.data() + b * kv_per,
                         v.values.data() + b * kv_per, sq, skv, hq, hkv, d, causal,
                         1.0 / std::sqrt(double(d)), want.data() + b * q_per,
                         want_lse.data() + size_t(b) * hq * sq);
    }
    EXPECT_EQ(CompareValues(out.values, want, Tolerance(DType::kFloat16)), "");
    EXPECT_EQ(CompareValues(lse.values, want_lse, 1e-3), "");
  }
}

TEST_F(CudaRegionsTest, AttentionVarlenReadsTheRegionAndAnswersInBytes) {
  ASSERT_NO_FATAL_FAILURE(StartAll(CudaConfig()));
  ASSERT_NO_FATAL_FAILURE(Attach());
  std::mt19937_64 rng(14);
  const int hq = 4, hkv = 2, d = 128;
  const std::vector<int32_t> cu_q = {0, 3, 3, 7}, cu_kv = {0, 5, 9, 16};
  const HostTensor q = RandomTensor(DType::kFloat16, {cu_q.back(), hq, d}, rng);
  const HostTensor k = RandomTensor(DType::kFloat16, {cu_kv.back(), hkv, d}, rng);
  const HostTensor v = RandomTensor(DType::kFloat16, {cu_kv.back(), hkv, d}, rng);
  v1::AttentionVarlenRequest request;
  q.ToProto(request.mutable_q());
  k.ToProto(request.mutable_k());
  v.ToProto(request.mutable_v());
  Place(request.mutable_q(), kQAt);
  Place(request.mutable_v(), kVAt);  // k stays in the message: mixed placements
  for (int32_t c : cu_q) request.add_cu_seqlens_q(c);
  for (int32_t c : cu_kv) request.add_cu_seqlens_kv(c);
  request.set_causal(true);
  v1::AttentionResponse response;
  grpc::ClientContext context;
  const grpc::Status status = server_->attention().AttentionVarlen(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const HostTensor out = FromProto(response.out());
  std::vector<double> want(q.values.size()), lse(size_t(hq) * cu_q.back());
  for (size_t s = 0; s + 1 < cu_q.size(); ++s) {
    ReferenceAttention(q.values.data() + size_t(cu_q[s]) * hq * d,
                       k.values.data() + size_t(cu_kv[s]) * hkv * d,
                       v.values.data() + size_t(cu_kv[s]) * hkv * d, cu_q[s + 1] - cu_q[s],
                       cu_kv[s + 1] - cu_kv[s], hq, hkv, d, true, 1.0 / std::sqrt(double(d)),
                       want.data() + size_t(cu_q[s]) * hq * d, lse.data());
  }
  EXPECT_EQ(CompareValues(out.values, want, Tolerance(DType::kFloat16)), "");
}

TEST_F(CudaRegionsTest, AttachRefusesASizePastTheAllocation) {
  // A multiple of the 2 MiB allocation granularity, so that the driver's figure is exactly it.
  const uint64_t alloc = 4 << 20, claimed = 8 << 20;
  ASSERT_NO_FATAL_FAILURE(StartAll(CudaConfig(), 0, alloc));
  CudaRegion lying(*server_, peer_->handle(), 0, claimed);
  EXPECT_FALSE(lying.attached());
  EXPECT_EQ(lying.status().error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << lying.status().error_message();
  EXPECT_NE(lying.status().error_message().find("size (" + std::to_string(claimed)),
            std::string::npos)
      << lying.status().error_message();
  // The truth (or less) is accepted, and the server still computes (its context is healthy).
  CudaRegion honest(*server_, peer_->handle(), 0, alloc);
  EXPECT_TRUE(honest.attached()) << honest.status().error_message();
}

TEST_F(CudaRegionsTest, StepRefusesARegionOnAnotherDevice) {
  if (cuda::DeviceCount() < 2) {
    GTEST_SKIP() << "one CUDA device (CheckRegionPlacement is unit-tested on the CPU)";
  }
  ASSERT_NO_FATAL_FAILURE(StartAll(CudaConfig(), /*device=*/1));
  ASSERT_NO_FATAL_FAILURE(Attach(/*device=*/1));
  ASSERT_NO_FATAL_FAILURE(Create("a"));
  ReferenceCache reference(server_->config().model);
  std::mt19937_64 rng(15);
  v1::StepEntry entry = reference.MakeEntry("a", 2, rng);
  Place(entry.mutable_q(), kQAt);
  v1::StepResponse response;
  const grpc::Status status = Step(MakeStep(0, {entry}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  for (const char* part : {"entries[0].q.region", "CUDA device 1", "CUDA device 0"}) {
    EXPECT_NE(status.error_message().find(part), std::string::npos) << status.error_message();
  }
}

TEST_F(CudaRegionsTest, CpuBackendRefusesCudaRegions) {
  // The CUDA test model on the CPU backend: fp16 with head dim 128 is what SetUp found compiled
  // (the small model's fp32 head dim 64 need not be, in a GPU build cut to a few instantiations).
  server::ServerConfig config = CudaConfig();
  config.backend = server::BackendChoice::kCpu;
  config.cuda_devices.clear();
  ASSERT_NO_FATAL_FAILURE(StartAll(config));
  ASSERT_NO_FATAL_FAILURE(Attach());
  ASSERT_NO_FATAL_FAILURE(Create("a"));
  ReferenceCache reference(server_->config().model);
  std::mt19937_64 rng(16);
  v1::StepEntry entry = reference.MakeEntry("a", 2, rng);
  entry.mutable_out()->set_region_id(region_->id());
  entry.mutable_out()->set_offset(kOutAt);
  v1::StepResponse response;
  const grpc::Status status = Step(MakeStep(0, {entry}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("entries[0].out"), std::string::npos)
      << status.error_message();
  EXPECT_NE(status.error_message().find("CPU backend"), std::string::npos)
      << status.error_message();
  v1::AttentionRequest request;
  RandomTensor(DType::kFloat32, {1, 2, 4, 64}, rng).ToProto(request.mutable_q());
  RandomTensor(DType::kFloat32, {1, 2, 2, 64}, rng).ToProto(request.mutable_k());
  RandomTensor(DType::kFloat32, {1, 2, 2, 64}, rng).ToProto(request.mutable_v());
  Place(request.mutable_k(), kKAt);
  v1::AttentionResponse attention;
  grpc::ClientContext context;
  const grpc::Status refused = server_->attention().Attention(&context, request, &attention);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(refused.error_message().find("k.region"), std::string::npos) << refused.error_message();
}

}  // namespace
}  // namespace flashkv::testing
