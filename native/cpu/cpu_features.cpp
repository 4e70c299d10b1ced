// CPUID / XGETBV probe, Linux AMX permission request and the process-wide active ISA level. The
// probe is x86-64 only; elsewhere it reports no feature (generic and amx_emulated run anywhere).
#include "cpu/cpu_features.hpp"

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>

namespace kt_moe {
namespace {

struct LevelEntry {
  const char* name;
  IsaLevel fallback;
  bool automatic;
  bool (*requirement)(const CpuFeatures& f);
};

constexpr LevelEntry kLevels[kIsaLevelCount] = {
#define KT_ISA_LEVEL(name, fallback, automatic, flags, requirement) \
  {#name, IsaLevel::fallback, automatic != 0, []([[maybe_unused]] const CpuFeatures& f) { return bool(requirement); }},
#include "cpu/isa_levels.def"
#undef KT_ISA_LEVEL
};

const LevelEntry& entry(IsaLevel level) { return kLevels[static_cast<int>(level)]; }

std::string level_list(const std::vector<IsaLevel>& levels) {
  std::string names;
  for (IsaLevel l : levels) names += std::string(names.empty() ? "" : ", ") + isa_level_name(l);
  return names;
}

#if defined(__x86_64__)

struct CpuidRegs {
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
};

CpuidRegs cpuid(uint32_t leaf, uint32_t subleaf) {
  CpuidRegs r;
  if (!__get_cpuid_count(leaf, subleaf, &r.eax, &r.ebx, &r.ecx, &r.edx)) return CpuidRegs{};
  return r;
}

// XGETBV(0) without the -mxsave flag: the instruction encoded directly.
uint64_t read_xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

bool bit(uint32_t value, int index) { return (value >> index) & 1u; }

// Linux refuses AMX tile data until the process asks for it once.
bool request_amx_permission() {
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

CpuFeatures probe() {
  CpuFeatures f;
  CpuidRegs leaf0 = cpuid(0, 0);
  char vendor[13] = {};
  std::memcpy(vendor + 0, &leaf0.ebx, 4);
  std::memcpy(vendor + 4, &leaf0.edx, 4);
  std::memcpy(vendor + 8, &leaf0.ecx, 4);
  f.vendor = vendor;
  if (leaf0.eax < 7) return f;

  CpuidRegs leaf1 = cpuid(1, 0);
  const bool osxsave = bit(leaf1.ecx, 27);
  const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  // SSE/AVX (bits 1,2); + opmask/ZMM_Hi256/Hi16_ZMM (bits 5,6,7).
  f.os_ymm_state = (xcr0 & 0x6) == 0x6;
  f.os_zmm_state = (xcr0 & 0xE6) == 0xE6;
  f.fma = bit(leaf1.ecx, 12);
  f.f16c = bit(leaf1.ecx, 29);
  f.os_tile_state = ((xcr0 >> 17) & 3u) == 3u;

  CpuidRegs leaf7 = cpuid(7, 0);
  f.avx2 = bit(leaf7.ebx, 5);
  f.avx512f = bit(leaf7.ebx, 16);
  f.avx512dq = bit(leaf7.ebx, 17);
  f.avx512bw = bit(leaf7.ebx, 30);
  f.avx512vl = bit(leaf7.ebx, 31);
  f.avx512_vnni = bit(leaf7.ecx, 11);
  f.amx_bf16 = bit(leaf7.edx, 22);
  f.amx_tile = bit(leaf7.edx, 24);
  f.amx_int8 = bit(leaf7.edx, 25);
  if (leaf7.eax >= 1) f.avx512_bf16 = bit(cpuid(7, 1).eax, 5);

  if (f.amx_tile && f.os_tile_state) f.amx_permitted = request_amx_permission();
  return f;
}

#else

CpuFeatures probe() { return CpuFeatures{}; }

#endif

std::mutex g_level_mutex;
bool g_level_resolved = false;
IsaLevel g_level = IsaLevel::generic;

void check_supported(IsaLevel level, const char* source) {
  const CpuFeatures& f = cpu_features();
  if (f.runs(level)) return;
  throw std::invalid_argument(std::string(source) + " asks for ISA level '" + isa_level_name(level) +
                              "', but this CPU offers only: " + level_list(f.selectable_levels()));
}

}  // namespace

const char* isa_level_name(IsaLevel level) { return entry(level).name; }

IsaLevel isa_fallback(IsaLevel level) { return entry(level).fallback; }

IsaLevel parse_isa_level(const std::string& name) {
  std::vector<IsaLevel> all;
  for (int i = 0; i < kIsaLevelCount; ++i) {
    if (name == kLevels[i].name) return static_cast<IsaLevel>(i);
    all.push_back(static_cast<IsaLevel>(i));
  }
  throw std::invalid_argument("unknown ISA level '" + name + "'; expected one of: " + level_list(all));
}

IsaLevel parse_runnable_isa_level(const std::string& name) {
  const IsaLevel level = parse_isa_level(name);
  if (!isa_level_runnable(level)) throw std::invalid_argument("ISA level '" + name + "' is not available on this CPU");
  return level;
}

bool CpuFeatures::runs(IsaLevel level) const {
  const LevelEntry& e = entry(level);
  if (!e.requirement(*this)) return false;
  return level == IsaLevel::generic || runs(e.fallback);
}

IsaLevel CpuFeatures::best_level() const { return available_levels().back(); }

std::vector<IsaLevel> CpuFeatures::available_levels() const {
  std::vector<IsaLevel> levels;
  for (int i = 0; i < kIsaLevelCount; ++i)
    if (kLevels[i].automatic && runs(static_cast<IsaLevel>(i))) levels.push_back(static_cast<IsaLevel>(i));
  return levels;
}

std::vector<IsaLevel> CpuFeatures::selectable_levels() const {
  std::vector<IsaLevel> levels;
  for (int i = 0; i < kIsaLevelCount; ++i)
    if (runs(static_cast<IsaLevel>(i))) levels.push_back(static_cast<IsaLevel>(i));
  return levels;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = probe();
  return features;
}

IsaLevel active_isa_level() {
  std::lock_guard<std::mutex> lock(g_level_mutex);
  if (!g_level_resolved) {
    const char* forced = std::getenv("KT_MOE_ISA");
    if (forced != nullptr && forced[0] != '\0') {
      IsaLevel level;
      try {
        level = parse_isa_level(forced);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string("KT_MOE_ISA: ") + e.what());
      }
      check_supported(level, (std::string("KT_MOE_ISA=") + forced).c_str());
      g_level = level;
    } else {
      g_level = cpu_features().best_level();
    }
    g_level_resolved = true;
  }
  return g_level;
}

void set_active_isa_level(IsaLevel level) {
  check_supported(level, "set_isa");
  std::lock_guard<std::mutex> lock(g_level_mutex);
  g_level = level;
  g_level_resolved = true;
}

}  // namespace kt_moe
