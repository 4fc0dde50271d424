// A model runner's use of flashkv, in miniature: sequences are prefilled and then decoded, one
// Step per layer per forward pass, over one StepStream. The batch is split into two micro-batches
// so the stream is pipelined the way a real model can be: while micro-batch A's layer l is at the
// server, B's layer l is sent (a model cannot send layer l + 1 of the same batch before layer l's
// output exists). Every output is checked against flashkv::cpu over the K/V kept locally.
//
//   flashkv_model_runner [--target 127.0.0.1:50051] [--sequences 4] [--prompt 48] [--decode 8]
// Exit code 0 when every output matched, 1 on an error or a mismatch.

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "flashkv/client/client.h"
#include "flashkv/cpu_backend.h"

namespace {

struct Sequence {
  std::string id;
  std::vector<std::vector<float>> k, v;  // per layer, every token's [Hkv, D] rows, as sent
};

struct Model {
  int layers, hq, hkv, d;
  flashkv::DType dtype;
};

// Values as the wire will carry them (rounded to the model's dtype), so the local check sees
// exactly the server's inputs.
std::vector<float> Random(size_t n, flashkv::DType dtype, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (float& e : x) e = dist(rng);
  flashkv::HostTensor t = *flashkv::HostTensor::FromFloats(dtype, {int64_t(n)}, x);
  return t.ToFloats();
}

flashkv::v1::StepRequest BuildLayer(const Model& m, int layer, std::vector<Sequence*>& batch, int n,
                                    std::vector<std::vector<float>>* queries, std::mt19937& rng) {
  flashkv::v1::StepRequest request;
  request.set_layer(layer);
  queries->clear();
  for (Sequence* s : batch) {
    flashkv::v1::StepEntry* e = request.add_entries();
    e->set_sequence_id(s->id);
    queries->push_back(Random(size_t(n) * m.hq * m.d, m.dtype, rng));
    const std::vector<float> k = Random(size_t(n) * m.hkv * m.d, m.dtype, rng);
    const std::vector<float> v = Random(size_t(n) * m.hkv * m.d, m.dtype, rng);
    s->k[layer].insert(s->k[layer].end(), k.begin(), k.end());
    s->v[layer].insert(s->v[layer].end(), v.begin(), v.end());
    std::move(*flashkv::HostTensor::FromFloats(m.dtype, {n, m.hq, m.d}, queries->back()))
        .MoveToProto(e->mutable_q());
    std::move(*flashkv::HostTensor::FromFloats(m.dtype, {n, m.hkv, m.d}, k))
        .MoveToProto(e->mutable_k());
    std::move(*flashkv::HostTensor::FromFloats(m.dtype, {n, m.hkv, m.d}, v))
        .MoveToProto(e->mutable_v());
  }
  return request;
}

// Largest |server - CPU| over a response; the CPU runs in float32 on the same rounded inputs.
double Check(const Model& m, int layer, int n, const std::vector<Sequence*>& batch,
             const std::vector<std::vector<float>>& queries,
             const flashkv::v1::StepResponse& response) {
  double worst = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const std::vector<float>& k = batch[i]->k[layer];
    const int context = static_cast<int>(k.size() / (m.hkv * m.d));
    std::vector<float> want(queries[i].size());
    flashkv::AttentionOptions options;
    options.causal = true;
    flashkv::FixedAttentionArgs args = flashkv::MakeDenseFixedArgs(
        flashkv::DType::kFloat32, 1, n, context, m.hq, m.hkv, m.d, queries[i].data(), k.data(),
        batch[i]->v[layer].data(), want.data(), nullptr, options);
    if (flashkv::KernelStatus s = flashkv::cpu::Attention(args); !s.ok()) {
      std::cerr << "CPU attention: " << s.ToString() << "\n";
      return INFINITY;
    }
    flashkv::v1::Tensor out = response.out(static_cast<int>(i));
    const std::vector<float> got =
        flashkv::HostTensor::FromProto(std::move(out), "out")->ToFloats();
    for (size_t j = 0; j < got.size(); ++j) {
      worst = std::max(worst, double(std::fabs(got[j] - want[j])));
    }
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  flashkv::ClientConfig config;
  int sequences = 4, prompt = 48, decode = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--target")) config.channel.target = argv[i + 1];
    if (!std::strcmp(argv[i], "--sequences")) sequences = std::max(2, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--prompt")) prompt = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--decode")) decode = std::max(0, std::atoi(argv[i + 1]));
  }
  auto client = flashkv::Client::Create(config);
  absl::StatusOr<flashkv::v1::CacheInfo> info =
      client.ok() ? (*client)->GetCacheInfo()
                  : absl::StatusOr<flashkv::v1::CacheInfo>(client.status());
  if (!info.ok()) {
    std::cerr << "flashkv_model_runner: " << info.status() << "\n";
    return 1;
  }
  const Model m{int(info->num_layers()), int(info->num_q_heads()), int(info->num_kv_heads()),
                int(info->head_dim()), *flashkv::FromProtoDType(info->dtype(), "dtype")};
  // bf16 rounds P and the output coarsely; fp16 less; fp32 only by accumulation order.
  const double tolerance = m.dtype == flashkv::DType::kBFloat16  ? 3e-2
                           : m.dtype == flashkv::DType::kFloat16 ? 4e-3
                                                                 : 1e-4;
  std::vector<Sequence> all(sequences);
  std::vector<Sequence*> micro[2];
  for (int i = 0; i < sequences; ++i) {
    all[i].id = "example-" + std::to_string(::getpid()) + "-" + std::to_string(i);
    all[i].k.resize(m.layers);
    all[i].v.resize(m.layers);
    micro[i % 2].push_back(&all[i]);
    if (auto cached = (*client)->CreateSequence(all[i].id); !cached.ok()) {
      std::cerr << "CreateSequence: " << cached.status() << "\n";
      return 1;
    }
  }
  flashkv::StepSessionOptions options;
  options.routing_key = "example-" + std::to_string(::getpid());
  auto session = (*client)->OpenStepSession(options);
  std::mt19937 rng(1);
  double worst = 0;
  int exit_code = 0;
  // Pass 0 prefills the prompt; then one token per pass.
  for (int pass = 0; pass <= decode && exit_code == 0; ++pass) {
    const int n = pass == 0 ? prompt : 1;
    for (int layer = 0; layer < m.layers && exit_code == 0; ++layer) {
      std::vector<std::vector<float>> queries[2];
      for (int b = 0; b < 2; ++b) {  // both micro-batches on the wire before either answer
        absl::StatusOr<uint64_t> sent =
            (*session)->Send(BuildLayer(m, layer, micro[b], n, &queries[b], rng));
        if (!sent.ok()) exit_code = 1;
      }
      for (int b = 0; b < 2 && exit_code == 0; ++b) {
        absl::StatusOr<flashkv::v1::StepResponse> response = (*session)->Receive();
        if (!response.ok()) {
          std::cerr << "Step: " << response.status() << "\n";
          exit_code = 1;
          break;
        }
        worst = std::max(worst, Check(m, layer, n, micro[b], queries[b], *response));
      }
    }
  }
  if (exit_code == 0) exit_code = (*session)->Finish().ok() ? 0 : 1;
  for (const Sequence& s : all) {
    if (!(*client)->FreeSequence(s.id).ok()) exit_code = 1;
  }
  std::cout << sequences << " sequences, prompt " << prompt << ", " << decode << " decodes, "
            << m.layers << " layers: max |server - CPU| = " << worst << " (tolerance " << tolerance
            << ")\n";
  return exit_code == 0 && worst <= tolerance ? 0 : 1;
}
