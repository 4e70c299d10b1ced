// The registry entry of format int8_channel (formats/registry.cpp, formats/weight_format.hpp).
#pragma once

#include "formats/weight_format.hpp"

namespace kt_moe {

WeightFormat make_int8_channel(const FormatOptions& options);

}  // namespace kt_moe
