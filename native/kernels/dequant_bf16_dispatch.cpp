// The lookup of a format's dequantizer for an ISA level (dequant_bf16.hpp).
#include <stdexcept>
#include <string>

#include "kernels/dequant_bf16.hpp"

namespace kt_moe {

DequantFn dequant_bf16_kernel(const DequantFormat& format, IsaLevel level) {
  const DequantFn kernel = format.kernels.at(level);
  if (!kernel)
    throw std::invalid_argument(std::string("weight format ") + format.name + " has no bf16 dequantizer at ISA level " +
                                isa_level_name(level));
  return kernel;
}

}  // namespace kt_moe
