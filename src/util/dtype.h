// Element types of stored tensors. F32, F16 and BF16 are computed with, and the block-quantized
// types Q8_0, Q4_0 and Q4_K (GGUF's layouts, see quant/blocks.h); the others are recognized so
// that an error can name them. A quantized type stores its rows as blocks of block_elems values in
// block_bytes bytes; the float types are blocks of one element.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace fh1 {

enum class DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2, Q8_0, Q4_0, Q4_K, UNKNOWN };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::BOOL: case DType::F8_E4M3: case DType::F8_E5M2: return 1;
    case DType::Q8_0: case DType::Q4_0: case DType::Q4_K: case DType::UNKNOWN: return 0;  // not per element
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::F8_E5M2: return "F8_E5M2";
    case DType::Q8_0: return "Q8_0";
    case DType::Q4_0: return "Q4_0";
    case DType::Q4_K: return "Q4_K";
    case DType::UNKNOWN: return "UNKNOWN";
  }
  return "UNKNOWN";
}

// A safetensors dtype name (the quantized types are not safetensors dtypes: see
// quantized_dtype_from_name).
inline DType dtype_from_name(const std::string& s) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I64, DType::I32, DType::I16,
                  DType::I8, DType::U8, DType::BOOL, DType::F8_E4M3, DType::F8_E5M2})
    if (s == dtype_name(t)) return t;
  return DType::UNKNOWN;
}

inline bool is_float_dtype(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }
inline bool is_quantized_dtype(DType t) { return t == DType::Q8_0 || t == DType::Q4_0 || t == DType::Q4_K; }

// "Q8_0", "q4_k", ... -> the quantized type, else UNKNOWN.
inline DType quantized_dtype_from_name(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_K})
    if (s == dtype_name(t)) return t;
  return DType::UNKNOWN;
}

// Values per block and bytes per block: 32 in 34 bytes (Q8_0: fp16 scale + 32 int8), 32 in 18
// (Q4_0: fp16 scale + 16 bytes of nibbles), 256 in 144 (Q4_K: two fp16 super-scales, 12 bytes of
// 6-bit sub-block scales and mins, 128 bytes of nibbles); a float type is a block of one.
inline int64_t dtype_block_elems(DType t) {
  switch (t) {
    case DType::Q8_0: case DType::Q4_0: return 32;
    case DType::Q4_K: return 256;
    default: return 1;
  }
}
inline int64_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::Q8_0: return 34;
    case DType::Q4_0: return 18;
    case DType::Q4_K: return 144;
    default: return static_cast<int64_t>(dtype_size(t));
  }
}
// Bytes of one row of n values (n a multiple of the block size for quantized types).
inline int64_t dtype_row_bytes(DType t, int64_t n) { return n / dtype_block_elems(t) * dtype_block_bytes(t); }

}  // namespace fh1
