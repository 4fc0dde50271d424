#include "cpu/kernel_registry.h"

#include "cpu/attention_kernel.h"
#include "cpu/isa.h"
#include "cpu/kernel_list.h"  // generated

namespace flashkv::cpu {
namespace {

constexpr bool kBuiltAvx2 = FLASHKV_CPU_BUILT_AVX2;
constexpr bool kBuiltAvx512 = FLASHKV_CPU_BUILT_AVX512;

template <class IsaTag, class T, int kHeadDim>
AttentionKernelEntry MakeEntry() {
  AttentionKernelEntry entry;
  entry.run = &AttentionKernel<IsaTag, T, kHeadDim>::RunTask;
  entry.merge = &AttentionKernel<IsaTag, T, kHeadDim>::MergeSplits;
  entry.shape = ChooseTileShape(IsaTag::kIsa, kHeadDim);
  entry.workspace_floats = MakeWorkspaceLayout(entry.shape, kHeadDim).total;
  entry.partial_slot_floats = PartialSlotFloats(entry.shape, kHeadDim);
  return entry;
}

// Discarded `if constexpr` branches never name an instantiation the build did not compile.
template <class T, int kHeadDim>
AttentionKernelEntry EntryForIsa(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      if constexpr (kBuiltAvx512) return MakeEntry<Avx512Isa, T, kHeadDim>();
      break;
    case Isa::kAvx2:
      if constexpr (kBuiltAvx2) return MakeEntry<Avx2Isa, T, kHeadDim>();
      break;
    case Isa::kGeneric:
      return MakeEntry<GenericIsa, T, kHeadDim>();
  }
  return {};
}

}  // namespace

AttentionKernelEntry FindAttentionKernel(Isa isa, DType dtype, int head_dim) {
#define FLASHKV_CPU_KERNEL_CASE(T, D) \
  if (dtype == DTypeOf<T>::value && head_dim == (D)) return EntryForIsa<T, D>(isa);
  FLASHKV_CPU_FOR_EACH_KERNEL(FLASHKV_CPU_KERNEL_CASE)
#undef FLASHKV_CPU_KERNEL_CASE
  return {};
}

bool IsaCompiled(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return kBuiltAvx512;
    case Isa::kAvx2:
      return kBuiltAvx2;
    case Isa::kGeneric:
      return true;
  }
  return false;
}

}  // namespace flashkv::cpu
