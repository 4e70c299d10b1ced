// CPU feature probe and ISA level selection. Compiled without ISA flags so that it runs on
// every x86-64 CPU; it decides at run time which kernel level the process uses.
#pragma once

#include <string>
#include <vector>

namespace kt_moe {

// Kernel levels. generic..amx go lowest to highest, each implying the ones below it.
enum class IsaLevel : int {
  generic = 0,      // portable C++
  avx512 = 1,       // AVX-512 F, BW, VL, DQ with OS support for ZMM state
  avx512_bf16 = 2,  // + AVX512_BF16 and AVX512_VNNI
  amx = 3,          // + AMX-TILE, AMX-BF16, AMX-INT8 with OS tile-data permission
  // The AMX kernels with every tile instruction emulated in portable C++ (kernels/amx/tile.hpp):
  // runs on any CPU, slowly; never chosen automatically, only forced (tests, bug reports).
  amx_emulated = 4,
};

const char* isa_level_name(IsaLevel level);
// Throws std::invalid_argument naming the accepted names when `name` is not one of them.
IsaLevel parse_isa_level(const std::string& name);

// What CPUID/XGETBV report, plus whether Linux granted the AMX tile-data permission.
struct CpuFeatures {
  std::string vendor;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false, avx512_vnni = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
  bool os_zmm_state = false;   // XCR0 enables opmask, ZMM_Hi256 and Hi16_ZMM state
  bool os_tile_state = false;  // XCR0 enables XTILECFG and XTILEDATA state
  bool amx_permitted = false;  // arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) succeeded

  // Highest level whose every requirement holds.
  IsaLevel best_level() const;
  // All levels up to best_level(), lowest first.
  std::vector<IsaLevel> available_levels() const;
};

// Probes once per process (requesting the AMX permission when the CPU has AMX) and caches.
const CpuFeatures& cpu_features();

// The level kernels dispatch on. First call resolves it: KT_MOE_ISA (if set) forces a level,
// otherwise best_level(). Throws std::invalid_argument when KT_MOE_ISA names an unknown level
// or one this CPU lacks; the next call tries again, so a fixed environment recovers.
IsaLevel active_isa_level();
// Forces a level for the rest of the process (tests, bug reports); same checks as KT_MOE_ISA.
void set_active_isa_level(IsaLevel level);

}  // namespace kt_moe
