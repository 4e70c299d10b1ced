// The AMX tile layer (tile.hpp) in portable C++, one function per instruction, following the
// pseudo-code of the Intel SDM (LDTILECFG, TILERELEASE, TILEZERO, TILELOADD, TILESTORED,
// TDPBF16PS, TDPBSSD, TDPBSUD): the tile registers and the configuration are per-thread state,
// rows and bytes past a tile's configured shape read as zero and are written as zero, TDPBF16PS
// accumulates the even and the odd elements of the bf16 pairs in two separate fp32 sums per output
// (FMA, round to nearest even, denormal inputs read as zero, denormal results flushed to zero)
// that are added to the destination at the end, TDPBSSD/TDPBSUD add the four products of sign- or
// zero-extended bytes to each int32 of the destination (wrapping). What the hardware would refuse
// (#GP for a bad configuration, #UD for an unconfigured tile or mismatched shapes) throws
// std::logic_error naming the instruction. Compiled without ISA flags (level amx_emulated).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/amx/tile.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace tile {

// The register file of one thread: the loaded configuration (palette 0: not configured) and the
// eight tiles of 16 rows x 64 bytes.
struct Registers {
  Config config = make_init_config();
  alignas(64) uint8_t data[kTileCount][kMaxRows][kMaxColBytes] = {};

  static Config make_init_config() {
    Config c;
    c.palette_id = 0;
    return c;
  }
};

inline thread_local Registers registers;

// A kernel bug the hardware would fault on: raised as an exception (RuntimeError in Python), so
// that the process survives it.
[[noreturn]] inline void fault(const char* instruction, const char* what) {
  throw std::logic_error(std::string("kt-moe emulated AMX: ") + instruction + ": " + what);
}

inline void require_configured(int t, const char* instruction) {
  if (registers.config.palette_id != 1 || registers.config.rows[t] == 0)
    fault(instruction, "#UD: tile not configured");
}

inline void configure(const Config& cfg) {
  if (cfg.palette_id > 1) fault("ldtilecfg", "#GP: unsupported palette");
  if (cfg.palette_id == 1) {
    for (uint8_t b : cfg.reserved)
      if (b != 0) fault("ldtilecfg", "#GP: reserved bytes not zero");
    for (int t = 0; t < 16; ++t) {
      const bool exists = t < kTileCount;
      if ((!exists && (cfg.rows[t] != 0 || cfg.colsb[t] != 0)) || cfg.rows[t] > kMaxRows ||
          cfg.colsb[t] > kMaxColBytes || (cfg.rows[t] == 0) != (cfg.colsb[t] == 0))
        fault("ldtilecfg", "#GP: tile shape outside palette 1");
    }
  }
  registers.config = cfg;
  if (cfg.palette_id == 0) registers.config = Registers::make_init_config();
  std::memset(registers.data, 0, sizeof registers.data);
}

inline void release() {
  registers.config = Registers::make_init_config();
  std::memset(registers.data, 0, sizeof registers.data);
}

template <int T>
inline void zero() {
  static_assert(0 <= T && T < kTileCount, "tile number");
  require_configured(T, "tilezero");
  std::memset(registers.data[T], 0, sizeof registers.data[T]);
}

template <int T>
inline void load(const void* base, int64_t stride_bytes) {
  static_assert(0 <= T && T < kTileCount, "tile number");
  require_configured(T, "tileloadd");
  const int rows = registers.config.rows[T], colsb = registers.config.colsb[T];
  std::memset(registers.data[T], 0, sizeof registers.data[T]);  // write_row_and_zero, zero_upper_rows
  for (int r = 0; r < rows; ++r)
    std::memcpy(registers.data[T][r], static_cast<const uint8_t*>(base) + r * stride_bytes, colsb);
}

template <int T>
inline void store(void* base, int64_t stride_bytes) {
  static_assert(0 <= T && T < kTileCount, "tile number");
  require_configured(T, "tilestored");
  const int rows = registers.config.rows[T], colsb = registers.config.colsb[T];
  for (int r = 0; r < rows; ++r)
    std::memcpy(static_cast<uint8_t*>(base) + r * stride_bytes, registers.data[T][r], colsb);
}

// DAZ / FTZ: a denormal fp32 becomes a zero of the same sign.
inline float flush_denormal(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7F800000u) == 0) bits &= 0x80000000u;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// make_fp32: the bf16 as the upper half of an fp32 (then DAZ).
inline float make_fp32(const uint8_t* bf16) {
  uint16_t half;
  std::memcpy(&half, bf16, sizeof half);
  const uint32_t bits = static_cast<uint32_t>(half) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return flush_denormal(f);
}

// The #UD checks of the dot-product instructions: C [m x n dwords] += A [m x k dwords] . B [k x n dwords].
inline void require_dot_shapes(int c, int a, int b, const char* instruction) {
  require_configured(c, instruction);
  require_configured(a, instruction);
  require_configured(b, instruction);
  const Config& cfg = registers.config;
  if (cfg.colsb[c] % 4 != 0 || cfg.colsb[a] % 4 != 0 || cfg.colsb[b] % 4 != 0 || cfg.colsb[c] != cfg.colsb[b] ||
      cfg.colsb[a] / 4 != cfg.rows[b] || cfg.rows[c] != cfg.rows[a])
    fault(instruction, "#UD: tile shapes do not match");
}

template <int C, int A, int B>
inline void dpbf16ps() {
  static_assert(0 <= C && C < kTileCount && 0 <= A && A < kTileCount && 0 <= B && B < kTileCount, "tile number");
  require_dot_shapes(C, A, B, "tdpbf16ps");
  const Config& cfg = registers.config;
  const int elements_src1 = cfg.colsb[A] / 4, elements_dest = cfg.colsb[C] / 4;
  for (int m = 0; m < cfg.rows[C]; ++m) {
    float temp1[kMaxColBytes / 2] = {};
    for (int k = 0; k < elements_src1; ++k)
      for (int n = 0; n < elements_dest; ++n)
        for (int half = 0; half < 2; ++half) {
          const float a = make_fp32(registers.data[A][m] + 4 * k + 2 * half);
          const float b = make_fp32(registers.data[B][k] + 4 * n + 2 * half);
          temp1[2 * n + half] = flush_denormal(std::fma(a, b, temp1[2 * n + half]));
        }
    for (int n = 0; n < elements_dest; ++n) {
      float dest;
      std::memcpy(&dest, registers.data[C][m] + 4 * n, sizeof dest);
      const float tmpf32 = flush_denormal(temp1[2 * n] + temp1[2 * n + 1]);
      dest = flush_denormal(flush_denormal(dest) + tmpf32);
      std::memcpy(registers.data[C][m] + 4 * n, &dest, sizeof dest);
    }
    std::memset(registers.data[C][m] + 4 * elements_dest, 0, kMaxColBytes - 4 * elements_dest);  // write_row_and_zero
  }
  for (int m = cfg.rows[C]; m < kMaxRows; ++m) std::memset(registers.data[C][m], 0, kMaxColBytes);  // zero_upper_rows
}

// TDPBSSD / TDPBSUD: for each dword of C, DPBD(c, a, b) = c + the four products
// of a's and b's bytes, each byte sign-extended (ASigned / BSigned) or zero-extended; int32 wraps.
template <int C, int A, int B, bool ASigned, bool BSigned>
inline void dot_bytes(const char* instruction) {
  static_assert(0 <= C && C < kTileCount && 0 <= A && A < kTileCount && 0 <= B && B < kTileCount, "tile number");
  require_dot_shapes(C, A, B, instruction);
  const Config& cfg = registers.config;
  const int elements_src1 = cfg.colsb[A] / 4, elements_dest = cfg.colsb[C] / 4;
  auto extend = [](uint8_t byte, bool is_signed) { return is_signed ? int32_t(int8_t(byte)) : int32_t(byte); };
  for (int m = 0; m < cfg.rows[C]; ++m) {
    uint32_t tmp[kMaxColBytes / 4];
    std::memcpy(tmp, registers.data[C][m], sizeof tmp);
    for (int k = 0; k < elements_src1; ++k)
      for (int n = 0; n < elements_dest; ++n)
        for (int i = 0; i < 4; ++i)
          tmp[n] += uint32_t(extend(registers.data[A][m][4 * k + i], ASigned) *
                             extend(registers.data[B][k][4 * n + i], BSigned));
    std::memcpy(registers.data[C][m], tmp, 4 * elements_dest);
    std::memset(registers.data[C][m] + 4 * elements_dest, 0, kMaxColBytes - 4 * elements_dest);  // write_row_and_zero
  }
  for (int m = cfg.rows[C]; m < kMaxRows; ++m) std::memset(registers.data[C][m], 0, kMaxColBytes);  // zero_upper_rows
}

template <int C, int A, int B>
inline void dpbssd() {
  dot_bytes<C, A, B, true, true>("tdpbssd");
}

template <int C, int A, int B>
inline void dpbsud() {
  dot_bytes<C, A, B, true, false>("tdpbsud");
}

}  // namespace tile
}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
