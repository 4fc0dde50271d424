#pragma once

// Runs of the public CUDA calls on a test Problem (cuda_test_util.h): fixed, varlen or paged
// layouts, inputs uploaded in the dtype, outputs and LSE poisoned first and read back as
// [Tq, Hq, D] / [Hq, Tq]. Optionally
// reports which kernel the call takes (kernel_path.h) before running it.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_test_util.h"
#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"
#include "gtest/gtest.h"
#include "kernel_path.h"
#include "reference.h"
#include "sm90/tile_shape.h"

namespace flashkv::cuda::test {

struct Result {
  std::vector<float> out;  // [Tq, Hq, D]
  std::vector<float> lse;  // [Hq, Tq]
};

struct RunOptions {
  bool simt_reference = false;  // run the SIMT kernel instead of the public call
  // Fixed layout only: q, k, v and out as [B, H, S, D] (head stride > row stride) instead of the
  // dense [B, S, H, D].
  bool heads_outer = false;
  KernelPath* path = nullptr;  // receives the kernel the public call takes
};

inline RunOptions SimtReference() {
  RunOptions opt;
  opt.simt_reference = true;
  return opt;
}

// The parameter of the per-instantiation suites, and its test-name suffix ("fp16_d128").
using DTypeHeadDim = std::tuple<DType, int>;

inline std::string DTypeHeadDimName(const ::testing::TestParamInfo<DTypeHeadDim>& info) {
  return std::string(DTypeName(std::get<0>(info.param))) + "_d" +
         std::to_string(std::get<1>(info.param));
}

// The parameter of the sm90 suites, every case under one kernel variant (set process-wide for the
// case), and its test-name suffix ("fp16_d128_baseline").
using Sm90Case = std::tuple<DType, int, sm90::Sm90Variant>;

inline std::string Sm90CaseName(const ::testing::TestParamInfo<Sm90Case>& info) {
  return DTypeHeadDimName(::testing::TestParamInfo<DTypeHeadDim>(
             DTypeHeadDim(std::get<0>(info.param), std::get<1>(info.param)), info.index)) +
         "_" + sm90::Sm90VariantName(std::get<2>(info.param));
}

// Why the sm90 tests of (dtype, head dim) cannot run here (no device, not compute capability
// 9.0, no such sm90 kernel in the build), or nullptr.
inline const char* Sm90SkipReason(DType dtype, int head_dim, bool paged) {
  if (!HaveDevice()) return "no CUDA device (sm_80+)";
  DeviceInfo info;
  if (!GetDeviceInfo(0, &info).ok()) return "device query failed";
  if (info.compute_capability_major != 9 || info.compute_capability_minor != 0) {
    return "the sm90 kernels run on compute capability 9.0 only";
  }
  if (!IsSm90Compiled(dtype, head_dim, paged)) {
    return paged ? "no sm90 paged kernel compiled (FLASHKV_ENABLE_SM90_PAGED)"
                 : "no sm90 kernel compiled";
  }
  return nullptr;
}

// Reports the kernel the public call with `args` takes (when asked), runs `call(args)` and waits
// for it.
template <class Args, class Call>
void RunChecked(const Args& args, const RunOptions& opt, Call call) {
  if (opt.path != nullptr) {
    const KernelStatus found = testing::PathOf(args, opt.path);
    EXPECT_TRUE(found.ok()) << found.ToString();
  }
  const KernelStatus status = call(args);
  EXPECT_TRUE(status.ok()) << status.ToString();
  EXPECT_TRUE(StreamSynchronize(nullptr).ok());
}

// [B, S, H, D] <-> [B, H, S, D] for equal-length sequences.
inline std::vector<float> SwapRowsAndHeads(const std::vector<float>& x, int batch, int rows,
                                           int heads, int dim, bool to_heads_outer) {
  std::vector<float> y(x.size());
  for (int b = 0; b < batch; ++b) {
    for (int s = 0; s < rows; ++s) {
      for (int h = 0; h < heads; ++h) {
        const int64_t bshd = ((static_cast<int64_t>(b) * rows + s) * heads + h) * dim;
        const int64_t bhsd = ((static_cast<int64_t>(b) * heads + h) * rows + s) * dim;
        for (int e = 0; e < dim; ++e) {
          if (to_heads_outer) {
            y[bhsd + e] = x[bshd + e];
          } else {
            y[bshd + e] = x[bhsd + e];
          }
        }
      }
    }
  }
  return y;
}

// Fixed layout needs equal lengths: dense [B, S, H, D] is then the packed layout.
inline Result RunFixed(const Problem& p, const RunOptions& opt = {}) {
  const int batch = static_cast<int>(p.q_lens.size());
  const int sq = p.q_lens[0], skv = p.kv_lens[0];
  const int d = p.head_dim;
  std::vector<float> q = p.q, k = p.k, v = p.v;
  if (opt.heads_outer) {
    q = SwapRowsAndHeads(q, batch, sq, p.heads_q, d, true);
    k = SwapRowsAndHeads(k, batch, skv, p.heads_kv, d, true);
    v = SwapRowsAndHeads(v, batch, skv, p.heads_kv, d, true);
  }
  DeviceBuffer dq(q.size() * DTypeSize(p.dtype)), dk(k.size() * DTypeSize(p.dtype) + 16),
      dv(v.size() * DTypeSize(p.dtype) + 16), dout(q.size() * DTypeSize(p.dtype)),
      dlse(p.total_q() * p.heads_q * 4);
  dq.Upload(Encode(p.dtype, q));
  dk.Upload(Encode(p.dtype, k));
  dv.Upload(Encode(p.dtype, v));
  dout.Poison();
  dlse.Poison();
  FixedAttentionArgs a = MakeDenseFixedArgs(p.dtype, batch, sq, skv, p.heads_q, p.heads_kv, d,
                                            dq.get(), dk.get(), dv.get(), dout.get(),
                                            static_cast<float*>(dlse.get()), p.options());
  if (opt.heads_outer) {
    a.q_strides = a.out_strides = {int64_t{p.heads_q} * sq * d, d, int64_t{sq} * d};
    a.k_strides = a.v_strides = {int64_t{p.heads_kv} * skv * d, d, int64_t{skv} * d};
  }
  RunChecked(a, opt, [&](const FixedAttentionArgs& args) {
    return opt.simt_reference ? testing::AttentionSimtReference(args, nullptr)
                              : Attention(args, nullptr);
  });
  Result r;
  r.out = Decode(p.dtype, dout.Download<uint8_t>(dout.bytes()));
  if (opt.heads_outer) r.out = SwapRowsAndHeads(r.out, batch, sq, p.heads_q, d, false);
  // [B, Hq, Sq] -> [Hq, Tq]
  const std::vector<float> lse = dlse.Download<float>(p.total_q() * p.heads_q);
  r.lse.resize(lse.size());
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < p.heads_q; ++h) {
      for (int i = 0; i < sq; ++i) {
        r.lse[static_cast<int64_t>(h) * p.total_q() + b * sq + i] =
            lse[(static_cast<int64_t>(b) * p.heads_q + h) * sq + i];
      }
    }
  }
  return r;
}

inline Result RunVarlen(const Problem& p, const RunOptions& opt = {}) {
  std::vector<float> q = p.q, k = p.k, v = p.v;
  const int es = DTypeSize(p.dtype);
  DeviceBuffer dq(q.size() * es), dk(k.size() * es + 16), dv(v.size() * es + 16),
      dout(q.size() * es), dlse(p.total_q() * p.heads_q * 4), dcq(p.cu_q.size() * 4),
      dckv(p.cu_kv.size() * 4);
  dq.Upload(Encode(p.dtype, q));
  dk.Upload(Encode(p.dtype, k));
  dv.Upload(Encode(p.dtype, v));
  dcq.Upload(p.cu_q);
  dckv.Upload(p.cu_kv);
  dout.Poison();
  dlse.Poison();
  VarlenAttentionArgs a;
  a.dtype = p.dtype;
  a.num_seqs = static_cast<int>(p.q_lens.size());
  a.num_heads_q = p.heads_q;
  a.num_heads_kv = p.heads_kv;
  a.head_dim = p.head_dim;
  a.total_q = p.total_q();
  a.total_kv = p.total_kv();
  a.max_seqlen_q = *std::max_element(p.q_lens.begin(), p.q_lens.end());
  a.max_seqlen_kv = *std::max_element(p.kv_lens.begin(), p.kv_lens.end());
  a.q = dq.get(), a.q_strides = DenseStrides(0, p.heads_q, p.head_dim);
  a.k = dk.get(), a.k_strides = DenseStrides(0, p.heads_kv, p.head_dim);
  a.v = dv.get(), a.v_strides = DenseStrides(0, p.heads_kv, p.head_dim);
  a.out = dout.get(), a.out_strides = DenseStrides(0, p.heads_q, p.head_dim);
  a.lse = static_cast<float*>(dlse.get());
  a.cu_seqlens_q = static_cast<const int32_t*>(dcq.get());
  a.cu_seqlens_kv = static_cast<const int32_t*>(dckv.get());
  a.host_cu_seqlens_q = p.cu_q.data();
  a.host_cu_seqlens_kv = p.cu_kv.data();
  a.options = p.options();
  RunChecked(a, opt,
             [](const VarlenAttentionArgs& args) { return AttentionVarlen(args, nullptr); });
  return Result{Decode(p.dtype, dout.Download<uint8_t>(dout.bytes())),
                dlse.Download<float>(p.total_q() * p.heads_q)};
}

// Paged: K/V scattered over a pool of shuffled blocks [blocks, Hkv, page, D], written through
// AppendKv (so the append kernel is exercised too, with padding slots of -1 mixed in).
inline Result RunPaged(const Problem& p, int page_size, const RunOptions& opt = {}) {
  const int es = DTypeSize(p.dtype);
  const int num_seqs = static_cast<int>(p.q_lens.size());
  int max_blocks = 1;
  int total_blocks = 0;
  for (int len : p.kv_lens) {
    const int blocks = (len + page_size - 1) / page_size;
    max_blocks = std::max(max_blocks, blocks);
    total_blocks += blocks;
  }
  const int pool_blocks = total_blocks + 3;  // spare blocks stay poisoned
  std::vector<int32_t> ids(pool_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(7));
  std::vector<int32_t> table(static_cast<size_t>(num_seqs) * max_blocks, -1);
  std::vector<int64_t> slots;  // per K/V row of the packed input, plus a padding row per seq
  std::vector<float> k_rows, v_rows;
  const int row = p.heads_kv * p.head_dim;
  int next = 0;
  for (int b = 0; b < num_seqs; ++b) {
    const int blocks = (p.kv_lens[b] + page_size - 1) / page_size;
    for (int i = 0; i < blocks; ++i) table[static_cast<size_t>(b) * max_blocks + i] = ids[next++];
    for (int t = 0; t < p.kv_lens[b]; ++t) {
      const int64_t block = table[static_cast<size_t>(b) * max_blocks + t / page_size];
      slots.push_back(block * page_size + t % page_size);
      const int64_t src = static_cast<int64_t>(p.cu_kv[b] + t) * row;
      k_rows.insert(k_rows.end(), p.k.begin() + src, p.k.begin() + src + row);
      v_rows.insert(v_rows.end(), p.v.begin() + src, p.v.begin() + src + row);
    }
    slots.push_back(-1);  // padding: skipped
    k_rows.insert(k_rows.end(), row, 1e4f);
    v_rows.insert(v_rows.end(), row, 1e4f);
  }
  const Strides pool_strides = DensePoolStrides(p.heads_kv, page_size, p.head_dim);
  const size_t pool_bytes = static_cast<size_t>(pool_blocks) * page_size * row * es;
  DeviceBuffer dkc(pool_bytes), dvc(pool_bytes), dk(k_rows.size() * es), dv(v_rows.size() * es),
      dslots(slots.size() * 8);
  dkc.Poison();
  dvc.Poison();
  dk.Upload(Encode(p.dtype, k_rows));
  dv.Upload(Encode(p.dtype, v_rows));
  dslots.Upload(slots);
  KvAppendArgs ap;
  ap.dtype = p.dtype;
  ap.num_tokens = static_cast<int64_t>(slots.size());
  ap.num_heads_kv = p.heads_kv;
  ap.head_dim = p.head_dim;
  ap.k = dk.get(), ap.k_strides = DenseStrides(0, p.heads_kv, p.head_dim);
  ap.v = dv.get(), ap.v_strides = DenseStrides(0, p.heads_kv, p.head_dim);
  ap.k_cache = dkc.get(), ap.v_cache = dvc.get();
  ap.cache_strides = pool_strides;
  ap.num_blocks = pool_blocks;
  ap.page_size = page_size;
  ap.slot_mapping = static_cast<const int64_t*>(dslots.get());
  ap.host_slot_mapping = slots.data();
  const KernelStatus appended = AppendKv(ap, nullptr);
  EXPECT_TRUE(appended.ok()) << appended.ToString();

  std::vector<float> q = p.q;
  DeviceBuffer dq(q.size() * es), dout(q.size() * es), dlse(p.total_q() * p.heads_q * 4),
      dtable(table.size() * 4), dcq(p.cu_q.size() * 4), dckv(p.cu_kv.size() * 4);
  dq.Upload(Encode(p.dtype, q));
  dtable.Upload(table);
  dcq.Upload(p.cu_q);
  dckv.Upload(p.cu_kv);
  dout.Poison();
  dlse.Poison();
  PagedAttentionArgs a;
  a.dtype = p.dtype;
  a.num_seqs = num_seqs;
  a.num_heads_q = p.heads_q;
  a.num_heads_kv = p.heads_kv;
  a.head_dim = p.head_dim;
  a.total_q = p.total_q();
  a.max_seqlen_q = *std::max_element(p.q_lens.begin(), p.q_lens.end());
  a.max_seqlen_kv = *std::max_element(p.kv_lens.begin(), p.kv_lens.end());
  a.q = dq.get(), a.q_strides = DenseStrides(0, p.heads_q, p.head_dim);
  a.out = dout.get(), a.out_strides = DenseStrides(0, p.heads_q, p.head_dim);
  a.lse = static_cast<float*>(dlse.get());
  a.k_cache = dkc.get(), a.v_cache = dvc.get();
  a.cache_strides = pool_strides;
  a.num_blocks = pool_blocks;
  a.page_size = page_size;
  a.block_table = static_cast<const int32_t*>(dtable.get());
  a.block_table_stride = max_blocks;
  a.cu_seqlens_q = static_cast<const int32_t*>(dcq.get());
  a.cu_seqlens_kv = static_cast<const int32_t*>(dckv.get());
  a.host_block_table = table.data();
  a.host_cu_seqlens_q = p.cu_q.data();
  a.host_cu_seqlens_kv = p.cu_kv.data();
  a.options = p.options();
  RunChecked(a, opt, [&](const PagedAttentionArgs& args) {
    return opt.simt_reference ? testing::AttentionPagedSimtReference(args, nullptr)
                              : AttentionPaged(args, nullptr);
  });
  return Result{Decode(p.dtype, dout.Download<uint8_t>(dout.bytes())),
                dlse.Download<float>(p.total_q() * p.heads_q)};
}

inline void CheckAgainstReference(const Problem& p, const Result& r, const std::string& what) {
  std::vector<double> out, lse;
  Reference(p, &out, &lse);
  ExpectClose(p.dtype, r.out, out, what + " out");
  ExpectLseClose(p.dtype, r.lse, lse, what + " lse");
}

// Large problems, where a float64 CPU reference would take minutes: the SIMT kernel's result (the
// plain float32 reference kernel, itself checked against float64 on smaller shapes) instead.
inline void ExpectSameAsSimt(const Problem& p, const Result& fast, const Result& simt) {
  std::vector<double> out(simt.out.begin(), simt.out.end()), lse(simt.lse.begin(), simt.lse.end());
  ExpectClose(p.dtype, fast.out, out, "vs simt out");
  ExpectLseClose(p.dtype, fast.lse, lse, "vs simt lse");
}

// Two runs that must agree bit for bit: the same tiles and instructions in the same order, only
// where the K/V rows come from, or which threads load them, differing.
inline void ExpectBitIdentical(const Result& got, const Result& want, const std::string& what) {
  ASSERT_EQ(got.out.size(), want.out.size()) << what;
  ASSERT_EQ(got.lse.size(), want.lse.size()) << what;
  EXPECT_EQ(std::memcmp(got.out.data(), want.out.data(), want.out.size() * sizeof(float)), 0)
      << what << ": O differs";
  EXPECT_EQ(std::memcmp(got.lse.data(), want.lse.data(), want.lse.size() * sizeof(float)), 0)
      << what << ": LSE differs";
}

}  // namespace flashkv::cuda::test
