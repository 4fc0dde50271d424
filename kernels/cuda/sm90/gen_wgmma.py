#!/usr/bin/env python3
"""Writes kernels/cuda/sm90/wgmma.cuh: the wgmma.mma_async shapes the sm90 attention kernel uses.

Inline PTX needs literal operand numbers ({%0, ..., %127}), so each shape is written out rather
than built from templates. Run after changing the shape lists (the build does not run this):

    python3 kernels/cuda/sm90/gen_wgmma.py > kernels/cuda/sm90/wgmma.cuh
"""

# S = Q K^T: N = keys per tile (sm90/tile_shape.h). O += P V: N = head dim.
SS_SHAPES = [64, 80, 128, 160, 176]
RS_SHAPES = [64, 128, 256]
TYPES = [("__half", "f16"), ("__nv_bfloat16", "bf16")]


def regs(first, count, per_line=8):
    names = [f"%{first + i}" for i in range(count)]
    lines = [", ".join(names[i:i + per_line]) for i in range(0, count, per_line)]
    return (",\"\n      \"").join(lines)


def acc_operands(count, per_line=6):
    ops = [f"\"+f\"(d[{i}])" for i in range(count)]
    lines = [", ".join(ops[i:i + per_line]) for i in range(0, count, per_line)]
    return ",\n        ".join(lines)


def ss(n):
    acc = n // 2
    body = f"""template <>
__device__ __forceinline__ void WgmmaSS<CTYPE, {n}>(float (&d)[{acc}], uint64_t desc_a,
                                                 uint64_t desc_b, int scale_d) {{
  asm volatile(
      "{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{acc + 2}, 0;\\n"
      "wgmma.mma_async.sync.aligned.m64n{n}k16.f32." PTYPE "." PTYPE " {{"
      "{regs(0, acc)}}}, %{acc}, %{acc + 1}, p, 1, 1, 0, 0;\\n}}\\n"
      : {acc_operands(acc)}
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));
}}"""
    return macro(f"FLASHKV_WGMMA_SS_{n}", body)


def rs(n):
    acc = n // 2
    body = f"""template <>
__device__ __forceinline__ void WgmmaRS<CTYPE, {n}>(float (&d)[{acc}], const uint32_t (&a)[4],
                                                 uint64_t desc_b, int scale_d) {{
  asm volatile(
      "{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{acc + 5}, 0;\\n"
      "wgmma.mma_async.sync.aligned.m64n{n}k16.f32." PTYPE "." PTYPE " {{"
      "{regs(0, acc)}}}, {{%{acc}, %{acc + 1}, %{acc + 2}, %{acc + 3}}}, %{acc + 4}, p, 1, 1, 1;\\n}}\\n"
      : {acc_operands(acc)}
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}}"""
    return macro(f"FLASHKV_WGMMA_RS_{n}", body)


# One macro per shape, instantiated for each element type (the PTX type is its only difference).
def macro(name, body):
    lines = body.split("\n")
    width = max(len(line) for line in lines) + 1
    return f"#define {name}(CTYPE, PTYPE) \\\n" + " \\\n".join(
        line.ljust(width) for line in lines) + "\n"


print("""#pragma once

// wgmma.mma_async (sm_90a) shapes of the Hopper attention kernel, float32 accumulation. Written by
// kernels/cuda/sm90/gen_wgmma.py (inline PTX needs literal operand numbers); edit the generator.
//
//   WgmmaSS<Element, N>: D(64 x N) (+)= A(64 x 16) B(16 x N), A and B from shared memory, both
//     K-major (S = Q K^T: A = Q rows, B = K rows).
//   WgmmaRS<Element, N>: D(64 x N) (+)= A(64 x 16) B(16 x N), A from registers, B from shared
//     memory N-major (O += P V: A = P, B = V stored [key][dim]).
// scale_d = 0 overwrites D (the first k-step of a product), 1 accumulates.
//
// Accumulator layout (PTX ISA, "wgmma 64NK16 D"): warp w of the warpgroup holds rows 16w..16w+15;
// with g = lane / 4 and t = lane % 4, d[4j + e] is row 16w + g + 8 (e / 2), column 8j + 2t + e % 2.
// The A register fragment is that of mma.m16n8k16 for the warp's 16 rows, so two adjacent 8-column
// accumulator blocks, rounded to 16 bits, are one k-step of A.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace flashkv::cuda::sm90 {

template <typename Element, int kN>
__device__ __forceinline__ void WgmmaSS(float (&d)[kN / 2], uint64_t desc_a, uint64_t desc_b,
                                        int scale_d);
template <typename Element, int kN>
__device__ __forceinline__ void WgmmaRS(float (&d)[kN / 2], const uint32_t (&a)[4],
                                        uint64_t desc_b, int scale_d);
""")
names = [f"FLASHKV_WGMMA_SS_{n}" for n in SS_SHAPES] + [f"FLASHKV_WGMMA_RS_{n}" for n in RS_SHAPES]
for n in SS_SHAPES:
    print(ss(n))
for n in RS_SHAPES:
    print(rs(n))
for ctype, ptype in TYPES:
    for name in names:
        print(f'{name}({ctype}, "{ptype}")')
    print()
for name in names:
    print(f"#undef {name}")
print()
print("}  // namespace flashkv::cuda::sm90")
