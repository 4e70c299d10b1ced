// The argument checks of the quantized GEMM family (quant_pack.cpp) that every format's packer
// (native/formats/*/pack.cpp) runs too: one message style, std::invalid_argument (ValueError).
#pragma once

#include <cstdint>
#include <string>

namespace kt_moe {

[[noreturn]] void quant_fail(const std::string& what);  // "kt-moe quantized GEMM: " + what
void quant_check_k(int k);                               // 1 <= k <= 2^30
void quant_check_shape(int n, int k);                    // and 1 <= n <= 2^30
// A leading dimension of a part with `n` rows of `row` elements.
void quant_check_ld(int64_t ld, int64_t row, const char* name, int n);

inline int quant_ceil_div(int x, int y) { return (x + y - 1) / y; }

}  // namespace kt_moe
