// CPU feature probe and ISA level selection. Compiled without ISA flags so that it runs on
// every x86-64 CPU; it decides at run time which kernel level the process uses.
#pragma once

#include <string>
#include <vector>

namespace kt_moe {

// Kernel levels, one per entry of isa_levels.def (its order: generic lowest, amx_emulated last).
enum class IsaLevel : int {
#define KT_ISA_LEVEL(name, fallback, automatic, flags, requirement) name,
#include "cpu/isa_levels.def"
#undef KT_ISA_LEVEL
};
constexpr int kIsaLevelCount = 0
#define KT_ISA_LEVEL(name, fallback, automatic, flags, requirement) +1
#include "cpu/isa_levels.def"
#undef KT_ISA_LEVEL
    ;

// The level whose kernels run where `level` has none (generic for generic itself).
IsaLevel isa_fallback(IsaLevel level);
const char* isa_level_name(IsaLevel level);
// Throws std::invalid_argument naming the accepted names when `name` is not one of them.
IsaLevel parse_isa_level(const std::string& name);
// parse_isa_level, then std::invalid_argument "ISA level '<name>' is not available on this CPU"
// unless isa_level_runnable (the check of the test hooks that run one level's kernels).
IsaLevel parse_runnable_isa_level(const std::string& name);

// What CPUID/XGETBV report, plus whether Linux granted the AMX tile-data permission.
struct CpuFeatures {
  std::string vendor;
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false, avx512_vnni = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
  bool os_ymm_state = false;   // XCR0 enables SSE and AVX (YMM) state
  bool os_zmm_state = false;   // XCR0 enables opmask, ZMM_Hi256 and Hi16_ZMM state
  bool os_tile_state = false;  // XCR0 enables XTILECFG and XTILEDATA state
  bool amx_permitted = false;  // arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) succeeded

  // Whether this CPU runs `level`: its requirement and its fallback's hold (isa_levels.def).
  bool runs(IsaLevel level) const;
  // Highest automatic level this CPU runs.
  IsaLevel best_level() const;
  // The automatic levels this CPU runs, lowest first (ends with best_level()).
  std::vector<IsaLevel> available_levels() const;
  // Every level this CPU runs, forced-only ones included (what KT_MOE_ISA and set_isa accept).
  std::vector<IsaLevel> selectable_levels() const;
};

// Probes once per process (requesting the AMX permission when the CPU has AMX) and caches. On a
// CPU other than x86-64 every feature is false: generic and amx_emulated are the levels it runs.
const CpuFeatures& cpu_features();
inline bool isa_level_runnable(IsaLevel level) { return cpu_features().runs(level); }

// The level kernels dispatch on. First call resolves it: KT_MOE_ISA (if set) forces a level,
// otherwise best_level(). Throws std::invalid_argument when KT_MOE_ISA names an unknown level
// or one this CPU does not run; the next call tries again, so a fixed environment recovers.
IsaLevel active_isa_level();
// Forces a level for the rest of the process (tests, bug reports); same checks as KT_MOE_ISA.
void set_active_isa_level(IsaLevel level);

}  // namespace kt_moe
