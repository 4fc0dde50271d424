#pragma once

// Host side of an sm90 launch, apart from the kernel templates so it compiles once: the
// persistent tile schedule and the four TMA descriptors. The tensor maps are encoded with
// cuTensorMapEncodeTiled, found through the runtime's driver entry point query, so flashkv links
// only the CUDA runtime (no -lcuda).

#include <cstdint>

#include "attention_params.h"
#include "device_state.h"
#include "flashkv/dtype.h"
#include "flashkv/kernel_status.h"
#include "launch.h"
#include "sm90/params.h"
#include "sm90/tile_shape.h"

namespace flashkv::cuda::sm90 {

// Query tiles (block_m rows of one head) of a launch, without building the schedule; the path
// choice uses it. Varlen reads info.host_cu_seqlens_q.
int64_t CountTiles(const AttentionParams& p, const LaunchInfo& info, int block_m);

// Fixed length: heads grouped in sections whose K/V fit half the L2, m-blocks heaviest first
// under causal. Varlen and paged: sequences with queries ordered by context length (longest
// first), m-blocks heaviest first under causal. kInvalidArgument past the schedule's limits (the
// path choice keeps such launches on sm80, so reaching it is a caller bug). `kind` picks the tile
// shape (ChooseTileShape), as the launch's kernel has it.
KernelStatus BuildSchedule(const AttentionParams& p, const LaunchInfo& info, int head_dim,
                           int element_bytes, const DeviceProps& props, Schedule* schedule,
                           TileKind kind = TileKind::kStandard);

// Q, K, V and O maps: fixed [batch, head, row, dim] as 4-d maps, varlen [head, packed row, dim]
// as 3-d maps; boxes of 64 dims (128 bytes, swizzled 128B) x block_m / block_n / 64 rows. Paged
// launches (p.block_table set): varlen Q and O, K and V as 4-d maps over the pools
// [block, K/V head, slot, dim] (info.num_blocks blocks) with boxes of PagedBoxRows slots. Sets
// params->kv_box_rows. block_m and block_n by ChooseTileShape(.., kind).
KernelStatus EncodeTensorMaps(const AttentionParams& p, const LaunchInfo& info, DType dtype,
                              Sm90Params* params, TileKind kind = TileKind::kStandard);

// Keys per TMA box of a paged K/V tile of block_n keys over pages of page_size keys (a multiple of
// kPagedBoxRows): the whole tile when the page holds whole tiles (one TMA per chunk, as on
// contiguous K/V), else kPagedBoxRows (every box then still lies in one page).
int PagedBoxRows(int page_size, int block_n);

// The variant of the contiguous kernel that launches take (tile_shape.h's Sm90Variant): kAuto
// unless testing::SetVariant chose another.
Sm90Variant ActiveVariant();

// Whether a contiguous (fixed or varlen) launch of num_tiles tiles takes its tiles from the
// dynamic counter, by the active variant.
bool UseDynamicSchedule(bool causal, int64_t num_tiles, int multiprocessors);

// Whether a launch of head dim `head_dim` (contiguous or paged) takes the kernels with the
// conditional O rescale, by the active variant: always under Sm90Variant::kLazyRescale, under
// kAuto (and the variants that keep kAuto's kernels) at kLazyRescaleHeadDim.
bool UseLazyRescale(int head_dim);

// The head dim at which kAuto skips O rescales that do not matter (FlashAttention-4's conditional
// rescale). At 256 O is 128 registers a thread, so a rescale is 128 multiplies per key tile of 80
// (contiguous) or 64 (paged) keys, the most per key of any shape. Measured on an H100 (fp16, B 2,
// H 32, x cuDNN, static schedule, lazy against not): +1-3% at head dim 256 causal and not (S 4096
// 1.03 -> 1.06 not causal, 0.95 -> 0.97 causal), neutral at 128, -3..-6% at 64 (where the skipped
// multiplies are few and the extra vote and branch per key tile are not).
inline constexpr int kLazyRescaleHeadDim = 256;

// Whether a fixed-length launch without a causal mask on a kernel of `kind` takes the stream-K
// tail (where its tiles are not a whole number of rounds: PlanStreamK), by the active variant:
// always under Sm90Variant::kStreamK; under kAuto for 160-key tiles (head dim 128) over
// kStreamKMinSeqlenKv keys or more.
bool UseStreamK(TileKind kind, int seqlen_kv);

// Measured on an H200 (B 2, H 32, x cuDNN, fixed length, no causal mask, kAuto -> stream_k):
// head dim 128 fp16 / bf16 S 4096 1.01 -> 1.03 / 1.00 -> 1.02, 8192 1.02 -> 1.05 / 1.02 -> 1.04,
// 16384 1.06 -> 1.08 / 1.05 -> 1.07; but S 2048 0.97 -> 0.95 and S 1024 0.95 -> 0.82 (a launch of
// ~70 us pays the workspace allocation, the counters' memset and a third work item per CTA for a
// tail of at most one round), and head dim 64's three-consumer kernels lost 1-4% at S >= 4096
// (their last round is under 1% of the time there).
inline constexpr int kStreamKMinSeqlenKv = 4096;

// Plans the stream-K tail of a fixed-length launch without a causal mask (every tile has
// key_tiles key tiles) over a grid of `grid` CTAs: schedule->dp_tiles and sk_key_tiles. Returns
// false, leaving the schedule's round-robin whole, where the tiles are a whole number of rounds,
// fewer than one round, or one key tile each (nothing to divide).
bool PlanStreamK(Schedule* schedule, int grid, int key_tiles);

// The tile shape of a launch's kernel, by the active variant. Where the head dim and layout have
// the three-consumer shape (HasThreeConsumerShape): kThreeConsumers under
// Sm90Variant::kThreeConsumers, and under kAuto too except for launches whose longest query is
// shorter than kThreeConsumerCausalMinSeqlen (causal) or kThreeConsumerMinSeqlen (not). Where
// they have the wide key shape (HasWideKeyShape), launches without a causal mask: kKeys160 /
// kKeys176 under the variants of those names, and kKeys160 under kAuto for fixed-length launches
// whose context has at least kWideKeysMinSeqlenKv keys. Where they have the split paged shape
// (HasPagedKeys80Shape), at every page size (page_size: the launch's, 0 for contiguous K/V):
// kPagedKeys80Lanes under kAuto and the variants that keep kAuto's kernels elsewhere (measured
// below); kPagedKeys80, kPagedKStages3 (HasPagedKStages3Shape) and kStandard's 64-key
// tiles under the variants kPagedKeys80, kPagedKStages3 and kPagedKeys64. Else kStandard.
TileKind ChooseTileKind(int head_dim, bool paged, bool varlen, bool causal, int max_seqlen_q,
                        int max_seqlen_kv, int page_size = 0);

// Under kAuto, paged head dim 256 takes the 80-key split tiles with one issuing thread per chunk
// (TileKind::kPagedKeys80Lanes) at every page size. Measured on an H100, sixth session (fp16, Hq
// 32 Hkv 8, varlen prefill B 4, S 4096/8192, causal and not; paged / contiguous time, contiguous on
// its 80-key tiles; three runs in two calls): page 64: 64-key tiles (kPagedKeys64, kAuto's before)
// 1.04-1.11 (causal S 8192: 1.092, 1.109, 1.096), split tiles from one thread (kPagedKeys80)
// 1.11-1.15, by chunk 1.01-1.09 (causal S 8192: 1.074, 1.086, 1.073); page 128: 1.01-1.08 (one
// thread) -> 0.95-1.03 (by chunk); page 256: 1.00-1.04 -> 0.97-1.02. The earlier H200 finding that
// the one producer thread's issue rate bounds the split tiles at page 64 holds: four issuers lift
// it.

// Under kAuto, causal launches with shorter queries keep 128-row tiles. Measured on an H100 (D 64,
// fp16, B 2, H 32): 192-row tiles lose 10% causal at S 1024 (a diagonal tile masks up to 192 rows'
// worth of keys, and at S 1024 diagonal tiles are a fifth of the work) and win 4-13% causal at
// S >= 4096 and 4-25% non-causal at every S; 2048 splits the unmeasured interval.
inline constexpr int kThreeConsumerCausalMinSeqlen = 2048;

// And launches without a causal mask with queries shorter than this. Measured on an H100 (D 64,
// fp16, B 2, H 32, x cuDNN, 128 -> 192-row tiles): S 512 0.95 -> 0.82 (3 m-blocks of 192 rows
// for 512 queries, and 192 tiles on 132 SMs: 1.45 rounds), S 1024 0.93 -> 0.98.
inline constexpr int kThreeConsumerMinSeqlen = 1024;

// Under kAuto, head dim 128 launches without a causal mask take 160-key tiles from this context
// length on. Measured on an H200 (fp16 and bf16, B 2, H 32, x cuDNN, 128 -> 160 keys): S 1024
// 0.91 -> 0.85-0.86 (7 tiles of 160 compute 1120 keys' work for 1024), 2048 0.95-0.96 ->
// 0.96-0.97, 4096 0.99-1.00 -> 1.01, 8192 1.00 -> 1.02, 16384 0.99-1.00 -> 1.03-1.04. 176-key
// tiles (O in Q's space) measured 1.00/1.01-1.03/1.01-1.03 at 4096/8192/16384: not taken.
// Varlen launches keep 128 keys: in cuda_attention_benchmark's varlen prefill (B 4, Hq 32, Hkv 8,
// H100) the 160-key varlen kernel ran at 609-631 TF where the paged kernel on 128-key tiles ran
// 615-654 over the same problem (S 4096-8192), i.e. no gain and up to 4% loss there.
inline constexpr int kWideKeysMinSeqlenKv = 2048;

namespace testing {
// Process-wide variant for tests and benchmarks that compare the variants in one process
// (side_by_side.py through the C API's flashkv_cuda_testing_set_sm90_variant).
void SetVariant(Sm90Variant variant);

// Makes PagedBoxRows return `rows` wherever that is valid (a multiple of kPagedBoxRows dividing
// both block_n and page_size); 0 restores the choice. Process-wide: for tests and benchmarks that
// compare the two box shapes on the same pool.
void ForcePagedBoxRows(int rows);
}  // namespace testing

// Whether every stride the maps use is a positive multiple of 16 bytes below 2^40 (strides of
// dimensions of extent 1 are not used). The path choice calls it before picking sm90.
bool TmaCanDescribe(const AttentionParams& p, const LaunchInfo& info, int element_bytes);

}  // namespace flashkv::cuda::sm90
