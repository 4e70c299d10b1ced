// The registry entry of format int4_packed (formats/registry.cpp, formats/weight_format.hpp).
#pragma once

#include "formats/weight_format.hpp"

namespace kt_moe {

WeightFormat make_int4_packed(const FormatOptions& options);

}  // namespace kt_moe
