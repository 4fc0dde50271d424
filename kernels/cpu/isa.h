#pragma once

// Instruction-set tags of the CPU kernels. Each tag stands for one set of compiler flags: CMake
// compiles the kernel instantiations for a tag in their own translation units with those flags
// (kernels/cpu/CMakeLists.txt), and the dispatcher (kernel_registry.cc) picks a tag at run time.
//
// Code compiled for a tag must only define symbols that carry the tag (templates over the tag,
// always-inline helpers): an out-of-line copy of a shared inline function compiled with, say,
// -mavx2 could be the copy the linker keeps for every caller, and fault on a CPU without AVX2.

#include "flashkv/cpu_backend.h"

namespace flashkv::cpu {

struct GenericIsa {
  static constexpr Isa kIsa = Isa::kGeneric;
};
struct Avx2Isa {
  static constexpr Isa kIsa = Isa::kAvx2;
};
struct Avx512Isa {
  static constexpr Isa kIsa = Isa::kAvx512;
};

#if defined(__aarch64__)
inline constexpr bool kTargetIsAarch64 = true;
#else
inline constexpr bool kTargetIsAarch64 = false;
#endif

// Bytes of one SIMD register: SSE2/NEON 16, AVX2 32, AVX-512 64.
constexpr int VectorBytes(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return 64;
    case Isa::kAvx2:
      return 32;
    case Isa::kGeneric:
      break;
  }
  return 16;
}

// Architectural SIMD registers the register-blocked GEMM may fill: x86-64 has 16 XMM/YMM
// registers (32 ZMM with AVX-512), aarch64 has 32 NEON registers.
constexpr int VectorRegisters(Isa isa) {
  if (isa == Isa::kAvx512 || kTargetIsAarch64) return 32;
  return 16;
}

}  // namespace flashkv::cpu

// Helpers of the vectorised kernels are forced inline so that no tag-free out-of-line copy exists
// (see the comment at the top) and so that vector values never cross a call boundary.
#define FLASHKV_CPU_INLINE inline __attribute__((always_inline))
