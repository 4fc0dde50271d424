#pragma once

// Shared-memory addresses of one sm90 CTA (layout in sm90/traits.cuh) and its mbarriers:
//   q_full        TMA of a tile's Q has landed (1 arrival + Q bytes)
//   q_free        every consumer is done with the tile's Q (one arrival each): after their last
//                 S = Q K^T with a separate O buffer, else once their O stores have read it
//   k_full[s]     K tile in stage s has landed (1 arrival + K bytes); v_full likewise
//   k_empty[s]    every consumer warp is done reading K stage s (8 or 12 arrivals); v_empty
//                 likewise (K and V rings may differ in depth: Traits::kKStages, kVStages)
//   tile_full[r]  dynamic schedule: the producer wrote the tile number into ring slot r (1
//                 arrival; its release orders the slot's store before the consumers' reads)
//   tile_empty[r] every consumer warp has read slot r (8 or 12 arrivals)
// Phases: the u-th use of a barrier completes its phase u, so waiters pass parity u & 1 and
// producers of use u wait for the release of use u - 1 (parity (u & 1) ^ 1, which a fresh
// barrier reports complete).

#include <cstdint>

#include "sm90/ptx.cuh"
#include "sm90/tile_shape.h"

namespace flashkv::cuda::sm90 {

// Named barriers (0 is __syncthreads): the ping-pong turn of each consumer warpgroup, and a
// 128-thread barrier per consumer warpgroup.
inline constexpr int kTurnBarrier = 1;  // + consumer warpgroup (1..3)
inline constexpr int kWarpgroupBarrier =
    kTurnBarrier + kMaxConsumerWarpgroups;  // + consumer warpgroup (4..6)
// A turn barrier completes when the group whose turn it is (bar.sync) and the group that hands
// the turn over (bar.arrive) have both reached it: two warpgroups, however many consumers.
inline constexpr int kTurnThreads = 2 * 128;

template <class Tr>
struct Smem {
  uint32_t base;  // 1024-aligned shared address of the Q tile
  char* base_ptr; // the same, as a generic pointer

  __device__ __forceinline__ static Smem Locate(char* raw) {
    const uint32_t raw_addr = SmemAddress(raw);
    const uint32_t aligned = (raw_addr + 1023u) & ~1023u;
    return Smem{aligned, raw + (aligned - raw_addr)};
  }

  __device__ __forceinline__ uint32_t Q() const { return base + Tr::kQOffset; }
  __device__ __forceinline__ uint32_t K(int stage) const {  // stage < kKStages
    return base + Tr::kKOffset + stage * Tr::kKvBytes;
  }
  __device__ __forceinline__ uint32_t V(int stage) const {  // stage < kVStages
    return base + Tr::kVOffset + stage * Tr::kKvBytes;
  }

  // O staging: its own buffer, or Q's space (Traits::kSeparateO).
  __device__ __forceinline__ uint32_t O() const { return base + Tr::kOOffset; }

  __device__ __forceinline__ uint32_t Barrier(int index) const {
    return base + Tr::kBarrierOffset + 8 * index;
  }
  __device__ __forceinline__ uint32_t QFull() const { return Barrier(0); }
  __device__ __forceinline__ uint32_t QFree() const { return Barrier(1); }
  __device__ __forceinline__ uint32_t KFull(int s) const { return Barrier(2 + s); }
  __device__ __forceinline__ uint32_t KEmpty(int s) const { return Barrier(2 + Tr::kKStages + s); }
  __device__ __forceinline__ uint32_t VFull(int s) const {
    return Barrier(2 + 2 * Tr::kKStages + s);
  }
  __device__ __forceinline__ uint32_t VEmpty(int s) const {
    return Barrier(2 + 2 * Tr::kKStages + Tr::kVStages + s);
  }

  // After the K/V barriers (kKvBarriers of them).
  static constexpr int kKvBarriers = 2 * Tr::kKStages + 2 * Tr::kVStages;
  __device__ __forceinline__ uint32_t TileFull(int r) const { return Barrier(2 + kKvBarriers + r); }
  __device__ __forceinline__ uint32_t TileEmpty(int r) const {
    return Barrier(2 + kKvBarriers + kTileRingSlots + r);
  }
  // Ring slot r (an int after the barriers; tile_shape.h's BarrierBytes reserves it).
  __device__ __forceinline__ volatile int* TileSlot(int r) const {
    return reinterpret_cast<volatile int*>(base_ptr + Tr::kBarrierOffset +
                                           8 * (2 + kKvBarriers + 2 * kTileRingSlots)) +
           r;
  }

  // Stream-K: the arrival order consumer warpgroup `wg` broadcasts to its threads (an int after
  // the ring's; tile_shape.h's BarrierBytes reserves it).
  __device__ __forceinline__ volatile int* ArrivalSlot(int wg) const {
    return TileSlot(kTileRingSlots) + wg;
  }

  // One thread, before the CTA's first __syncthreads.
  __device__ __forceinline__ void InitBarriers() const {
    MbarrierInit(QFull(), 1);
    // Q with its own O buffer is released by each consumer warp once its last S = Q K^T of the
    // tile is complete (consumer_mainloop.cuh); O staged in Q's space, by each warpgroup after
    // the O stores have read it (epilogue.cuh).
    MbarrierInit(QFree(), Tr::kSeparateO ? Tr::kConsumerWarps : Tr::kConsumerWarpgroups);
#pragma unroll
    for (int s = 0; s < Tr::kVStages; ++s) {
      MbarrierInit(KFull(s), 1);
      MbarrierInit(VFull(s), 1);
      MbarrierInit(KEmpty(s), Tr::kConsumerWarps);
      MbarrierInit(VEmpty(s), Tr::kConsumerWarps);
    }
    // K's stages past V's (Traits::kKLeadsV).
#pragma unroll
    for (int s = Tr::kVStages; s < Tr::kKStages; ++s) {
      MbarrierInit(KFull(s), 1);
      MbarrierInit(KEmpty(s), Tr::kConsumerWarps);
    }
#pragma unroll
    for (int r = 0; r < kTileRingSlots; ++r) {
      MbarrierInit(TileFull(r), 1);
      MbarrierInit(TileEmpty(r), Tr::kConsumerWarps);
    }
    FenceBarrierInit();
  }
};

// Position in a ring of kStages stages (K's or V's): the it-th tile through the ring uses stage
// it % kStages for the (it / kStages)-th time.
template <int kStages>
struct PipelineState {
  uint32_t it = 0;
  __device__ __forceinline__ int Stage() const { return static_cast<int>(it % kStages); }
  __device__ __forceinline__ uint32_t Phase() const { return (it / kStages) & 1u; }
};

// The consumers' position in both rings: they take a key tile's K and V together (S = Q K(n)^T
// and P V(n + 1), one tile behind, in the same turn), so one count of key tiles serves both, each
// ring's stage and phase from its own depth. (The producer, which issues K ahead of V where K's
// ring is deeper, keeps a count per ring.) With equal depths K() and V() are the same position.
template <class Tr>
struct KvPipelineState {
  uint32_t it = 0;
  __device__ __forceinline__ PipelineState<Tr::kKStages> K() const { return {it}; }
  __device__ __forceinline__ PipelineState<Tr::kVStages> V() const { return {it}; }
};

}  // namespace flashkv::cuda::sm90
