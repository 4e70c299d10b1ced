// The registry entry of format fp8 (formats/registry.cpp, formats/weight_format.hpp).
#pragma once

#include "formats/weight_format.hpp"

namespace kt_moe {

WeightFormat make_fp8(const FormatOptions& options);

}  // namespace kt_moe
