"""Quantization schemes of expert weights (pure torch): the one place their formats are defined.
The native kernels, the converter (`kt-moe convert`) and the pre-quantized files all use these.

  int8_channel (AMXINT8): q int8 [N, K], scale fp32 [N]; W ~= q * scale[n]
  int4_group32 (AMXINT4): codes uint8 [N, Kp/2], scale fp32 [N, Kp/32], zero uint8 [N, Kp/32];
                          W ~= (code - zero) * scale, K padded to Kp (a multiple of 32)

Details in each module and in docs/quantization.md.
"""

from kt_moe.quant.int4_group32 import dequantize_int4_group32, padded_k, quantize_int4_group32
from kt_moe.quant.int8_channel import dequantize_int8_channel, quantize_int8_channel
from kt_moe.quant.schemes import METHOD_SCHEMES, SCHEMES, QuantScheme, scheme_for_method

__all__ = ["METHOD_SCHEMES", "SCHEMES", "QuantScheme", "dequantize_int4_group32",
           "dequantize_int8_channel", "padded_k", "quantize_int4_group32", "quantize_int8_channel",
           "scheme_for_method"]
