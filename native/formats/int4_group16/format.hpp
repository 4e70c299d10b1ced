// The registry entry of format int4_group16 (formats/registry.cpp, formats/weight_format.hpp).
#pragma once

#include "formats/weight_format.hpp"

namespace kt_moe {

WeightFormat make_int4_group16(const FormatOptions& options);

}  // namespace kt_moe
