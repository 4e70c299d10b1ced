// A kernel table by ISA level: one family's entry points, listed only for the levels that have
// their own, the others resolved down each level's fallback (cpu/isa_levels.def) to the nearest
// level that has one. Every CPU that runs a level runs its fallbacks, so a lookup never returns
// code the CPU cannot run; a family without a generic entry resolves to null below its lowest one.
//   constexpr ByLevel<GemmFn> kGemm = {{IsaLevel::generic, &generic::gemm}, {IsaLevel::avx2, &avx2::gemm}};
//   kGemm.at(IsaLevel::avx512)  // -> &avx2::gemm
// Entries of the x86-64 levels (those with compiler flags in isa_levels.def) are written
// KT_X86_ENTRY(level, fn): their kernels are built for x86-64 targets only, and elsewhere the
// entry is left out (the probe never offers those levels there, and lookups fall back to generic).
#pragma once

#include <initializer_list>
#include <utility>

#include "cpu/cpu_features.hpp"

#if defined(__x86_64__)
#define KT_X86_ENTRY(level, ...) {IsaLevel::level, __VA_ARGS__},
#else
#define KT_X86_ENTRY(level, ...)
#endif

namespace kt_moe {

template <class Fn>
struct ByLevel {
  Fn own[kIsaLevelCount] = {};  // by IsaLevel; null where the level has no entry of its own

  constexpr ByLevel() = default;
  constexpr ByLevel(std::initializer_list<std::pair<IsaLevel, Fn>> entries) {
    for (const auto& e : entries) own[static_cast<int>(e.first)] = e.second;
  }

  // The entry of `level`, or of the first level down its fallback chain that has one; Fn{} (null)
  // if none.
  Fn at(IsaLevel level) const {
    for (;;) {
      if (Fn fn = own[static_cast<int>(level)]) return fn;
      if (level == IsaLevel::generic) return Fn{};
      level = isa_fallback(level);
    }
  }
};

}  // namespace kt_moe
