// The registry entries of formats int8_rows and int4_rows (int_rows.hpp, formats/registry.cpp).
#pragma once

#include "formats/weight_format.hpp"

namespace kt_moe {

WeightFormat make_int8_rows(const FormatOptions& options);
WeightFormat make_int4_rows(const FormatOptions& options);

}  // namespace kt_moe
