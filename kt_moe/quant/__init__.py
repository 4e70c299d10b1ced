"""Quantization schemes of expert weights (pure torch): the one place their formats are defined.
The native kernels, the converter (`kt-moe convert`) and the pre-quantized files all use these.

  int8_channel (AMXINT8, AMXINT8_SFT): q int8 [N, K], scale fp32 [N]; W ~= q * scale[n]
  int4_group16 (AMXINT4, AMXINT4_SFT): codes uint8 [N, Kp/2], scale fp16 [N, Kp/16], zero uint8
                          [N, Kp/16] in sixteenths of a code; W ~= (code - zero / 16) * scale, K
                          padded to Kp (a multiple of 16)
  int4_kgroup (AMXINT4_KGroup_SFT): the same with G = 32, 64 or 128 inputs per group, with zero
                          points or symmetric (zero point 8, no zero part)

Details in each module and in docs/quantization.md.
"""

from kt_moe.quant.int4_group16 import dequantize_int4_group16, padded_k, quantize_int4_group16
from kt_moe.quant.int4_groups import dequantize_int4, quantize_int4
from kt_moe.quant.int8_channel import dequantize_int8_channel, quantize_int8_channel
from kt_moe.quant.schemes import (KGROUP_SIZES, METHOD_SCHEMES, SCHEMES, QuantScheme, int4_kgroup_scheme,
                                  scheme_for_method)

__all__ = ["KGROUP_SIZES", "METHOD_SCHEMES", "SCHEMES", "QuantScheme", "dequantize_int4", "dequantize_int4_group16",
           "dequantize_int8_channel", "int4_kgroup_scheme", "padded_k", "quantize_int4", "quantize_int4_group16",
           "quantize_int8_channel", "scheme_for_method"]
