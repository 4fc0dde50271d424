#pragma once

// cp.async producer of the K/V tiles: every thread copies 16-byte chunks of kBlockN key rows.
// Where the thread count is a multiple of the chunks per row (head dims 32, 64, 128, 256), a
// thread always copies the same chunk column of rows r0, r0 + kRowStep, ...: its global addresses
// then advance by one precomputed stride and its shared-memory offsets by compile-time constants
// (the swizzle repeats every 8 rows), so a chunk costs a pointer add, a compare and the copy. Other
// head dims (96, 192) index each chunk.
//
// Paged K/V: the element offset of each key row (block * block_stride + slot * slot_stride) is
// staged in shared memory by FetchBlock/StorePagedRow one tile ahead (see the kernel's main loop).

#include <cstdint>

#include "attention_params.h"
#include "sm80/ptx.cuh"

namespace flashkv::cuda::sm80 {

template <class Tr, bool kPaged>
struct KvLoader {
  using Element = typename Tr::Element;
  static constexpr int kChunks = Tr::kChunks;
  static constexpr bool kRegular =
      Tr::kThreads % kChunks == 0 && (Tr::kThreads / kChunks) % 8 == 0;
  static constexpr int kRowStep = Tr::kThreads / kChunks;  // rows between a thread's chunks
  static constexpr int kPerThread = Tr::kBlockN * kChunks / Tr::kThreads;
  static_assert(Tr::kBlockN * kChunks % Tr::kThreads == 0, "K/V chunks must divide among threads");

  const Element* k_base;  // contiguous: key 0 of the sequence (+ r0 rows, + chunk) of head_kv
  const Element* v_base;  // paged: head_kv + chunk (rows come from the staged offsets)
  const int32_t* block_table;
  int kv_len;
  int tid;
  int r0;                 // regular: first row of this thread
  uint32_t smem_offset;   // regular: swizzled offset of (r0, chunk)

  __device__ __forceinline__ void Init(const AttentionParams& p, const SequenceView& seq,
                                       int head_kv, int thread) {
    tid = thread;
    kv_len = seq.kv_len;
    block_table = seq.block_table;
    const int c = kRegular ? thread % kChunks : 0;
    r0 = kRegular ? thread / kChunks : 0;
    smem_offset = kRegular ? Tr::KvTile::Offset(r0, c) : 0u;
    k_base = static_cast<const Element*>(p.k) + head_kv * p.k_head_stride + c * 8;
    v_base = static_cast<const Element*>(p.v) + head_kv * p.v_head_stride + c * 8;
    if constexpr (!kPaged) {
      k_base += seq.k_offset + r0 * p.k_row_stride;
      v_base += seq.v_offset + r0 * p.v_row_stride;
    }
  }

  // Requests key tile n into the stage at (k_smem, v_smem).
  __device__ __forceinline__ void Load(const AttentionParams& p, int n, uint32_t k_smem,
                                       uint32_t v_smem, const int64_t* paged_rows) const {
    const Element* k0 = static_cast<const Element*>(p.k);
    const Element* v0 = static_cast<const Element*>(p.v);
    if constexpr (kRegular) {
      const int rows_left = kv_len - n * Tr::kBlockN - r0;  // chunk i is valid iff i*step < this
      const Element* kp = k_base;
      const Element* vp = v_base;
      if constexpr (!kPaged) {
        kp += static_cast<int64_t>(n * Tr::kBlockN) * p.k_row_stride;
        vp += static_cast<int64_t>(n * Tr::kBlockN) * p.v_row_stride;
      }
      const int64_t k_step = kRowStep * p.k_row_stride;
      const int64_t v_step = kRowStep * p.v_row_stride;
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const bool valid = i * kRowStep < rows_left;
        const uint32_t dst = smem_offset + i * kRowStep * (Tr::KvTile::kBlockCols * 2);
        if constexpr (kPaged) {
          const int64_t row = paged_rows[r0 + i * kRowStep];
          CpAsync16(k_smem + dst, valid ? k_base + row : k0, valid);
          CpAsync16(v_smem + dst, valid ? v_base + row : v0, valid);
        } else {
          CpAsync16(k_smem + dst, valid ? kp : k0, valid);
          CpAsync16(v_smem + dst, valid ? vp : v0, valid);
          kp += k_step;
          vp += v_step;
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int idx = tid + i * Tr::kThreads;
        const int r = idx / kChunks;
        const int c = idx % kChunks;
        const int key = n * Tr::kBlockN + r;
        const bool valid = key < kv_len;
        int64_t k_row, v_row;
        if constexpr (kPaged) {
          k_row = v_row = paged_rows[r];
        } else {
          k_row = static_cast<int64_t>(key) * p.k_row_stride;
          v_row = static_cast<int64_t>(key) * p.v_row_stride;
        }
        const uint32_t dst = Tr::KvTile::Offset(r, c);
        CpAsync16(k_smem + dst, valid ? k_base + k_row + c * 8 : k0, valid);
        CpAsync16(v_smem + dst, valid ? v_base + v_row + c * 8 : v0, valid);
      }
    }
  }

  // Paged: the block id of key row `tid` of tile n (a global load issued early so its latency
  // hides behind a tile of MMAs), then its element offset stored where Load reads it.
  __device__ __forceinline__ int FetchBlock(const AttentionParams& p, int n) const {
    const int key = n * Tr::kBlockN + tid;
    if (tid < Tr::kBlockN && key < kv_len) return block_table[key / p.page_size];
    return 0;
  }
  __device__ __forceinline__ void StorePagedRow(const AttentionParams& p, int n, int block,
                                                int64_t* slot) const {
    if (tid < Tr::kBlockN) {
      const int key = n * Tr::kBlockN + tid;
      slot[tid] = static_cast<int64_t>(block) * p.k_batch_stride +
                  static_cast<int64_t>(key % p.page_size) * p.k_row_stride;
    }
  }
};

}  // namespace flashkv::cuda::sm80
