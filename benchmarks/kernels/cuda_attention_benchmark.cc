// Benchmark of the CUDA attention kernels: fixed-length prefill (TFLOPS), paged prefill against the
// same problem on contiguous K/V (the ratio of the two calls, and the kernel each took), and paged
// decode (KV-read GB/s against a device-to-device copy measured in the same run). CUDA events
// around each call (paged and varlen calls as CUDA graph replays, so that host-side validation of
// the block table stays out of the numbers), warm-up first, median of --reps (>= 30), inputs
// rotated over enough copies to exceed the L2 cache. Prints markdown tables.
//
//   cuda_attention_benchmark [--reps 30] [--dtype fp16|bf16|fp32] [--head-dim D]
//                            [--seqlen S[,S...]] [--no-fixed] [--no-paged-prefill] [--no-decode]
//                            [--sm90-variant N]
// --sm90-variant: the sm90 kernel variant every call takes (sm90/tile_shape.h's Sm90Variant
// numbers; default the shipped one, kAuto), so that two runs compare variants of the paged and
// contiguous kernels alike.

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"
#include "kernel_path.h"
#include "sm90/host_setup.h"

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

// Median milliseconds of each call captured in its own CUDA graph and replayed (the replays time
// the GPU work alone), the calls' replays taking turns: 0, 1, ..., 0, 1, ... A table's calls run
// for seconds under full load, over which the GPU's clocks and temperature drift; taking turns
// spreads that drift over the calls a ratio compares instead of handing it to whichever ran later.
// Each call runs once outside capture first (kernel attributes, warm-up).
std::vector<double> GraphMediansMs(const std::vector<std::function<KernelStatus(Stream)>>& calls,
                                   int reps) {
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<cudaGraph_t> graphs(calls.size());
  std::vector<cudaGraphExec_t> execs(calls.size());
  for (size_t k = 0; k < calls.size(); ++k) {
    BENCH_CHECK(calls[k](stream));
    BENCH_CUDA(cudaStreamSynchronize(stream));
    BENCH_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    BENCH_CHECK(calls[k](stream));
    BENCH_CUDA(cudaStreamEndCapture(stream, &graphs[k]));
    BENCH_CUDA(cudaGraphInstantiate(&execs[k], graphs[k], 0));
  }
  for (cudaGraphExec_t exec : execs) BENCH_CUDA(cudaGraphLaunch(exec, nullptr));
  BENCH_CUDA(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  std::vector<std::vector<float>> ms(calls.size(), std::vector<float>(reps));
  for (int i = 0; i < reps; ++i) {
    for (size_t k = 0; k < calls.size(); ++k) {
      BENCH_CUDA(cudaEventRecord(start, nullptr));
      BENCH_CUDA(cudaGraphLaunch(execs[k], nullptr));
      BENCH_CUDA(cudaEventRecord(stop, nullptr));
      BENCH_CUDA(cudaEventSynchronize(stop));
      BENCH_CUDA(cudaEventElapsedTime(&ms[k][i], start, stop));
    }
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  std::vector<double> medians;
  for (size_t k = 0; k < calls.size(); ++k) {
    std::nth_element(ms[k].begin(), ms[k].begin() + reps / 2, ms[k].end());
    medians.push_back(ms[k][reps / 2]);
    BENCH_CUDA(cudaGraphExecDestroy(execs[k]));
    BENCH_CUDA(cudaGraphDestroy(graphs[k]));
  }
  BENCH_CUDA(cudaStreamDestroy(stream));
  return medians;
}

double GraphMedianMs(const std::function<KernelStatus(Stream)>& call, int reps) {
  return GraphMediansMs({call}, reps)[0];
}

void* DeviceCopy(const std::vector<int32_t>& host) {
  void* ptr = nullptr;
  BENCH_CHECK(Malloc(&ptr, host.size() * 4));
  BENCH_CHECK(MemcpyHostToDevice(ptr, host.data(), host.size() * 4, nullptr));
  return ptr;
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

// Paged prefill: B sequences of S new tokens over S keys each (the first chunk of a prompt), K/V
// in shuffled pool blocks, against the same call on contiguous (varlen) K/V. Issue 10's target:
// paged within 10% of contiguous for pages of 64 keys or more (the sm90 kernel loads them by TMA,
// page by page); 16-key pages show the sm80 row-gather path beside it. Pages holding whole sm90
// K/V tiles are timed with both box shapes (one box per tile, the default, and 64-key boxes), and
// every call of a (D, S, causal) row group takes turns with the others (GraphMediansMs).
struct PagedPrefillShape {
  int batch, heads_q, heads_kv, head_dim, seqlen;
};

// K/V pools of `page`-key blocks holding B sequences of S keys, the table shuffled. The values are
// random (any values do: only the addressing differs from the contiguous run).
struct PagedPool {
  int page = 0;
  int blocks_per_seq = 0;
  std::vector<int32_t> table;
  void* k = nullptr;
  void* v = nullptr;
  void* d_table = nullptr;

  PagedPool(DType dtype, const PagedPrefillShape& sh, int page_size) : page(page_size) {
    blocks_per_seq = (sh.seqlen + page - 1) / page;
    table.resize(size_t{1} * sh.batch * blocks_per_seq);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(page));
    const size_t elements = table.size() * sh.heads_kv * page * sh.head_dim;
    k = RandomDevice(elements, dtype, 11);
    v = RandomDevice(elements, dtype, 12);
    d_table = DeviceCopy(table);
  }
  PagedPool(const PagedPool&) = delete;
  PagedPool& operator=(const PagedPool&) = delete;
  ~PagedPool() {
    for (void* p : {k, v, d_table}) BENCH_CHECK(Free(p));
  }
};

// The varlen call's arguments with the same queries, outputs and lengths, over `pool`.
PagedAttentionArgs PagedArgs(const VarlenAttentionArgs& c, const PagedPool& pool) {
  PagedAttentionArgs a;
  a.dtype = c.dtype;
  a.num_seqs = c.num_seqs;
  a.num_heads_q = c.num_heads_q;
  a.num_heads_kv = c.num_heads_kv;
  a.head_dim = c.head_dim;
  a.total_q = c.total_q;
  a.max_seqlen_q = c.max_seqlen_q;
  a.max_seqlen_kv = c.max_seqlen_kv;
  a.q = c.q, a.q_strides = c.q_strides;
  a.out = c.out, a.out_strides = c.out_strides;
  a.k_cache = pool.k, a.v_cache = pool.v;
  a.cache_strides = DensePoolStrides(c.num_heads_kv, pool.page, c.head_dim);
  a.num_blocks = static_cast<int>(pool.table.size());
  a.page_size = pool.page;
  a.block_table = static_cast<const int32_t*>(pool.d_table);
  a.block_table_stride = pool.blocks_per_seq;
  a.cu_seqlens_q = c.cu_seqlens_q;
  a.cu_seqlens_kv = c.cu_seqlens_kv;
  a.host_block_table = pool.table.data();
  a.host_cu_seqlens_q = c.host_cu_seqlens_q;
  a.host_cu_seqlens_kv = c.host_cu_seqlens_kv;
  a.options = c.options;
  return a;
}

void PagedPrefillTable(DType dtype, int reps, const std::vector<int>& head_dims,
                       const std::vector<int>& seqlens) {
  if (dtype == DType::kFloat32) return;
  std::printf(
      "## Paged prefill vs contiguous K/V (%s, B=4, Hq=32, Hkv=8), TFLOPS = 4*B*Hq*S^2*D "
      "(/2 causal)\n\n",
      DTypeName(dtype));
  std::printf(
      "| D | S | causal | page | box | kernel | ms | TFLOPS | contiguous kernel | ms | TFLOPS | "
      "paged / contiguous time |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int d : head_dims) {
    if (!IsCompiled(dtype, d)) continue;
    for (int s : seqlens) {
      const PagedPrefillShape sh{4, 32, 8, d, s};
      const int64_t tokens = int64_t{sh.batch} * s;
      std::vector<int32_t> cu(sh.batch + 1);
      for (int b = 0; b <= sh.batch; ++b) cu[b] = b * s;
      void* q = RandomDevice(size_t{1} * tokens * sh.heads_q * d, dtype, 1);
      void* out = RandomDevice(size_t{1} * tokens * sh.heads_q * d, dtype, 2);
      void* k = RandomDevice(size_t{1} * tokens * sh.heads_kv * d, dtype, 3);
      void* v = RandomDevice(size_t{1} * tokens * sh.heads_kv * d, dtype, 4);
      void* d_cu = DeviceCopy(cu);
      std::vector<std::unique_ptr<PagedPool>> pools;
      for (int page : {16, 64, 128, 256}) {
        pools.push_back(std::make_unique<PagedPool>(dtype, sh, page));
      }
      for (bool causal : {false, true}) {
        VarlenAttentionArgs c;
        c.dtype = dtype;
        c.num_seqs = sh.batch;
        c.num_heads_q = sh.heads_q;
        c.num_heads_kv = sh.heads_kv;
        c.head_dim = d;
        c.total_q = c.total_kv = tokens;
        c.max_seqlen_q = c.max_seqlen_kv = s;
        c.q = q, c.q_strides = DenseStrides(0, sh.heads_q, d);
        c.k = k, c.k_strides = DenseStrides(0, sh.heads_kv, d);
        c.v = v, c.v_strides = DenseStrides(0, sh.heads_kv, d);
        c.out = out, c.out_strides = DenseStrides(0, sh.heads_q, d);
        c.cu_seqlens_q = c.cu_seqlens_kv = static_cast<const int32_t*>(d_cu);  // q_len = kv_len
        c.host_cu_seqlens_q = c.host_cu_seqlens_kv = cu.data();
        c.options.causal = causal;
        KernelPath contiguous_path = KernelPath::kSimt;
        BENCH_CHECK(testing::PathOf(c, &contiguous_path));
        // Call 0 is the contiguous one; then one per (pool, box), the box forced while the call
        // is captured (the tensor maps are encoded then).
        struct Variant {
          const PagedPool* pool;
          PagedAttentionArgs args;
          KernelPath path = KernelPath::kSimt;
          int box = 0;  // 0: not the sm90 kernel
        };
        std::vector<Variant> variants;
        for (const auto& pool : pools) {
          Variant v{pool.get(), PagedArgs(c, *pool)};
          BENCH_CHECK(testing::PathOf(v.args, &v.path));
          if (v.path != KernelPath::kSm90) {
            variants.push_back(v);
            continue;
          }
          // The pool's tile under the active variant (kPagedKeys80: 80-key tiles split at pages,
          // one call; else 64-key boxes or whole-tile boxes, both shapes timed).
          const sm90::TileKind kind = sm90::ChooseTileKind(d, /*paged=*/true, /*varlen=*/true,
                                                           causal, s, s, pool->page);
          const bool split = sm90::IsPagedSplitKind(kind);
          const int block_n = sm90::ChooseTileShape(d, /*paged=*/true, kind).block_n;
          v.box = split ? block_n : sm90::PagedBoxRows(pool->page, block_n);
          variants.push_back(v);
          if (!split && v.box != sm90::kPagedBoxRows) {
            v.box = sm90::kPagedBoxRows;
            variants.push_back(v);
          }
        }
        std::vector<std::function<KernelStatus(Stream)>> calls = {
            [&](Stream stream) { return AttentionVarlen(c, stream); }};
        for (const Variant& v : variants) {
          calls.push_back([&v](Stream stream) {
            sm90::testing::ForcePagedBoxRows(v.box);
            const KernelStatus status = AttentionPaged(v.args, stream);
            sm90::testing::ForcePagedBoxRows(0);
            return status;
          });
        }
        const std::vector<double> ms = GraphMediansMs(calls, reps);
        const double flops = 4.0 * tokens * sh.heads_q * double(s) * d / (causal ? 2 : 1);
        for (size_t i = 0; i < variants.size(); ++i) {
          const Variant& v = variants[i];
          std::printf("| %d | %d | %s | %d | %s | %s | %.3f | %.0f | %s | %.3f | %.0f | %.3f |\n",
                      d, s, causal ? "yes" : "no", v.pool->page,
                      v.box > 0 ? std::to_string(v.box).c_str() : "-", KernelPathName(v.path),
                      ms[i + 1], flops / (ms[i + 1] * 1e-3) / 1e12,
                      KernelPathName(contiguous_path), ms[0], flops / (ms[0] * 1e-3) / 1e12,
                      ms[i + 1] / ms[0]);
        }
      }
      for (void* p : {q, out, k, v, d_cu}) BENCH_CHECK(Free(p));
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
      void* d_table = DeviceCopy(table);
      void* d_cq = DeviceCopy(cu_q);
      void* d_ckv = DeviceCopy(cu_kv);
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
      const double ms =
          GraphMedianMs([&](Stream stream) { return AttentionPaged(a, stream); }, reps);
      const double gbs = kv_bytes / (ms * 1e-3) / 1e9;
      std::printf("| %d | %d | %.0f | %.0f | %.0f%% |\n", batch, ctx, ms * 1e3, gbs,
                  100 * gbs / copy_gbs);
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
  bool decode = true, fixed = true, paged_prefill = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::max(30, std::atoi(argv[++i]));
    if (std::strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
      const auto dtype = ParseDType(argv[++i]);
      if (!dtype) return std::fprintf(stderr, "unknown dtype %s\n", argv[i]), 2;
      dtypes = {*dtype};
    }
    if (std::strcmp(argv[i], "--head-dim") == 0 && i + 1 < argc) head_dims = {std::atoi(argv[++i])};
    if (std::strcmp(argv[i], "--seqlen") == 0 && i + 1 < argc) {  // S or S,S,...
      seqlens.clear();
      std::stringstream list(argv[++i]);
      for (std::string item; std::getline(list, item, ',');) {
        seqlens.push_back(std::atoi(item.c_str()));
      }
    }
    if (std::strcmp(argv[i], "--no-fixed") == 0) fixed = false;
    if (std::strcmp(argv[i], "--no-paged-prefill") == 0) paged_prefill = false;
    if (std::strcmp(argv[i], "--no-decode") == 0) decode = false;
    if (std::strcmp(argv[i], "--sm90-variant") == 0 && i + 1 < argc) {
      const int variant = std::atoi(argv[++i]);
      if (variant < 0 || variant >= cuda::sm90::kNumSm90Variants) {
        return std::fprintf(stderr, "--sm90-variant: 0..%d\n", cuda::sm90::kNumSm90Variants - 1), 2;
      }
      cuda::sm90::testing::SetVariant(static_cast<cuda::sm90::Sm90Variant>(variant));
    }
  }
  if (cuda::DeviceCount() == 0) {
    std::printf("no CUDA device: nothing to measure\n");
    return 0;
  }
  cuda::DeviceInfo info;
  if (!cuda::GetDeviceInfo(0, &info).ok()) return 1;
  std::printf("# CUDA attention benchmark: %s, %d SMs, median of %d, sm90 variant %d\n\n",
              info.name.c_str(), info.multiprocessor_count, reps,
              static_cast<int>(cuda::sm90::ActiveVariant()));
  const double copy_gbs = cuda::CopyGBs(reps);
  std::printf("Device-to-device copy (bytes read + written): %.0f GB/s\n\n", copy_gbs);
  if (fixed) {
    for (DType dtype : dtypes) cuda::FixedTable(dtype, reps, head_dims, seqlens);
  }
  if (paged_prefill) {
    // Prefill chunks of 1k and more (shorter ones are few tiles either way).
    std::vector<int> prefill;
    for (int s : seqlens) {
      if (s >= 1024) prefill.push_back(s);
    }
    for (DType dtype : dtypes) cuda::PagedPrefillTable(dtype, reps, head_dims, prefill);
  }
  if (decode) cuda::DecodeTable(reps, copy_gbs);
  return 0;
}
