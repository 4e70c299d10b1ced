// int8_channel's quantized GEMM (layout.hpp) on AMX-INT8 tiles (levels amx and amx_emulated,
// kernels/quant_gemm_amx_pipeline.hpp): the packed q + 128 bytes are the B tiles in place
// (TDPBSUD); the zero-point term and the column scales are applied once per row at the end.
#include "formats/int8_channel/int8_channel.hpp"
#include "formats/int8_channel/row_offset.hpp"
#include "kernels/quant_gemm_amx_pipeline.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

// The pipeline's policy (kernels/quant_gemm_amx_pipeline.hpp).
struct Int8Tiles {
  static constexpr bool kRequantized = false;
  static constexpr bool kSignedTiles = false;
  static constexpr bool kUnitZeros = false;
  static constexpr int kColumnValues = 0;
  static constexpr int kHeaderBytes = int8_channel_layout::kHeaderBytes;
  static constexpr int kSourceUnitBytes = int8_channel_layout::kUnitBytes;
  static float row_offset(const float* scale, const float* sum, int groups) {
    return int8_row_offset(scale, sum, groups);
  }
};

}  // namespace

void gemm_int8_channel(const QuantGemmArgs& args) { amx_pipeline::gemm_quant_tiles<Int8Tiles>(args); }

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
