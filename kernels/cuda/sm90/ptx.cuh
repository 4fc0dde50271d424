#pragma once

// Thin wrappers over the sm_90a PTX the Hopper attention kernel uses: mbarriers (transaction
// counted), TMA (cp.async.bulk.tensor) loads and stores, proxy fences, named barriers, setmaxnreg,
// and the wgmma fence/commit/wait around the matrix instructions of sm90/wgmma.cuh. Every
// instruction here exists only on sm_90a; these headers are compiled only into the sm90
// translation units (kernels/cuda/CMakeLists.txt builds those for compute_90a alone).
//
// `volatile` and "memory" clobbers keep the compiler from moving shared-memory accesses across
// the synchronisation points.

#include <cstdint>

namespace flashkv::cuda::sm90 {

__device__ __forceinline__ uint32_t SmemAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void StoreShared32(uint32_t addr, uint32_t value) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(value) : "memory");
}

// A load the compiler neither moves across other memory operations nor merges (a ring slot).
__device__ __forceinline__ uint32_t LoadShared32(uint32_t addr) {
  uint32_t value;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(value) : "r"(addr) : "memory");
  return value;
}

// ---- mbarrier ----------------------------------------------------------------------------------

__device__ __forceinline__ void MbarrierInit(uint32_t bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
}

// Makes the initialised barriers visible to the async proxy (TMA) before any use.
__device__ __forceinline__ void FenceBarrierInit() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One arrival that also announces `bytes` of TMA transactions for the current phase.
__device__ __forceinline__ void MbarrierArriveExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void MbarrierArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// Blocks until the phase with parity `parity` has completed. A fresh barrier counts the phase
// before its first one (parity 1) as completed, which is what lets producers start on empty
// stages without a special case.
__device__ __forceinline__ void MbarrierWait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// ---- TMA ---------------------------------------------------------------------------------------

// Tile load of a 3-d or 4-d tensor map box into shared memory; completion is counted in bytes on
// `bar`. Coordinates are element indices, innermost first; boxes reaching past the tensor are
// zero-filled (and still count their full size).
__device__ __forceinline__ void TmaLoad3d(uint32_t dst, const void* map, uint32_t bar, int c0,
                                          int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(dst),
      "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

__device__ __forceinline__ void TmaLoad4d(uint32_t dst, const void* map, uint32_t bar, int c0,
                                          int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
      "l"(map), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// Tile store from shared memory; the parts of the box past the tensor are not written.
__device__ __forceinline__ void TmaStore3d(const void* map, uint32_t src, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.global.shared::cta.tile.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
          map),
      "r"(src), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

__device__ __forceinline__ void TmaStore4d(const void* map, uint32_t src, int c0, int c1, int c2,
                                           int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::
          "l"(map),
      "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

__device__ __forceinline__ void TmaStoreCommit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

// Waits until the committed stores have finished reading shared memory (the source may then be
// overwritten; the global writes complete on their own).
__device__ __forceinline__ void TmaStoreWaitRead() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}

// Waits until the committed stores have completed their global writes (before the CTA exits).
__device__ __forceinline__ void TmaStoreWaitAll() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// Brings a tensor map (a __grid_constant__ kernel parameter) into the descriptor cache.
__device__ __forceinline__ void PrefetchTensorMap(const void* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(map) : "memory");
}

// Orders this thread's earlier generic-proxy shared-memory writes before later async-proxy
// accesses (TMA stores, wgmma operand reads) of the same memory.
__device__ __forceinline__ void FenceProxyAsyncShared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---- named barriers and register reallocation --------------------------------------------------

// bar.sync: waits for `threads` arrivals (this warp's included) on barrier `id`.
__device__ __forceinline__ void NamedBarrierSync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// bar.arrive: counts this warp's threads on barrier `id` without waiting.
__device__ __forceinline__ void NamedBarrierArrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

template <int kRegisters>
__device__ __forceinline__ void SetMaxRegistersDecrease() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void SetMaxRegistersIncrease() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

// A value every lane of the warp holds alike, broadcast from lane 0 so that ptxas can prove it
// warp-uniform (CUTLASS's canonical_warp_group_idx trick). Branches around wgmma that ptxas
// cannot prove uniform make it serialise the wgmmas.
__device__ __forceinline__ int WarpUniform(int x) { return __shfl_sync(0xffffffffu, x, 0); }

// ---- wgmma ordering ----------------------------------------------------------------------------

// Orders earlier register writes (accumulators, A fragments) before the wgmma that reads them.
__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most kPending committed wgmma groups of this warpgroup are still in flight.
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Tells the compiler that `x` may change here, so no use of it moves above a wgmma wait.
__device__ __forceinline__ void PinRegister(float& x) { asm volatile("" : "+f"(x)::"memory"); }
__device__ __forceinline__ void PinRegister(uint32_t& x) { asm volatile("" : "+r"(x)::"memory"); }

// ---- shared-memory matrix descriptors ----------------------------------------------------------

// wgmma descriptor of a 128-byte-swizzled operand tile (PTX ISA, "Matrix Descriptor Format"):
// start address, leading- and stride-dimension byte offsets (all >> 4), swizzle mode 1 = 128B.
// Atoms (8 rows of 128 bytes) must start on 1024-byte boundaries (base offset 0).
//   K-major (Q and K: rows of the head dim): the leading offset is unused by swizzled K-major
//   layouts (1 by convention); stride offset = 1024 between 8-row groups.
//   MN-major (V read as [key][dim]): leading offset = bytes between 64-column chunks of the N
//   (head) dimension, stride offset = 1024 between 8-key groups.
__device__ __forceinline__ uint64_t MatrixDescriptor(uint32_t smem_addr, uint32_t leading_bytes,
                                                     uint32_t stride_bytes) {
  uint64_t desc = 0;
  desc |= static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4);
  desc |= static_cast<uint64_t>((leading_bytes & 0x3FFFF) >> 4) << 16;
  desc |= static_cast<uint64_t>((stride_bytes & 0x3FFFF) >> 4) << 32;
  desc |= static_cast<uint64_t>(1) << 62;  // 128-byte swizzle
  return desc;
}

}  // namespace flashkv::cuda::sm90
