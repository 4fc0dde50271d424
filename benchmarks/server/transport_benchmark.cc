// Transport benchmark: round trips of Step-shaped messages between a client and a server in one
// process over loopback TCP (or a Unix socket), for gRPC's defaults and for flashkv's transport
// (tuned HTTP/2 and TCP settings plus the zero-copy wire codec), in the same run.
//
// A payload of P bytes is a StepRequest of decode-like entries (q [1,32,128], k and v [1,8,128]
// fp16, 12 KiB per entry; a single smaller entry below that) and a StepResponse whose out[i]
// carries entry i's q|k|v bytes back, so P bytes cross each way. The echo server copies the
// request tensors once into an output buffer, as the real server copies them into its staging
// buffer. Every response is checked against what was sent.
//
// Variants: "grpc-default" (default channel arguments, generated protobuf classes on both sides:
// what a first implementation does), "tuned-args" (flashkv's channel arguments, protobuf
// classes), "wire-codec" (default arguments, zero-copy codec), "flashkv" (both). Only the first
// and the last with --quick.
//
//   transport_benchmark [--quick] [--unix] [--sizes 1KiB,1MiB,8MiB] [--iterations-scale 1.0]
//
// Needs nothing but its own binary and shared libraries.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "flashkv/transport.h"
#include "flashkv/v1/kvcache.grpc.pb.h"
#include "flashkv/wire/messages.h"

namespace {

namespace v1 = flashkv::v1;
namespace wire = flashkv::wire;
using Clock = std::chrono::steady_clock;

constexpr int32_t kFloat16 = 1;
constexpr const char* kStepMethod = "/flashkv.v1.KvCacheService/Step";
constexpr const char* kStepStreamMethod = "/flashkv.v1.KvCacheService/StepStream";

// ---- Payload ---------------------------------------------------------------------------------

struct EntryShape {
  int64_t q_heads, kv_heads;
};
constexpr int64_t kHeadDim = 128;
constexpr int64_t kHeadBytes = kHeadDim * 2;  // fp16

struct Payload {
  std::vector<EntryShape> entries;
  std::vector<std::vector<uint8_t>> q, k, v;  // per entry
  std::vector<std::string> ids;
  size_t bytes = 0;  // tensor bytes each way
};

Payload MakePayload(size_t target_bytes, std::mt19937_64& rng) {
  Payload p;
  const size_t entry_bytes = 48 * kHeadBytes;  // q 32 heads, k 8, v 8
  if (target_bytes < entry_bytes) {
    // One entry with heads in the same 4:1:1 proportion, at least one each.
    const int64_t heads = std::max<int64_t>(6, int64_t(target_bytes) / kHeadBytes);
    p.entries.push_back({heads * 4 / 6, heads / 6});
  } else {
    p.entries.assign(std::max<size_t>(1, (target_bytes + entry_bytes / 2) / entry_bytes), {32, 8});
  }
  std::uniform_int_distribution<int> byte(0, 255);
  auto fill = [&](int64_t heads) {
    std::vector<uint8_t> data(size_t(heads * kHeadBytes));
    for (auto& b : data) b = uint8_t(byte(rng));
    p.bytes += data.size();
    return data;
  };
  for (size_t i = 0; i < p.entries.size(); ++i) {
    p.q.push_back(fill(p.entries[i].q_heads));
    p.k.push_back(fill(p.entries[i].kv_heads));
    p.v.push_back(fill(p.entries[i].kv_heads));
    p.ids.push_back("seq-" + std::to_string(i));
  }
  return p;
}

// ---- Servers ---------------------------------------------------------------------------------

// Protobuf classes: the response tensor is assembled with string appends (copies), and gRPC
// serializes it (another copy).
void EchoProto(const v1::StepRequest& request, v1::StepResponse* response) {
  for (const v1::StepEntry& e : request.entries()) {
    v1::Tensor* out = response->add_out();
    out->set_dtype(v1::DTYPE_FLOAT16);
    out->add_shape(1);
    out->add_shape(e.q().shape(1) + e.k().shape(1) + e.v().shape(1));
    out->add_shape(kHeadDim);
    std::string* data = out->mutable_data();
    data->reserve(e.q().data().size() + e.k().data().size() + e.v().data().size());
    data->append(e.q().data()).append(e.k().data()).append(e.v().data());
  }
  response->set_step_id(request.step_id());
}

class ProtoEchoService final : public v1::KvCacheService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Step(grpc::CallbackServerContext* context,
                                 const v1::StepRequest* request,
                                 v1::StepResponse* response) override {
    EchoProto(*request, response);
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  grpc::ServerBidiReactor<v1::StepRequest, v1::StepResponse>* StepStream(
      grpc::CallbackServerContext*) override {
    class Reactor : public grpc::ServerBidiReactor<v1::StepRequest, v1::StepResponse> {
     public:
      Reactor() { StartRead(&request_); }
      void OnReadDone(bool ok) override {
        if (!ok) return Finish(grpc::Status::OK);
        response_.Clear();
        EchoProto(request_, &response_);
        StartWrite(&response_);
      }
      void OnWriteDone(bool ok) override {
        if (!ok) return Finish(grpc::Status::CANCELLED);
        StartRead(&request_);
      }
      void OnDone() override { delete this; }

     private:
      v1::StepRequest request_;
      v1::StepResponse response_;
    };
    return new Reactor();
  }
};

// The zero-copy codec: request tensors are read from the received slices and copied once into
// one output buffer; the response references that buffer.
absl::Status EchoWire(const grpc::ByteBuffer& request, grpc::ByteBuffer* response) {
  absl::StatusOr<wire::MessageBytes> bytes = wire::MessageBytes::FromByteBuffer(request);
  if (!bytes.ok()) return bytes.status();
  wire::StepRequestView view;
  if (auto s = wire::DecodeStepRequest(*bytes, &view); !s.ok()) return s;
  size_t total = 0;
  for (const auto& e : view.entries) total += e.q.data.size + e.k.data.size + e.v.data.size;
  auto buffer = std::shared_ptr<uint8_t[]>(new uint8_t[std::max<size_t>(total, 1)]);
  std::vector<wire::TensorData> out;
  out.reserve(view.entries.size());
  size_t offset = 0;
  for (const auto& e : view.entries) {
    const size_t start = offset;
    for (const wire::TensorView* t : {&e.q, &e.k, &e.v}) {
      bytes->CopyTo(t->data, buffer.get() + offset);
      offset += t->data.size;
    }
    const int64_t heads = e.q.shape.at(1) + e.k.shape.at(1) + e.v.shape.at(1);
    out.push_back(wire::TensorData{
        kFloat16, {1, heads, kHeadDim}, buffer.get() + start, offset - start, buffer, {}});
  }
  *response = wire::EncodeStepResponse(out, view.step_id);
  return absl::OkStatus();
}

// Only Step and StepStream raw (a raw method cannot override a typed one of the same signature,
// so the callback bases are listed one by one).
using KvCacheRawStepService = v1::KvCacheService::WithCallbackMethod_GetCacheInfo<
    v1::KvCacheService::WithCallbackMethod_CreateSequence<
        v1::KvCacheService::WithCallbackMethod_ForkSequence<
            v1::KvCacheService::WithCallbackMethod_FreeSequence<
                v1::KvCacheService::WithRawCallbackMethod_Step<
                    v1::KvCacheService::WithRawCallbackMethod_StepStream<
                        v1::KvCacheService::WithCallbackMethod_GetStats<
                            v1::KvCacheService::Service>>>>>>>;

class WireEchoService final : public KvCacheRawStepService {
 public:
  grpc::ServerUnaryReactor* Step(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override {
    const absl::Status status = EchoWire(*request, response);
    auto* reactor = context->DefaultReactor();
    reactor->Finish(status.ok()
                        ? grpc::Status::OK
                        : grpc::Status(grpc::StatusCode::INTERNAL, std::string(status.message())));
    return reactor;
  }
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* StepStream(
      grpc::CallbackServerContext*) override {
    class Reactor : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
     public:
      Reactor() { StartRead(&request_); }
      void OnReadDone(bool ok) override {
        if (!ok) return Finish(grpc::Status::OK);
        if (auto s = EchoWire(request_, &response_); !s.ok()) {
          return Finish(grpc::Status(grpc::StatusCode::INTERNAL, std::string(s.message())));
        }
        request_.Clear();
        StartWrite(&response_);
      }
      void OnWriteDone(bool ok) override {
        if (!ok) return Finish(grpc::Status::CANCELLED);
        response_.Clear();
        StartRead(&request_);
      }
      void OnDone() override { delete this; }

     private:
      grpc::ByteBuffer request_;
      grpc::ByteBuffer response_;
    };
    return new Reactor();
  }
};

// ---- Clients ---------------------------------------------------------------------------------

void BuildProtoRequest(const Payload& p, uint64_t step_id, v1::StepRequest* request) {
  request->Clear();
  request->set_layer(0);
  request->set_step_id(step_id);
  for (size_t i = 0; i < p.entries.size(); ++i) {
    v1::StepEntry* e = request->add_entries();
    e->set_sequence_id(p.ids[i]);
    auto set = [](v1::Tensor* t, int64_t heads, const std::vector<uint8_t>& data) {
      t->set_dtype(v1::DTYPE_FLOAT16);
      t->add_shape(1);
      t->add_shape(heads);
      t->add_shape(kHeadDim);
      t->set_data(data.data(), data.size());
    };
    set(e->mutable_q(), p.entries[i].q_heads, p.q[i]);
    set(e->mutable_k(), p.entries[i].kv_heads, p.k[i]);
    set(e->mutable_v(), p.entries[i].kv_heads, p.v[i]);
  }
}

grpc::ByteBuffer BuildWireRequest(const Payload& p, uint64_t step_id) {
  // The payload outlives every call, so the slices need no owner beyond a non-null marker.
  static const auto kNoOwner = std::make_shared<int>(0);
  std::vector<wire::StepEntryData> entries(p.entries.size());
  for (size_t i = 0; i < p.entries.size(); ++i) {
    auto tensor = [](int64_t heads, const std::vector<uint8_t>& data) {
      return wire::TensorData{kFloat16, {1, heads, kHeadDim}, data.data(), data.size(), kNoOwner, {}};
    };
    entries[i].sequence_id = p.ids[i];
    entries[i].q = tensor(p.entries[i].q_heads, p.q[i]);
    entries[i].k = tensor(p.entries[i].kv_heads, p.k[i]);
    entries[i].v = tensor(p.entries[i].kv_heads, p.v[i]);
  }
  return wire::EncodeStepRequest(0, step_id, entries);
}

// Compares every returned byte: entry i's out must be q|k|v of entry i.
bool CheckEntry(const Payload& p, size_t i, const uint8_t* data, size_t size,
                const std::function<void(size_t, size_t, uint8_t*)>& copy) {
  const size_t expected = p.q[i].size() + p.k[i].size() + p.v[i].size();
  if (size != expected) return false;
  std::vector<uint8_t> got(size);
  if (data != nullptr) {
    std::memcpy(got.data(), data, size);
  } else {
    copy(0, size, got.data());
  }
  return std::memcmp(got.data(), p.q[i].data(), p.q[i].size()) == 0 &&
         std::memcmp(got.data() + p.q[i].size(), p.k[i].data(), p.k[i].size()) == 0 &&
         std::memcmp(got.data() + p.q[i].size() + p.k[i].size(), p.v[i].data(), p.v[i].size()) == 0;
}

bool CheckProtoResponse(const Payload& p, uint64_t step_id, const v1::StepResponse& r) {
  if (r.step_id() != step_id || size_t(r.out_size()) != p.entries.size()) return false;
  for (size_t i = 0; i < p.entries.size(); ++i) {
    const std::string& d = r.out(int(i)).data();
    if (!CheckEntry(p, i, reinterpret_cast<const uint8_t*>(d.data()), d.size(), nullptr))
      return false;
  }
  return true;
}

// What a client does with a response: locate every tensor (no copies).
struct DecodedResponse {
  wire::MessageBytes bytes;
  wire::StepResponseView view;
  bool ok = false;
};

DecodedResponse DecodeWireResponse(const grpc::ByteBuffer& buffer) {
  DecodedResponse d;
  absl::StatusOr<wire::MessageBytes> bytes = wire::MessageBytes::FromByteBuffer(buffer);
  if (!bytes.ok()) return d;
  d.bytes = *std::move(bytes);
  d.ok = wire::DecodeStepResponse(d.bytes, &d.view).ok();
  return d;
}

bool CheckWireResponse(const Payload& p, uint64_t step_id, const DecodedResponse& d) {
  const wire::StepResponseView& r = d.view;
  if (!d.ok || r.step_id != step_id || r.out.size() != p.entries.size()) return false;
  for (size_t i = 0; i < p.entries.size(); ++i) {
    const wire::Span span = r.out[i].data;
    auto copy = [&](size_t, size_t, uint8_t* dst) { d.bytes.CopyTo(span, dst); };
    if (!CheckEntry(p, i, nullptr, span.size, copy)) return false;
  }
  return true;
}

// One outstanding write and one outstanding read at a time: write a request, wait for its
// response (and for the write to complete) before the next.
template <typename Request, typename Response>
class StreamClient : public grpc::ClientBidiReactor<Request, Response> {
 public:
  void Start() { this->StartCall(); }
  // Returns false when the stream broke.
  bool RoundTrip(Request* request, Response* response) {
    {
      absl::MutexLock lock(&mu_);
      read_done_ = write_done_ = false;
    }
    this->StartRead(response);
    this->StartWrite(request);
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](StreamClient* c) { return (c->read_done_ && c->write_done_) || c->done_; }, this));
    return ok_ && !done_;
  }
  grpc::Status Close() {
    this->StartWritesDone();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
    return status_;
  }
  void OnReadDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    ok_ = ok_ && ok;
    read_done_ = true;
  }
  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    ok_ = ok_ && ok;
    write_done_ = true;
  }
  void OnDone(const grpc::Status& status) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
    done_ = true;
  }

 private:
  absl::Mutex mu_;
  bool read_done_ = false, write_done_ = false, done_ = false, ok_ = true;
  grpc::Status status_;
};

// ---- Driver ----------------------------------------------------------------------------------

struct Variant {
  const char* name;
  bool tuned_args;
  bool wire_codec;
};

struct Result {
  double p50_us = 0, p99_us = 0, mib_per_s = 0;
  bool ok = true;
};

Result Summarize(std::vector<double> micros, size_t bytes, double elapsed_s) {
  Result r;
  std::sort(micros.begin(), micros.end());
  r.p50_us = micros[micros.size() / 2];
  r.p99_us = micros[std::min(micros.size() - 1, micros.size() * 99 / 100)];
  r.mib_per_s = double(bytes) * micros.size() / (1 << 20) / elapsed_s;
  return r;
}

class Bench {
 public:
  Bench(const Variant& variant, bool unix_socket) : variant_(variant) {
    flashkv::TransportOptions options;
    options.tuned = variant.tuned_args;
    grpc::ServerBuilder builder;
    flashkv::ApplyServerTransportOptions(options, &builder);
    std::string address = "127.0.0.1:0";
    if (unix_socket) {
      socket_path_ =
          "/tmp/flashkv-transport-" + std::to_string(getpid()) + "-" + variant.name + ".sock";
      address = "unix:" + socket_path_;
    }
    int port = 0;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
    if (variant.wire_codec) {
      builder.RegisterService(&wire_service_);
    } else {
      builder.RegisterService(&proto_service_);
    }
    server_ = builder.BuildAndStart();
    const std::string target = unix_socket ? address : "127.0.0.1:" + std::to_string(port);
    channel_ = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                         flashkv::MakeChannelArguments(options));
    stub_ = v1::KvCacheService::NewStub(channel_);
    generic_ = std::make_unique<grpc::GenericStub>(channel_);
  }
  ~Bench() {
    server_->Shutdown();
    if (!socket_path_.empty()) unlink(socket_path_.c_str());
  }
  bool ok() const { return server_ != nullptr; }

  Result Unary(const Payload& p, int warmup, int iterations) {
    std::vector<double> micros;
    bool ok = true;
    const auto begin = Clock::now();
    auto measured_begin = begin;
    for (int i = 0; i < warmup + iterations && ok; ++i) {
      if (i == warmup) measured_begin = Clock::now();
      const uint64_t step_id = uint64_t(i) + 1;
      const auto t0 = Clock::now();
      auto t1 = t0;
      grpc::ClientContext context;
      absl::Notification done;
      grpc::Status status;
      if (variant_.wire_codec) {
        grpc::ByteBuffer request = BuildWireRequest(p, step_id), response;
        generic_->UnaryCall(&context, kStepMethod, grpc::StubOptions(), &request, &response,
                            [&](grpc::Status s) {
                              status = s;
                              done.Notify();
                            });
        done.WaitForNotification();
        const DecodedResponse decoded = DecodeWireResponse(response);
        t1 = Clock::now();
        ok = status.ok() && CheckWireResponse(p, step_id, decoded);
      } else {
        v1::StepRequest request;
        v1::StepResponse response;
        BuildProtoRequest(p, step_id, &request);
        stub_->async()->Step(&context, &request, &response, [&](grpc::Status s) {
          status = s;
          done.Notify();
        });
        done.WaitForNotification();
        t1 = Clock::now();
        ok = status.ok() && CheckProtoResponse(p, step_id, response);
      }
      // Latency covers building the request and decoding the response, not the check.
      if (i >= warmup) micros.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      if (!status.ok())
        std::fprintf(stderr, "%s unary: %s\n", variant_.name, status.error_message().c_str());
    }
    return Finish(micros, p.bytes, measured_begin, ok);
  }

  Result Stream(const Payload& p, int warmup, int iterations) {
    return variant_.wire_codec
               ? StreamWith<grpc::ByteBuffer, grpc::ByteBuffer>(p, warmup, iterations)
               : StreamWith<v1::StepRequest, v1::StepResponse>(p, warmup, iterations);
  }

 private:
  template <typename Request, typename Response>
  Result StreamWith(const Payload& p, int warmup, int iterations) {
    grpc::ClientContext context;
    StreamClient<Request, Response> client;
    if constexpr (std::is_same_v<Request, grpc::ByteBuffer>) {
      generic_->PrepareBidiStreamingCall(&context, kStepStreamMethod, grpc::StubOptions(), &client);
    } else {
      stub_->async()->StepStream(&context, &client);
    }
    client.Start();
    std::vector<double> micros;
    bool ok = true;
    auto measured_begin = Clock::now();
    for (int i = 0; i < warmup + iterations && ok; ++i) {
      if (i == warmup) measured_begin = Clock::now();
      const uint64_t step_id = uint64_t(i) + 1;
      const auto t0 = Clock::now();
      auto t1 = t0;
      Request request;
      Response response;
      if constexpr (std::is_same_v<Request, grpc::ByteBuffer>) {
        request = BuildWireRequest(p, step_id);
        ok = client.RoundTrip(&request, &response);
        const DecodedResponse decoded = DecodeWireResponse(response);
        t1 = Clock::now();
        ok = ok && CheckWireResponse(p, step_id, decoded);
      } else {
        BuildProtoRequest(p, step_id, &request);
        ok = client.RoundTrip(&request, &response);
        t1 = Clock::now();
        ok = ok && CheckProtoResponse(p, step_id, response);
      }
      if (i >= warmup) micros.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    const grpc::Status status = client.Close();
    if (!status.ok())
      std::fprintf(stderr, "%s stream: %s\n", variant_.name, status.error_message().c_str());
    return Finish(micros, p.bytes, measured_begin, ok && status.ok());
  }

  Result Finish(const std::vector<double>& micros, size_t bytes, Clock::time_point begin, bool ok) {
    if (micros.empty()) return Result{0, 0, 0, false};
    Result r =
        Summarize(micros, bytes, std::chrono::duration<double>(Clock::now() - begin).count());
    r.ok = ok;
    return r;
  }

  Variant variant_;
  ProtoEchoService proto_service_;
  WireEchoService wire_service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::KvCacheService::Stub> stub_;
  std::unique_ptr<grpc::GenericStub> generic_;
  std::string socket_path_;
};

std::string SizeName(size_t bytes) {
  if (bytes >= (1 << 20) && bytes % (1 << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  if (bytes >= 1024 && bytes % 1024 == 0) return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " B";
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, unix_socket = false;
  std::vector<std::string> size_names = {"1KiB", "1MiB", "8MiB"};
  double scale = 1.0;
  CLI::App app{
      "flashkv transport benchmark: Step round trips, gRPC defaults vs flashkv's transport"};
  app.add_flag("--quick", quick, "Fewer iterations; only grpc-default and flashkv");
  app.add_flag("--unix", unix_socket, "Unix domain socket instead of loopback TCP");
  app.add_option("--sizes", size_names, "Payload sizes (bytes each way)")->delimiter(',');
  app.add_option("--iterations-scale", scale, "Multiply every iteration count");
  std::vector<std::string> only;
  app.add_option("--variants", only, "Run only these variants (comma separated)")->delimiter(',');
  CLI11_PARSE(app, argc, argv);

  std::vector<size_t> sizes;
  for (std::string name : size_names) {
    CLI::AsSizeValue to_bytes(false);
    const std::string error = to_bytes(name);  // rewrites `name` to the number of bytes
    if (!error.empty()) {
      std::fprintf(stderr, "--sizes: %s\n", error.c_str());
      return 2;
    }
    sizes.push_back(std::stoull(name));
  }

  std::vector<Variant> variants = {{"grpc-default", false, false},
                                   {"tuned-args", true, false},
                                   {"wire-codec", false, true},
                                   {"flashkv", true, true}};
  if (quick) variants = {variants.front(), variants.back()};
  if (!only.empty()) {
    std::vector<Variant> selected;
    for (const Variant& v : variants) {
      if (std::find(only.begin(), only.end(), v.name) != only.end()) selected.push_back(v);
    }
    variants = selected;
  }

  std::mt19937_64 rng(42);
  std::printf("flashkv transport benchmark: %s, %ld cores, client and server in one process\n",
              unix_socket ? "Unix socket" : "loopback TCP", sysconf(_SC_NPROCESSORS_ONLN));
  std::printf("payload = tensor bytes each way; MiB/s = payload x round trips / time\n\n");
  std::printf("%-9s %-8s %-13s %7s %10s %10s %10s %9s\n", "payload", "call", "variant", "entries",
              "p50 us", "p99 us", "MiB/s", "p50 gain");
  bool all_ok = true;
  for (size_t size : sizes) {
    const Payload payload = MakePayload(size, rng);
    // Enough round trips for a stable p99, bounded in time on a slow machine.
    const int base = size <= 64 * 1024 ? 2000 : size <= (2 << 20) ? 300 : 60;
    const int iterations = std::max(20, int(base * scale * (quick ? 0.25 : 1.0)));
    const int warmup = std::max(5, iterations / 10);
    for (const char* call : {"unary", "stream"}) {
      double baseline_p50 = 0;
      for (const Variant& variant : variants) {
        Bench bench(variant, unix_socket);
        if (!bench.ok()) {
          std::fprintf(stderr, "cannot start the %s server\n", variant.name);
          return 1;
        }
        const Result r = std::string(call) == "unary" ? bench.Unary(payload, warmup, iterations)
                                                      : bench.Stream(payload, warmup, iterations);
        if (baseline_p50 == 0) baseline_p50 = r.p50_us;
        all_ok = all_ok && r.ok;
        std::printf("%-9s %-8s %-13s %7zu %10.0f %10.0f %10.1f %8.2fx%s\n", SizeName(size).c_str(),
                    call, variant.name, payload.entries.size(), r.p50_us, r.p99_us, r.mib_per_s,
                    baseline_p50 / r.p50_us, r.ok ? "" : "  WRONG OR FAILED");
        std::fflush(stdout);
      }
    }
  }
  if (!all_ok) {
    std::printf("\nsome round trips failed or returned wrong bytes\n");
    return 1;
  }
  return 0;
}
