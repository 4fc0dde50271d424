// Benchmark of the CUDA attention kernels: fixed-length prefill (TFLOPS) and paged decode (KV-read
// GB/s against a device-to-device copy measured in the same run). CUDA events around each call,
// warm-up first, median of --reps (>= 30), inputs rotated over enough copies to exceed the L2
// cache. Prints markdown tables.
//
//   cuda_attention_benchmark [--reps 30] [--dtype fp16|bf16|fp32] [--head-dim D] [--seqlen S]
//                            [--no-decode]

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"

namespace flashkv::cuda {
namespace {

constexpr size_t kL2Bytes = 50u << 20;

#define BENCH_CHECK(expr)                                                          \
  do {                                                                             \
    const KernelStatus s_ = (expr);                                                \
    if (!s_.ok()) {                                                                \
      std::fprintf(stderr, "%s failed: %s\n", #expr, s_.ToString().c_str());      \
      std::exit(1);                                                                \
    }                                                                              \
  } while (0)
#define BENCH_CUDA(expr)                                                                   \
  do {                                                                                     \
    const cudaError_t e_ = (expr);                                                         \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(e_));              \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

// Device memory filled with random values of the dtype (never zeros: they run faster). The host
// draws at most kPatternElements values and the device repeats them by doubling copies: drawing
// every element on the host made the decode tables (GiBs of K/V) take minutes to set up. Repeated
// values change nothing in the timing: the kernels' cost does not depend on the values, and the
// rotated copies still occupy distinct addresses beyond the L2.
void* RandomDevice(size_t elements, DType dtype, uint32_t seed) {
  constexpr size_t kPatternElements = size_t{1} << 22;
  const size_t element_bytes = DTypeSize(dtype);
  const size_t pattern = std::min(elements, kPatternElements);
  std::vector<uint8_t> host(pattern * element_bytes);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  for (size_t i = 0; i < pattern; ++i) {
    const float x = normal(rng);
    if (dtype == DType::kFloat32) {
      std::memcpy(&host[4 * i], &x, 4);
    } else if (dtype == DType::kFloat16) {
      const uint16_t b = ToFloat16(x).bits;
      std::memcpy(&host[2 * i], &b, 2);
    } else {
      const uint16_t b = ToBFloat16(x).bits;
      std::memcpy(&host[2 * i], &b, 2);
    }
  }
  const size_t total_bytes = elements * element_bytes;
  void* ptr = nullptr;
  BENCH_CHECK(Malloc(&ptr, total_bytes));
  BENCH_CHECK(MemcpyHostToDevice(ptr, host.data(), host.size(), nullptr));
  auto* bytes = static_cast<uint8_t*>(ptr);
  for (size_t filled = host.size(); filled < total_bytes; filled *= 2) {
    BENCH_CHECK(MemcpyDeviceToDevice(bytes + filled, bytes, std::min(filled, total_bytes - filled),
                                     nullptr));
  }
  return ptr;
}

// Median milliseconds of run(i) over `reps` calls (i rotates the input set), after warm-up.
double MedianMs(const std::function<void(int)>& run, int reps) {
  for (int i = 0; i < 3; ++i) run(i);
  BENCH_CUDA(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    BENCH_CUDA(cudaEventRecord(start, nullptr));
    run(i);
    BENCH_CUDA(cudaEventRecord(stop, nullptr));
    BENCH_CUDA(cudaEventSynchronize(stop));
    BENCH_CUDA(cudaEventElapsedTime(&ms[i], start, stop));
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  std::nth_element(ms.begin(), ms.begin() + reps / 2, ms.end());
  return ms[reps / 2];
}

double CopyGBs(int reps) {
  const size_t bytes = size_t{2} << 30;
  void *src = nullptr, *dst = nullptr;
  BENCH_CHECK(Malloc(&src, bytes));
  BENCH_CHECK(Malloc(&dst, bytes));
  BENCH_CHECK(Memset(src, 1, bytes, nullptr));
  const double ms = MedianMs([&](int) { BENCH_CHECK(MemcpyDeviceToDevice(dst, src, bytes, nullptr)); }, reps);
  BENCH_CHECK(Free(src));
  BENCH_CHECK(Free(dst));
  return 2.0 * bytes / (ms * 1e-3) / 1e9;
}

void FixedTable(DType dtype, int reps, const std::vector<int>& head_dims,
                const std::vector<int>& seqlens) {
  std::printf("## Fixed-length (%s, B=2, H=32 (16 at D=256)), TFLOPS = 4*B*H*S^2*D (/2 causal)\n\n",
              DTypeName(dtype));
  std::printf("| D | S | causal | ms | TFLOPS |\n|---|---|---|---|---|\n");
  for (int d : head_dims) {
    if (!IsCompiled(dtype, d)) continue;
    const int h = d == 256 ? 16 : 32, b = 2;
    for (int s : seqlens) {
      const size_t elements = size_t{1} * b * h * s * d;
      const int sets = std::max<int>(1, static_cast<int>(std::ceil(4.0 * kL2Bytes / (4 * elements * DTypeSize(dtype)))));
      std::vector<void*> q, k, v, o;
      for (int i = 0; i < sets; ++i) {
        q.push_back(RandomDevice(elements, dtype, 4 * i));
        k.push_back(RandomDevice(elements, dtype, 4 * i + 1));
        v.push_back(RandomDevice(elements, dtype, 4 * i + 2));
        o.push_back(RandomDevice(elements, dtype, 4 * i + 3));
      }
      for (bool causal : {false, true}) {
        AttentionOptions options;
        options.causal = causal;
        const double ms = MedianMs(
            [&](int i) {
              const int j = i % sets;
              BENCH_CHECK(Attention(MakeDenseFixedArgs(dtype, b, s, s, h, h, d, q[j], k[j], v[j], o[j],
                                                       nullptr, options),
                                    nullptr));
            },
            reps);
        const double flops = 4.0 * b * h * s * double(s) * d / (causal ? 2 : 1);
        std::printf("| %d | %d | %s | %.3f | %.0f |\n", d, s, causal ? "yes" : "no", ms,
                    flops / (ms * 1e-3) / 1e12);
      }
      for (int i = 0; i < sets; ++i) {
        BENCH_CHECK(Free(q[i]));
        BENCH_CHECK(Free(k[i]));
        BENCH_CHECK(Free(v[i]));
        BENCH_CHECK(Free(o[i]));
      }
    }
  }
  std::printf("\n");
}

void DecodeTable(int reps, double copy_gbs) {
  const DType dtype = DType::kFloat16;
  const int hq = 32, hkv = 8, d = 128, page = 16;
  if (!IsCompiled(dtype, d)) return;
  std::printf("## Paged decode (fp16, Hq=32, Hkv=8, D=128, page 16); copy %.0f GB/s\n\n", copy_gbs);
  std::printf("| batch | context | us | KV GB/s | %% of copy |\n|---|---|---|---|---|\n");
  for (int batch : {1, 8, 32, 128, 256}) {
    for (int ctx : {1024, 4096, 16384, 32768}) {
      const double kv_bytes = 2.0 * batch * ctx * hkv * d * 2;
      if (kv_bytes > 8.0 * (1u << 30)) continue;
      const int blocks_per = (ctx + page - 1) / page;
      const int blocks = batch * blocks_per;
      const size_t pool_elements = size_t{1} * blocks * hkv * page * d;
      std::vector<int32_t> table(size_t{1} * batch * blocks_per), cu_q(batch + 1), cu_kv(batch + 1);
      std::iota(table.begin(), table.end(), 0);
      std::shuffle(table.begin(), table.end(), std::mt19937(1));
      for (int i = 0; i <= batch; ++i) cu_q[i] = i, cu_kv[i] = i * ctx;
      void* k_pool = RandomDevice(pool_elements, dtype, 1);
      void* v_pool = RandomDevice(pool_elements, dtype, 2);
      void* q = RandomDevice(size_t{1} * batch * hq * d, dtype, 3);
      void* out = RandomDevice(size_t{1} * batch * hq * d, dtype, 4);
      void *d_table = nullptr, *d_cq = nullptr, *d_ckv = nullptr;
      BENCH_CHECK(Malloc(&d_table, table.size() * 4));
      BENCH_CHECK(Malloc(&d_cq, cu_q.size() * 4));
      BENCH_CHECK(Malloc(&d_ckv, cu_kv.size() * 4));
      BENCH_CHECK(MemcpyHostToDevice(d_table, table.data(), table.size() * 4, nullptr));
      BENCH_CHECK(MemcpyHostToDevice(d_cq, cu_q.data(), cu_q.size() * 4, nullptr));
      BENCH_CHECK(MemcpyHostToDevice(d_ckv, cu_kv.data(), cu_kv.size() * 4, nullptr));
      PagedAttentionArgs a;
      a.dtype = dtype;
      a.num_seqs = batch;
      a.num_heads_q = hq;
      a.num_heads_kv = hkv;
      a.head_dim = d;
      a.total_q = batch;
      a.max_seqlen_q = 1;
      a.max_seqlen_kv = ctx;
      a.q = q, a.q_strides = DenseStrides(0, hq, d);
      a.out = out, a.out_strides = DenseStrides(0, hq, d);
      a.k_cache = k_pool, a.v_cache = v_pool;
      a.cache_strides = DensePoolStrides(hkv, page, d);
      a.num_blocks = blocks;
      a.page_size = page;
      a.block_table = static_cast<const int32_t*>(d_table);
      a.block_table_stride = blocks_per;
      a.cu_seqlens_q = static_cast<const int32_t*>(d_cq);
      a.cu_seqlens_kv = static_cast<const int32_t*>(d_ckv);
      a.host_block_table = table.data();
      a.host_cu_seqlens_q = cu_q.data();
      a.host_cu_seqlens_kv = cu_kv.data();
      a.options.causal = true;
      // Capture one call in a graph: replays time the GPU work without the host-side validation of
      // the block table (which the events would otherwise include when the GPU waits for it).
      cudaStream_t stream;
      BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
      BENCH_CHECK(AttentionPaged(a, stream));  // warm-up outside capture (kernel attributes)
      BENCH_CUDA(cudaStreamSynchronize(stream));
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      BENCH_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      BENCH_CHECK(AttentionPaged(a, stream));
      BENCH_CUDA(cudaStreamEndCapture(stream, &graph));
      BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
      const double ms = MedianMs([&](int) { BENCH_CUDA(cudaGraphLaunch(exec, nullptr)); }, reps);
      const double gbs = kv_bytes / (ms * 1e-3) / 1e9;
      std::printf("| %d | %d | %.0f | %.0f | %.0f%% |\n", batch, ctx, ms * 1e3, gbs, 100 * gbs / copy_gbs);
      BENCH_CUDA(cudaGraphExecDestroy(exec));
      BENCH_CUDA(cudaGraphDestroy(graph));
      BENCH_CUDA(cudaStreamDestroy(stream));
      for (void* p : {k_pool, v_pool, q, out, d_table, d_cq, d_ckv}) BENCH_CHECK(Free(p));
    }
  }
  std::printf("\n");
}

}  // namespace
}  // namespace flashkv::cuda

int main(int argc, char** argv) {
  using namespace flashkv;
  int reps = 30;
  std::vector<DType> dtypes = {DType::kFloat16, DType::kBFloat16};
  std::vector<int> head_dims = {64, 128, 256};
  std::vector<int> seqlens = {512, 1024, 2048, 4096, 8192, 16384};
  bool decode = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::max(30, std::atoi(argv[++i]));
    if (std::strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
      const auto dtype = ParseDType(argv[++i]);
      if (!dtype) return std::fprintf(stderr, "unknown dtype %s\n", argv[i]), 2;
      dtypes = {*dtype};
    }
    if (std::strcmp(argv[i], "--head-dim") == 0 && i + 1 < argc) head_dims = {std::atoi(argv[++i])};
    if (std::strcmp(argv[i], "--seqlen") == 0 && i + 1 < argc) seqlens = {std::atoi(argv[++i])};
    if (std::strcmp(argv[i], "--no-decode") == 0) decode = false;
  }
  if (cuda::DeviceCount() == 0) {
    std::printf("no CUDA device: nothing to measure\n");
    return 0;
  }
  cuda::DeviceInfo info;
  if (!cuda::GetDeviceInfo(0, &info).ok()) return 1;
  std::printf("# CUDA attention benchmark: %s, %d SMs, median of %d\n\n", info.name.c_str(),
              info.multiprocessor_count, reps);
  const double copy_gbs = cuda::CopyGBs(reps);
  std::printf("Device-to-device copy (bytes read + written): %.0f GB/s\n\n", copy_gbs);
  for (DType dtype : dtypes) cuda::FixedTable(dtype, reps, head_dims, seqlens);
  if (decode) cuda::DecodeTable(reps, copy_gbs);
  return 0;
}
