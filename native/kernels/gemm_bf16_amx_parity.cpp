// The AMX bf16 GEMM for plans whose P is stored kj (P(k, j) = p[k * ldp + j]: the backward's
// weight read as [K, N]) and whose R has few rows (kParityMaxRows: one expert's tokens): P's tiles
// are loaded straight from memory, never packed. Compiled for levels amx and amx_emulated like
// gemm_bf16_amx.cpp.
//
// A tile loaded from P's rows k0..k0+15 and columns j0..j0+31 is, read as a VNNI "B" tile, 16 pair
// rows whose pairs are COLUMN pairs (j0 + 2c, j0 + 2c + 1), c < 16. Multiplied by an "A" tile whose
// pairs are (R[i, k0 + r], 0) it gives the even columns, by (0, R[i, k0 + r]) the odd ones:
//   C_t[i, c] = sum_r R[i, k0 + r] * P(k0 + r, j0 + 2c + t)        t = 0 (even), 1 (odd)
// The "A" tiles come from two zero-expanded copies of R (expand_rows), made once per call. That is
// twice the tile work of a packed P and no packing, which pays off while the product is
// memory-bound (few rows).
//
// Loop: blocks of pass_chunks() chunks (16 rows of P each); per block, pairs of 32-column blocks
// across all of P's columns, every 16-row group of R against each pair while its P tiles are in
// L1. fp32 partial sums wait between blocks in ScratchSlot::accumulators, each 32-column block
// holding its even columns then its odd ones; they are put back in order when written to C.
// Tails: the partial last chunk (depth % 16) and the partial last column block (cols % 32) come
// from zero-padded copies of P (ScratchSlot::row_tail); expanded rows past `rows` are zero where
// a tile reads them.
// Each chunk also asks for its two lines per row of the next column-block pair, those inside P
// (PTiles::prefetch_next_pair): the 2-thread read of [1408, 2048] weights went from 6-10 to
// 12-21 GB/s, and the DeepSeek-V2-Lite SFT backward 25-30% faster (measured interleaved in one
// process).
// Tile registers: results 0..3 (C(b, t) = 2b + t for column block b of the pair), the even and
// odd "A" tiles 4 and 5, P tiles 6 and 7. With a single row group (rows <= 16) the result and "A"
// tiles are configured with just `rows` rows, so the tile products skip the padding rows.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_bf16_amx_tiles.hpp"
#include "kernels/gemm_bf16_store.hpp"
#include "kernels/row_stride.hpp"
#include "kernels/scratch.hpp"

namespace kt_moe {
namespace KT_KERNEL_NS {
namespace {

constexpr int kChunkRows = kTilePairs;           // 16 rows of P per tile
constexpr int kBlockCols = 2 * kResultCols;      // 32 columns of P per tile
constexpr int kPairCols = 2 * kBlockCols;        // the micro-kernel's 64 columns
constexpr int kMaxBlockChunks = 4;               // rows of P per pass: at most 64

// A pass reads its rows of P side by side, 128 bytes of each at a time: one stream per row, each in
// pages of its own once a row spans 4 KB. Measured on Sapphire Rapids (1 thread, plain reads of
// rows 4160 bytes apart): 24 to 48 such streams read at 14.7-15.0 GB/s, 56 at 12.9 and 64 at 10.4
// (the L2 streamer follows a limited number of pages). So a P read from memory takes the chunks
// per pass whose rows keep about kPassPages pages in use (rounded, at most kMaxBlockChunks; a row
// longer than a page uses one at a time): bf16 weights [1408, 2048] at their padded stride (4160
// bytes) and any with longer rows take 3, [2048, 1408] ones (2880 bytes) keep 4, as does a P small
// enough to be in L2 (the SFT engine's dequantized blocks), since fewer chunks per pass cost more
// accumulator round trips. Measured with huge-page weights as the engine keeps them: [1408, 2048]
// for 12 rows, 1 thread, 0.66-0.69 -> 0.58-0.61 ms; the DeepSeek-V2-Lite AMXBF16_SFT backward at
// q = 128, 2 threads, 73-79 -> 65-72 ms (two builds, 7 interleaved rounds).
constexpr int64_t kPageBytes = 4096, kPassPages = 48;
constexpr int64_t kCachedBytes = int64_t(1) << 20;
int pass_chunks(const GemmPlan& p) {
  const int64_t ld_bytes = p.ldp * int64_t(sizeof(bf16_t));
  if (int64_t(p.depth) * ld_bytes <= kCachedBytes) return kMaxBlockChunks;
  const int64_t chunk_bytes = kChunkRows * std::min(ld_bytes, kPageBytes);  // of the pages in use
  const int64_t chunks = (kPassPages * kPageBytes + chunk_bytes / 2) / chunk_bytes;
  return static_cast<int>(std::clamp<int64_t>(chunks, 1, kMaxBlockChunks));
}

enum : int { kC00 = 0, kC01 = 1, kC10 = 2, kC11 = 3, kEven = 4, kOdd = 5, kP0 = 6, kP1 = 7 };

struct TileSource {
  const bf16_t* base;
  int64_t stride_bytes;
};

// Where the P tile of chunk kc and column block b comes from: P itself, or a zero-padded copy for
// the partial last chunk ([16, blocks * 32], rows k_tail_ld_ apart) and the partial last column block
// ([full rows, 32]).
class PTiles {
 public:
  explicit PTiles(const GemmPlan& p) : p_(p) {
    full_chunks_ = p.depth / kChunkRows;
    full_blocks_ = p.cols / kBlockCols;
    blocks_ = (p.cols + kBlockCols - 1) / kBlockCols;
    const bool k_tail = p.depth % kChunkRows != 0, j_tail = p.cols % kBlockCols != 0;
    k_tail_ld_ = padded_row_stride(int64_t(blocks_) * kBlockCols, sizeof(bf16_t));
    const int64_t k_tail_elems = k_tail ? int64_t(kChunkRows) * k_tail_ld_ : 0;
    const int64_t j_tail_elems = j_tail ? int64_t(full_chunks_) * kChunkRows * kBlockCols : 0;
    auto* buffer =
        static_cast<bf16_t*>(thread_scratch(ScratchSlot::row_tail, sizeof(bf16_t) * (k_tail_elems + j_tail_elems)));
    std::memset(buffer, 0, sizeof(bf16_t) * (k_tail_elems + j_tail_elems));
    k_tail_ = buffer;
    j_tail_ = buffer + k_tail_elems;
    const int k0 = full_chunks_ * kChunkRows, j0 = full_blocks_ * kBlockCols;
    for (int k = k0; k < p.depth; ++k)
      std::memcpy(k_tail_ + int64_t(k - k0) * k_tail_ld_, p.p + k * p.ldp, sizeof(bf16_t) * p.cols);
    if (j_tail)
      for (int k = 0; k < k0; ++k)
        std::memcpy(j_tail_ + int64_t(k) * kBlockCols, p.p + k * p.ldp + j0, sizeof(bf16_t) * (p.cols - j0));
  }

  TileSource operator()(int kc, int b) const {
    if (kc == full_chunks_)
      return {k_tail_ + b * kBlockCols, k_tail_ld_ * int64_t(sizeof(bf16_t))};
    if (b == full_blocks_) return {j_tail_ + int64_t(kc) * kChunkRows * kBlockCols, kBlockCols * sizeof(bf16_t)};
    return {p_.p + int64_t(kc) * kChunkRows * p_.ldp + b * kBlockCols, p_.ldp * int64_t(sizeof(bf16_t))};
  }

  // Asks for chunk kc's rows of the column-block pair after b's, one 64-byte line (32 columns) per
  // block: only the lines of whole chunks of P that start inside its columns, so that no address
  // is formed past P (the tail copies are in cache already).
  void prefetch_next_pair(int kc, int b) const {
    const int next = (b + 2) * kBlockCols;
    if (kc >= full_chunks_ || next >= p_.cols) return;
    const int lines = next + kBlockCols < p_.cols ? 2 : 1;
    prefetch_tile_rows(p_.p + int64_t(kc) * kChunkRows * p_.ldp + next, p_.ldp * int64_t(sizeof(bf16_t)), lines);
  }

 private:
  const GemmPlan& p_;
  int full_chunks_ = 0, full_blocks_ = 0, blocks_ = 0;
  int64_t k_tail_ld_ = 0;  // row stride of the k-tail copy (padded, kernels/row_stride.hpp)
  bf16_t* k_tail_ = nullptr;
  bf16_t* j_tail_ = nullptr;
};

// The two zero-expanded copies of R, [groups * 16, ld] each with ld >= 32 * chunks (a padded row
// stride, kernels/row_stride.hpp): for i < rows and
// k < depth, even[i][2k] = R[i, k] and odd[i][2k + 1] = R[i, k]; zero elsewhere (rows past `rows`
// only where the tiles read them). Written as 32-bit words (little endian: the even element is
// the low half).
struct ExpandedRows {
  const bf16_t* even;
  const bf16_t* odd;
};

ExpandedRows expand_rows(const GemmPlan& p, int groups, int64_t ld) {
  const int64_t words = ld / 2, elems = int64_t(groups) * kTileRows * words;
  auto* even = static_cast<uint32_t*>(thread_scratch(ScratchSlot::packed, 2 * sizeof(uint32_t) * elems));
  uint32_t* odd = even + elems;
  // A single group's tiles are configured with just `rows` rows: the rows below are never read.
  const int read_rows = groups == 1 ? p.rows : groups * kTileRows;
  for (int i = 0; i < read_rows; ++i) {
    uint32_t* __restrict e = even + i * words;
    uint32_t* __restrict o = odd + i * words;
    const int filled = i < p.rows ? p.depth : 0;
    const bf16_t* __restrict r = p.r + std::min(i, p.rows - 1) * p.ldr;  // rows past `rows`: not read
    for (int k = 0; k < filled; ++k) {  // vectorised: the pointers do not overlap
      const uint32_t v = r[k];
      e[k] = v;
      o[k] = v << 16;
    }
    std::memset(e + filled, 0, sizeof(uint32_t) * (words - filled));
    std::memset(o + filled, 0, sizeof(uint32_t) * (words - filled));
  }
  return {reinterpret_cast<const bf16_t*>(even), reinterpret_cast<const bf16_t*>(odd)};
}

// The result tiles of one 16-row group of R (its expanded rows at e, row stride e_stride bytes) and NC (1, 2)
// column blocks b, b + 1 over chunks [first, first + count). They start from zero, or from c_in
// when not null, and end in c_out: C(b', t) at + b' * 32 + t * 16 (fp32, row stride in_ld / out_ld).
template <int NC>
void parity_kernel(const ExpandedRows& e, int64_t e_stride, const PTiles& p_tiles, int b, int first, int count,
                   const float* c_in, int64_t in_ld, float* c_out, int64_t out_ld) {
  if (c_in == nullptr) {
    tile::zero<kC00>();
    tile::zero<kC01>();
    if constexpr (NC == 2) {
      tile::zero<kC10>();
      tile::zero<kC11>();
    }
  } else {
    const int64_t stride = in_ld * int64_t(sizeof(float));
    tile::load<kC00>(c_in, stride);
    tile::load<kC01>(c_in + kResultCols, stride);
    if constexpr (NC == 2) {
      tile::load<kC10>(c_in + kBlockCols, stride);
      tile::load<kC11>(c_in + kBlockCols + kResultCols, stride);
    }
  }
  for (int kc = first; kc < first + count; ++kc) {
    const TileSource s0 = p_tiles(kc, b);
    p_tiles.prefetch_next_pair(kc, b);
    tile::load<kP0>(s0.base, s0.stride_bytes);
    tile::load<kEven>(e.even + kc * kTileK, e_stride);
    tile::load<kOdd>(e.odd + kc * kTileK, e_stride);
    tile::dpbf16ps<kC00, kEven, kP0>();
    tile::dpbf16ps<kC01, kOdd, kP0>();
    if constexpr (NC == 2) {
      const TileSource s1 = p_tiles(kc, b + 1);
      tile::load<kP1>(s1.base, s1.stride_bytes);
      tile::dpbf16ps<kC10, kEven, kP1>();
      tile::dpbf16ps<kC11, kOdd, kP1>();
    }
  }
  const int64_t stride = out_ld * int64_t(sizeof(float));
  tile::store<kC00>(c_out, stride);
  tile::store<kC01>(c_out + kResultCols, stride);
  if constexpr (NC == 2) {
    tile::store<kC10>(c_out + kBlockCols, stride);
    tile::store<kC11>(c_out + kBlockCols + kResultCols, stride);
  }
}

// Writes rows x cols (cols <= 64) of T from result tiles laid out by parity_kernel (ld 64),
// through `ordered` ([16, 64]) back in column order.
void store_parity(const GemmPlan& p, int i0, int j0, int rows, int cols, const float* out, float* ordered) {
  for (int i = 0; i < rows; ++i)
    for (int block = 0; block < kPairCols; block += kBlockCols) {
      const float* even = out + i * kPairCols + block;
      const float* odd = even + kResultCols;
      float* dst = ordered + i * kPairCols + block;
      for (int c = 0; c < kResultCols; ++c) {
        dst[2 * c] = even[c];
        dst[2 * c + 1] = odd[c];
      }
    }
  store_block(p, i0, j0, rows, cols, ordered, kPairCols);
}

}  // namespace

void gemm_bf16_amx_parity(const GemmPlan& p) {
  const int chunks = (p.depth + kChunkRows - 1) / kChunkRows;
  const int blocks = (p.cols + kBlockCols - 1) / kBlockCols;
  const int groups = (p.rows + kTileRows - 1) / kTileRows;
  const int64_t e_ld = padded_row_stride(int64_t(chunks) * kTileK, sizeof(bf16_t));
  const PTiles p_tiles(p);
  const ExpandedRows e = expand_rows(p, groups, e_ld);
  auto* out = static_cast<float*>(thread_scratch(ScratchSlot::tile_out, sizeof(float) * 2 * kTileRows * kPairCols));
  float* ordered = out + kTileRows * kPairCols;
  const int64_t acc_ld = padded_row_stride(int64_t(blocks + 1) / 2 * kPairCols, sizeof(float));
  const int block_chunks = pass_chunks(p);
  float* acc = nullptr;
  if (chunks > block_chunks)
    acc = static_cast<float*>(
        thread_scratch(ScratchSlot::accumulators, sizeof(float) * groups * kTileRows * acc_ld));
  const int64_t e_stride = e_ld * int64_t(sizeof(bf16_t));
  tile::Config config = tile::full_config();
  if (groups == 1)  // one row group: the result and "A" tiles hold just its rows (fewer tile-product rows)
    for (int t : {kC00, kC01, kC10, kC11, kEven, kOdd}) config.rows[t] = static_cast<uint8_t>(p.rows);
  const tile::Scope scope(config);
  for (int c0 = 0; c0 < chunks; c0 += block_chunks) {
    const int cn = std::min(block_chunks, chunks - c0);
    const bool first = c0 == 0, last = c0 + cn == chunks;
    for (int b = 0; b < blocks; b += 2) {
      const bool two = b + 1 < blocks;
      for (int g = 0; g < groups; ++g) {
        const int64_t g_off = int64_t(g) * kTileRows * e_ld;
        const ExpandedRows eg{e.even + g_off, e.odd + g_off};
        float* acc_block = acc != nullptr ? acc + int64_t(g) * kTileRows * acc_ld + b * kBlockCols : nullptr;
        const float* c_in = first ? nullptr : acc_block;
        float* c_out = last ? out : acc_block;
        const int64_t out_ld = last ? kPairCols : acc_ld;
        if (two)
          parity_kernel<2>(eg, e_stride, p_tiles, b, c0, cn, c_in, acc_ld, c_out, out_ld);
        else
          parity_kernel<1>(eg, e_stride, p_tiles, b, c0, cn, c_in, acc_ld, c_out, out_ld);
        if (last)
          store_parity(p, g * kTileRows, b * kBlockCols, std::min(kTileRows, p.rows - g * kTileRows),
                       std::min(kPairCols, p.cols - b * kBlockCols), out, ordered);
      }
    }
  }
}

}  // namespace KT_KERNEL_NS
}  // namespace kt_moe
