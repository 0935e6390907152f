// Shared declarations of the bit-packing ops: argument checks used by the CPU
// and CUDA implementations alike, and the implementations' signatures.
//
// Layout (same as commlib/ops/reference.py): code i of width b occupies bits
// (i*b) % 8 .. (i*b) % 8 + b - 1 of byte (i*b) / 8, little-endian within a
// byte; the unused high bits of the last byte are zero.
//
// Every check raises c10::ValueError, which Python sees as ValueError -- the
// same type the Python wrapper and the pure-torch reference raise.
#pragma once

#include <cstdint>
#include <limits>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace commlib {

inline bool is_supported_bits(int64_t bits) {
  return bits == 1 || bits == 2 || bits == 4 || bits == 8;
}

// Bytes needed for n codes of `bits` bits: ceil(n * bits / 8). Callers check
// n <= kMaxCodes first, so n * bits cannot overflow.
inline int64_t packed_length(int64_t n, int64_t bits) {
  return (n * bits + 7) / 8;
}

constexpr int64_t kMaxCodes = std::numeric_limits<int64_t>::max() / 8;

inline void check_bits(const char* op, int64_t bits) {
  TORCH_CHECK_VALUE(is_supported_bits(bits), op, ": bits must be one of (1, 2, 4, 8), got ", bits);
}

inline void check_byte_vector(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kByte, op, ": ", name, " must be a 1-D uint8 tensor, got dtype ",
                    t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1, op, ": ", name, " must be a 1-D uint8 tensor, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous (call .contiguous() first)");
}

// Metadata checks of pack_bits. The value check (every code < 2**bits) needs
// the data and is fused into each implementation's packing pass.
inline void check_pack_args(const at::Tensor& codes, int64_t bits) {
  check_bits("pack_bits", bits);
  check_byte_vector("pack_bits", "codes", codes);
  TORCH_CHECK_VALUE(codes.numel() <= kMaxCodes, "pack_bits: too many codes (", codes.numel(), ")");
}

inline void check_unpack_args(const at::Tensor& packed, int64_t bits, int64_t n) {
  check_bits("unpack_bits", bits);
  check_byte_vector("unpack_bits", "packed", packed);
  TORCH_CHECK_VALUE(n >= 0, "unpack_bits: n must be non-negative, got ", n);
  TORCH_CHECK_VALUE(n <= kMaxCodes, "unpack_bits: n is too large (", n, ")");
  const int64_t need = packed_length(n, bits);
  TORCH_CHECK_VALUE(packed.numel() == need, "unpack_bits: ", n, " codes of ", bits, " bits need ", need,
                    " bytes, got ", packed.numel());
}

at::Tensor pack_bits_cpu(const at::Tensor& codes, int64_t bits);
at::Tensor unpack_bits_cpu(const at::Tensor& packed, int64_t bits, int64_t n);

#ifdef WITH_CUDA
at::Tensor pack_bits_cuda(const at::Tensor& codes, int64_t bits);
at::Tensor unpack_bits_cuda(const at::Tensor& packed, int64_t bits, int64_t n);
#endif

}  // namespace commlib
