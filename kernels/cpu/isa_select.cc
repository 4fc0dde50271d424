// Run-time choice of the instruction set (flashkv/cpu_backend.h: IsaAvailable, ActiveIsa, SetIsa).

#include <atomic>
#include <string>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#include "cpu/kernel_registry.h"
#include "flashkv/cpu_backend.h"

namespace flashkv::cpu {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// F16C is CPUID.1:ECX bit 29, read directly: clang 14's __builtin_cpu_supports has no "f16c".
bool HasF16c() {
  unsigned eax, ebx, ecx, edx;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}
#endif

bool CpuSupports(Isa isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             CpuSupports(Isa::kAvx2);
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c();
    case Isa::kGeneric:
      return true;
  }
  return false;
#else
  return isa == Isa::kGeneric;
#endif
}

Isa BestIsa() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
    if (IsaAvailable(isa)) return isa;
  }
  return Isa::kGeneric;
}

std::atomic<Isa>& ActiveIsaSlot() {
  static std::atomic<Isa> active{BestIsa()};
  return active;
}

}  // namespace

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return "generic";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

bool IsaAvailable(Isa isa) { return IsaCompiled(isa) && CpuSupports(isa); }

Isa ActiveIsa() { return ActiveIsaSlot().load(std::memory_order_relaxed); }

KernelStatus SetIsa(Isa isa) {
  if (!IsaAvailable(isa)) {
    return FailedPrecondition(std::string("cpu isa ") + IsaName(isa) + " is not available: " +
                              (IsaCompiled(isa) ? "the CPU lacks it" : "this build lacks it"));
  }
  ActiveIsaSlot().store(isa, std::memory_order_relaxed);
  return KernelStatus::Ok();
}

}  // namespace flashkv::cpu
