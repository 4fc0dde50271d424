#pragma once

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

#define FLASHKV_WGMMA_SS_64(CTYPE, PTYPE) \
template <>                                                                            \
__device__ __forceinline__ void WgmmaSS<CTYPE, 64>(float (&d)[32], uint64_t desc_a,    \
                                                 uint64_t desc_b, int scale_d) {       \
  asm volatile(                                                                        \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                     \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTYPE "." PTYPE " {"               \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                          \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                        \
      "%24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"         \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),        \
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),      \
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),  \
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),  \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),  \
        "+f"(d[30]), "+f"(d[31])                                                       \
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));                                       \
}                                                                                     

#define FLASHKV_WGMMA_SS_80(CTYPE, PTYPE) \
template <>                                                                            \
__device__ __forceinline__ void WgmmaSS<CTYPE, 80>(float (&d)[40], uint64_t desc_a,    \
                                                 uint64_t desc_b, int scale_d) {       \
  asm volatile(                                                                        \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %42, 0;\n"                                     \
      "wgmma.mma_async.sync.aligned.m64n80k16.f32." PTYPE "." PTYPE " {"               \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                          \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                        \
      "%24, %25, %26, %27, %28, %29, %30, %31,"                                        \
      "%32, %33, %34, %35, %36, %37, %38, %39}, %40, %41, p, 1, 1, 0, 0;\n}\n"         \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),        \
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),      \
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),  \
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),  \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),  \
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),  \
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39])                             \
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));                                       \
}                                                                                     

#define FLASHKV_WGMMA_SS_128(CTYPE, PTYPE) \
template <>                                                                            \
__device__ __forceinline__ void WgmmaSS<CTYPE, 128>(float (&d)[64], uint64_t desc_a,   \
                                                 uint64_t desc_b, int scale_d) {       \
  asm volatile(                                                                        \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                     \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." PTYPE "." PTYPE " {"              \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                          \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                        \
      "%24, %25, %26, %27, %28, %29, %30, %31,"                                        \
      "%32, %33, %34, %35, %36, %37, %38, %39,"                                        \
      "%40, %41, %42, %43, %44, %45, %46, %47,"                                        \
      "%48, %49, %50, %51, %52, %53, %54, %55,"                                        \
      "%56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"         \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),        \
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),      \
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),  \
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),  \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),  \
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),  \
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),  \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),  \
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),  \
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),  \
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                             \
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));                                       \
}                                                                                     

#define FLASHKV_WGMMA_SS_176(CTYPE, PTYPE) \
template <>                                                                            \
__device__ __forceinline__ void WgmmaSS<CTYPE, 176>(float (&d)[88], uint64_t desc_a,   \
                                                 uint64_t desc_b, int scale_d) {       \
  asm volatile(                                                                        \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %90, 0;\n"                                     \
      "wgmma.mma_async.sync.aligned.m64n176k16.f32." PTYPE "." PTYPE " {"              \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                          \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                        \
      "%24, %25, %26, %27, %28, %29, %30, %31,"                                        \
      "%32, %33, %34, %35, %36, %37, %38, %39,"                                        \
      "%40, %41, %42, %43, %44, %45, %46, %47,"                                        \
      "%48, %49, %50, %51, %52, %53, %54, %55,"                                        \
      "%56, %57, %58, %59, %60, %61, %62, %63,"                                        \
      "%64, %65, %66, %67, %68, %69, %70, %71,"                                        \
      "%72, %73, %74, %75, %76, %77, %78, %79,"                                        \
      "%80, %81, %82, %83, %84, %85, %86, %87}, %88, %89, p, 1, 1, 0, 0;\n}\n"         \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),        \
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),      \
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),  \
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),  \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),  \
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),  \
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),  \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),  \
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),  \
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),  \
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]),  \
        "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),  \
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),  \
        "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),  \
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87])                             \
      : "l"(desc_a), "l"(desc_b), "r"(scale_d));                                       \
}                                                                                     

#define FLASHKV_WGMMA_RS_64(CTYPE, PTYPE) \
template <>                                                                                   \
__device__ __forceinline__ void WgmmaRS<CTYPE, 64>(float (&d)[32], const uint32_t (&a)[4],    \
                                                 uint64_t desc_b, int scale_d) {              \
  asm volatile(                                                                               \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                            \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTYPE "." PTYPE " {"                      \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                       \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                                 \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                               \
      "%24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"  \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),               \
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),             \
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),         \
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),         \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),         \
        "+f"(d[30]), "+f"(d[31])                                                              \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));               \
}                                                                                            

#define FLASHKV_WGMMA_RS_128(CTYPE, PTYPE) \
template <>                                                                                   \
__device__ __forceinline__ void WgmmaRS<CTYPE, 128>(float (&d)[64], const uint32_t (&a)[4],   \
                                                 uint64_t desc_b, int scale_d) {              \
  asm volatile(                                                                               \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                            \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." PTYPE "." PTYPE " {"                     \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                       \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                                 \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                               \
      "%24, %25, %26, %27, %28, %29, %30, %31,"                                               \
      "%32, %33, %34, %35, %36, %37, %38, %39,"                                               \
      "%40, %41, %42, %43, %44, %45, %46, %47,"                                               \
      "%48, %49, %50, %51, %52, %53, %54, %55,"                                               \
      "%56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"  \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),               \
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),             \
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),         \
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),         \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),         \
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),         \
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),         \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),         \
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),         \
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),         \
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                                    \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));               \
}                                                                                            

#define FLASHKV_WGMMA_RS_256(CTYPE, PTYPE) \
template <>                                                                                                \
__device__ __forceinline__ void WgmmaRS<CTYPE, 256>(float (&d)[128], const uint32_t (&a)[4],               \
                                                 uint64_t desc_b, int scale_d) {                           \
  asm volatile(                                                                                            \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"                                                        \
      "wgmma.mma_async.sync.aligned.m64n256k16.f32." PTYPE "." PTYPE " {"                                  \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                                    \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                                              \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                                            \
      "%24, %25, %26, %27, %28, %29, %30, %31,"                                                            \
      "%32, %33, %34, %35, %36, %37, %38, %39,"                                                            \
      "%40, %41, %42, %43, %44, %45, %46, %47,"                                                            \
      "%48, %49, %50, %51, %52, %53, %54, %55,"                                                            \
      "%56, %57, %58, %59, %60, %61, %62, %63,"                                                            \
      "%64, %65, %66, %67, %68, %69, %70, %71,"                                                            \
      "%72, %73, %74, %75, %76, %77, %78, %79,"                                                            \
      "%80, %81, %82, %83, %84, %85, %86, %87,"                                                            \
      "%88, %89, %90, %91, %92, %93, %94, %95,"                                                            \
      "%96, %97, %98, %99, %100, %101, %102, %103,"                                                        \
      "%104, %105, %106, %107, %108, %109, %110, %111,"                                                    \
      "%112, %113, %114, %115, %116, %117, %118, %119,"                                                    \
      "%120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"  \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),                            \
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),                          \
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),                      \
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),                      \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),                      \
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),                      \
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),                      \
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),                      \
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),                      \
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),                      \
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]),                      \
        "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),                      \
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),                      \
        "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),                      \
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]),                      \
        "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),                      \
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]),                    \
        "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]),                \
        "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]),                \
        "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),                \
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]),                \
        "+f"(d[126]), "+f"(d[127])                                                                         \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));                            \
}                                                                                                         

FLASHKV_WGMMA_SS_64(__half, "f16")
FLASHKV_WGMMA_SS_80(__half, "f16")
FLASHKV_WGMMA_SS_128(__half, "f16")
FLASHKV_WGMMA_SS_176(__half, "f16")
FLASHKV_WGMMA_RS_64(__half, "f16")
FLASHKV_WGMMA_RS_128(__half, "f16")
FLASHKV_WGMMA_RS_256(__half, "f16")

FLASHKV_WGMMA_SS_64(__nv_bfloat16, "bf16")
FLASHKV_WGMMA_SS_80(__nv_bfloat16, "bf16")
FLASHKV_WGMMA_SS_128(__nv_bfloat16, "bf16")
FLASHKV_WGMMA_SS_176(__nv_bfloat16, "bf16")
FLASHKV_WGMMA_RS_64(__nv_bfloat16, "bf16")
FLASHKV_WGMMA_RS_128(__nv_bfloat16, "bf16")
FLASHKV_WGMMA_RS_256(__nv_bfloat16, "bf16")

#undef FLASHKV_WGMMA_SS_64
#undef FLASHKV_WGMMA_SS_80
#undef FLASHKV_WGMMA_SS_128
#undef FLASHKV_WGMMA_SS_176
#undef FLASHKV_WGMMA_RS_64
#undef FLASHKV_WGMMA_RS_128
#undef FLASHKV_WGMMA_RS_256

}  // namespace flashkv::cuda::sm90
