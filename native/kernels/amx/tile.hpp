// The AMX tile layer the AMX kernels are written against: the few tile instructions they use,
// with two implementations behind one interface, chosen at compile time:
//   tile_intrinsics.hpp  the instructions themselves (level amx; -mamx-tile -mamx-bf16)
//   tile_emulated.hpp    portable C++ following Intel's pseudo-code for each instruction (level
//                        amx_emulated; defined by KT_AMX_EMULATED=1, no ISA flags), so that every
//                        CPU runs the AMX kernels' packing, tiling and tails.
//
// Interface (namespace kt_moe::KT_KERNEL_NS::tile; tile numbers T, C, A, B are 0..7):
//   Config                       the 64-byte LDTILECFG block, palette 1
//   full_config()                every tile at 16 rows x 64 bytes
//   configure(const Config&)     LDTILECFG: per-thread state; zeroes every tile
//   release()                    TILERELEASE: back to the initial (unconfigured) state
//   zero<T>()                    TILEZERO
//   load<T>(base, stride_bytes)  TILELOADD: rows[T] rows of colsb[T] bytes, row r at base + r * stride
//   store<T>(base, stride_bytes) TILESTORED
//   dpbf16ps<C, A, B>()          TDPBF16PS: C[m][n] (fp32) += sum over k pairs of
//                                A[m][pair k] . B[pair row k][n] (bf16 pairs, see tile_emulated.hpp)
//   dpbssd<C, A, B>()            TDPBSSD: C[m][n] (int32, wrapping) += sum over k quads of
//                                A[m][quad k] . B[quad row k][n], 4 byte products each, both signed
//   dpbsud<C, A, B>()            TDPBSUD: the same with A's bytes signed and B's unsigned
//   Scope scope(cfg)             configure(cfg) now, release() when the scope ends
#pragma once

#include <cstdint>

#include "kernels/level_namespace.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace tile {

constexpr int kTileCount = 8;     // palette 1: tmm0..tmm7
constexpr int kMaxRows = 16;      // palette 1: rows per tile
constexpr int kMaxColBytes = 64;  // palette 1: bytes per tile row

// LDTILECFG's memory operand (Intel SDM, "Tile configuration"): palette 1, start_row 0, then the
// bytes per row and the rows of each tile; tiles 8..15 and the reserved bytes must be zero.
struct alignas(64) Config {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(Config) == 64, "LDTILECFG reads exactly 64 bytes");

// Every tile at its largest shape, 16 rows x 64 bytes: the configuration the kernels load.
inline Config full_config() {
  Config cfg;
  for (int t = 0; t < kTileCount; ++t) {
    cfg.rows[t] = kMaxRows;
    cfg.colsb[t] = kMaxColBytes;
  }
  return cfg;
}

inline void configure(const Config& cfg);  // defined by the implementation included below
inline void release();

// The tile configuration of one kernel call: the configuration is per thread and other code may
// change it, so a call loads its own and releases the tiles before returning.
class Scope {
 public:
  explicit Scope(const Config& cfg) { configure(cfg); }
  ~Scope() { release(); }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
};

}  // namespace tile
}  // namespace KT_KERNEL_NS
}  // namespace kt_moe

#if defined(KT_AMX_EMULATED) && KT_AMX_EMULATED
#include "kernels/amx/tile_emulated.hpp"
#else
#include "kernels/amx/tile_intrinsics.hpp"
#endif
