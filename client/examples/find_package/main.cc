// flashkv_hello: the smallest program on the installed client library. It asks the server for
// its model, creates a sequence, sends one token through every layer and frees the sequence.
// Exit code 0 on success, 1 on any error (printed with the server's code and message).

#include <unistd.h>

#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "flashkv/client/client.h"

int main(int argc, char** argv) {
  flashkv::ClientConfig config;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--target") == 0) config.channel.target = argv[i + 1];
  }
  config.default_timeout = absl::Seconds(10);
  absl::StatusOr<std::unique_ptr<flashkv::Client>> client = flashkv::Client::Create(config);
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  absl::StatusOr<flashkv::v1::CacheInfo> info = (*client)->GetCacheInfo();
  if (!info.ok()) {
    std::cerr << "GetCacheInfo: " << info.status() << "\n";
    return 1;
  }
  std::cout << "model: " << info->num_layers() << " layers, " << info->num_q_heads() << "/"
            << info->num_kv_heads() << " heads, head dim " << info->head_dim() << "\n";

  const absl::StatusOr<flashkv::DType> dtype = flashkv::FromProtoDType(info->dtype(), "dtype");
  if (!dtype.ok()) {
    std::cerr << dtype.status() << "\n";
    return 1;
  }
  const std::string id = "hello-" + std::to_string(::getpid());
  if (absl::StatusOr<uint32_t> cached = (*client)->CreateSequence(id); !cached.ok()) {
    std::cerr << "CreateSequence: " << cached.status() << "\n";
    return 1;
  }
  const int64_t hq = info->num_q_heads(), hkv = info->num_kv_heads(), d = info->head_dim();
  std::vector<float> values(hq * d);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.01f * static_cast<float>(i % 97) - 0.4f;
  auto q = flashkv::HostTensor::FromFloats(*dtype, {1, hq, d}, values);
  auto kv = flashkv::HostTensor::FromFloats(*dtype, {1, hkv, d},
                                            absl::Span<const float>(values.data(), hkv * d));
  int status = 0;
  for (uint32_t layer = 0; layer < info->num_layers() && status == 0; ++layer) {
    flashkv::StepInput input{id, q->view(), kv->view(), kv->view(), {}};
    absl::StatusOr<std::vector<flashkv::HostTensor>> out = (*client)->Step(layer, {input});
    if (!out.ok()) {
      std::cerr << "Step: " << out.status() << "\n";
      status = 1;
      break;
    }
    // One token attends to itself only: every head's output is its v.
    std::cout << "layer " << layer << ": out[0] = " << (*out)[0].view().GetFloat(0)
              << " (v[0] = " << kv->view().GetFloat(0) << ")\n";
  }
  if (absl::Status s = (*client)->FreeSequence(id); !s.ok()) {
    std::cerr << "FreeSequence: " << s << "\n";
    status = 1;
  }
  return status;
}
