// fp8: float8_e4m3fn weights (largest finite value 448) with fp32 scales, as big MoE checkpoints
// ship them (method FP8 and AMXFP8_SFT; kt_moe/quant/fp8.py defines them in torch). Its option is
// the scale block side b (MOEConfig.group_size):
//   b > 0  fp8_block (DeepSeek-V3/R1, Qwen3-FP8, MiniMax-M2; b = 128 there):
//            weight fp8 [N, K], weight_scale_inv fp32 [ceil(N / b), ceil(K / b)] (the multiplier):
//            W[n, k] = weight[n, k] * weight_scale_inv[n / b, k / b]
//   b = 0  per output channel (GLM-4.x-FP8, compressed-tensors "float-quantized"):
//            weight fp8 [N, K], weight_scale fp32 [N]: W[n, k] = weight[n, k] * weight_scale[n]
// The experts stay FP8 in memory (one byte per weight plus the scales). The bf16 dequantizer
// (dequant_bf16.cpp) gives, at every level:
//   blocks   D[r, c] = bf16(fp8_value * scale of its block): one fp32 product, one rounding
//   channel  D[r, c] = fp8_value (exact in bf16: 4 significant bits, exponents 2^-9 .. 2^8), the
//            row scale left to the products (a row_scales format)
// fp8_value is decoded through IEEE half: the byte's sign, then its 7 other bits placed 7 bits up in
// an fp16 (exponent and mantissa line up, the bias differs by 8), so fp16 value * 256 is the e4m3
// value for every normal and subnormal code, exactly (vcvtph2ps on the vector levels, a table built
// the same way at the generic one). The two NaN codes (0x7F, 0xFF) decode as +-480 at every level:
// the loaders refuse non-finite weights before they get here.
#pragma once

namespace kt_moe {
namespace fp8_layout {

enum Part : int { kWeight = 0, kScale = 1 };

}  // namespace fp8_layout
}  // namespace kt_moe
