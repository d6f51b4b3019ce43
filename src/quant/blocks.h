// Block-quantized weight rows in GGUF's layouts (ggml's block_q8_0, block_q4_0, block_q4_K), so
// that a quantized checkpoint of ours and a GGUF file hold the same bytes per row:
//   Q8_0: 32 values in 34 bytes: fp16 d, int8 q[32];                 x = d * q
//   Q4_0: 32 values in 18 bytes: fp16 d, 16 bytes of nibbles;        x = d * (q - 8)
//         (value j < 16 is the low nibble of byte j, value j + 16 its high nibble)
//   Q4_K: 256 values in 144 bytes: fp16 d, fp16 dmin, 12 bytes packing eight 6-bit scales sc and
//         mins m (one per 32 values), 128 bytes of nibbles;         x = d * sc * q - dmin * m
//         (in each 64 values, 32 bytes: low nibbles are the first 32 values, high the next 32)
// Reference (scalar) code: the quantize command and the kernels' dequantizing paths use it; the
// CPU backend's int8 dot products (kernels/cpu/simd_quant.cpp) read the same bytes.
#pragma once

#include <cstdint>

#include "util/dtype.h"

namespace fh1::quant {

// Quantizes n values (a multiple of dtype_block_elems(type)) into dtype_row_bytes(type, n) bytes.
void quantize_row(DType type, const float* x, int64_t n, uint8_t* out);
// The inverse: n values from a row of blocks.
void dequantize_row(DType type, const uint8_t* in, int64_t n, float* out);

// Q4_K's packing of the eight 6-bit (scale, min) pairs of a super-block into 12 bytes: pair j of
// the 12 bytes at `scales` (inline: the int8 kernels unpack it for every 256 weights).
inline void q4k_scale_min(int j, const uint8_t* scales, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *m = scales[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// Activations quantized for the int8 dot products: blocks of 32 values, q = round(x / d) with
// d = max|x| / 127, and per block d and d * sum(q) (the latter for the offset terms of Q4_0 and
// Q4_K). n must be a multiple of 32.
void quantize_activations(const float* x, int64_t n, int8_t* q, float* d, float* d_sum);

}  // namespace fh1::quant
