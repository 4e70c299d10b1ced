// The AMX tile layer (tile.hpp) on the real instructions. Compiled with -mamx-tile -mamx-bf16
// (and -mamx-int8 where the int8 dot products are used).
// LDTILECFG and TILERELEASE go through the compiler's intrinsics. The instructions that name a
// tile are written as inline asm: GCC's _tile_loadd/_tile_stored/_tile_zero/_tile_dp* macros
// paste their tile argument as a literal token (a template parameter cannot be passed), and its
// _tile_loadd does not tell the compiler that it reads memory, which would let it drop or delay
// the stores that fill a packed buffer just before the load. Here loads and stores are ordered
// against memory ("memory" clobber); volatile asm keeps all tile instructions in program order.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "kernels/amx/tile.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace tile {

inline void configure(const Config& cfg) { _tile_loadconfig(&cfg); }

inline void release() { _tile_release(); }

template <int T>
inline void zero() {
  static_assert(0 <= T && T < kTileCount, "tile number");
  __asm__ volatile("tilezero %%tmm%c0" ::"i"(T));
}

template <int T>
inline void load(const void* base, int64_t stride_bytes) {
  static_assert(0 <= T && T < kTileCount, "tile number");
  __asm__ volatile("{tileloadd (%0,%1,1), %%tmm%c2|tileloadd %%tmm%c2, [%0+%1*1]}" ::"r"(base),
                   "r"(stride_bytes), "i"(T)
                   : "memory");
}

template <int T>
inline void store(void* base, int64_t stride_bytes) {
  static_assert(0 <= T && T < kTileCount, "tile number");
  __asm__ volatile("{tilestored %%tmm%c2, (%0,%1,1)|tilestored [%0+%1*1], %%tmm%c2}" ::"r"(base),
                   "r"(stride_bytes), "i"(T)
                   : "memory");
}

template <int C, int A, int B>
inline void dpbf16ps() {
  static_assert(0 <= C && C < kTileCount && 0 <= A && A < kTileCount && 0 <= B && B < kTileCount, "tile number");
  __asm__ volatile("{tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0|tdpbf16ps %%tmm%c0, %%tmm%c1, %%tmm%c2}" ::"i"(C),
                   "i"(A), "i"(B));
}

template <int C, int A, int B>
inline void dpbssd() {
  static_assert(0 <= C && C < kTileCount && 0 <= A && A < kTileCount && 0 <= B && B < kTileCount, "tile number");
  __asm__ volatile("{tdpbssd %%tmm%c2, %%tmm%c1, %%tmm%c0|tdpbssd %%tmm%c0, %%tmm%c1, %%tmm%c2}" ::"i"(C), "i"(A),
                   "i"(B));
}

template <int C, int A, int B>
inline void dpbsud() {
  static_assert(0 <= C && C < kTileCount && 0 <= A && A < kTileCount && 0 <= B && B < kTileCount, "tile number");
  __asm__ volatile("{tdpbsud %%tmm%c2, %%tmm%c1, %%tmm%c0|tdpbsud %%tmm%c0, %%tmm%c1, %%tmm%c2}" ::"i"(C), "i"(A),
                   "i"(B));
}

}  // namespace tile
}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
