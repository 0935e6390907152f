// Shared declarations of the sketching ops: count sketch (Charikar et al.,
// 2002) and the subsampled randomized Hadamard transform (SRHT, Ailon &
// Chazelle, 2006), blockwise. The reference twins live in
// commlib/ops/reference.py and use the same hash functions.
//
// Count sketch, r rows x c columns, elements at global indices i < P:
//   P = 2^31 - 1 (a Mersenne prime); per row j six 31-bit words w_t =
//   hash32(seed, 8j + 1 + t) give a_j = 1 + w_0 mod (P - 1), b_j = w_1 mod P
//   and the sign polynomial's c_{j,0..3} = w_{2..5} mod P (counters start at
//   1: hash32(0, 0) = 0 would make a_0 = 1 for seed 0, and a = 1 maps runs of
//   2^31 / c consecutive indices to one bucket);
//   bucket_j(i) = (((a_j i + b_j) mod P) * c) >> 31         (2-wise independent)
//   sign_j(i)   = +1 if (((c3 i + c2) i + c1) i + c0 mod P) is even, else -1
//                                                            (4-wise independent)
//   sketch:   table[j, bucket_j(i)] += sign_j(i) * x_i
//   unsketch: estimate_i = median over j of sign_j(i) * table[j, bucket_j(i)]
//             (the lower median when r is even, as torch.median); the
//             table must be finite.
//
// SRHT with blocks of B = 2^q elements (x zero-padded to whole blocks) and a
// set of m distinct rows of each block: for block b,
//   v = sign(i) * x_i over the block,  sign(i) = +1 if hash32(seed, i) is even
//   v = H v / sqrt(B)   (fast Walsh-Hadamard: stages h = 1, 2, 4, ...,
//                        (u, w) -> (u + w, u - w); H is symmetric, orthonormal
//                        after the scaling)
//   out[b, :] = v[rows]
// and its transpose scatters out[b, :] into rows of a zero block, applies
// H / sqrt(B) and the signs. Float32; the reference does the same butterflies
// in the same order, so results are bitwise equal.
#pragma once

#include <cstdint>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "hash.h"

namespace commlib {

constexpr uint64_t kSketchPrime = (uint64_t{1} << 31) - 1;

// x mod P for x < 2^62.
COMMLIB_HOST_DEVICE uint64_t mod_mersenne31(uint64_t x) {
  x = (x & kSketchPrime) + (x >> 31);
  x = (x & kSketchPrime) + (x >> 31);
  return x >= kSketchPrime ? x - kSketchPrime : x;
}

// Coefficients are < P < 2^31 and indices < P, so every product is a
// 32 x 32 -> 64-bit multiply (one vpmuludq lane when vectorized).
COMMLIB_HOST_DEVICE uint64_t mul32x32(uint64_t a, uint64_t b) {
  return static_cast<uint64_t>(static_cast<uint32_t>(a)) * static_cast<uint64_t>(static_cast<uint32_t>(b));
}

struct CountSketchRow {
  uint64_t a, b, c0, c1, c2, c3;

  COMMLIB_HOST_DEVICE static CountSketchRow make(uint64_t seed, int64_t row) {
    const uint64_t base = 8 * static_cast<uint64_t>(row);
    CountSketchRow h;
    h.a = 1 + hash32(seed, base + 1) % (kSketchPrime - 1);
    h.b = hash32(seed, base + 2) % kSketchPrime;
    h.c0 = hash32(seed, base + 3) % kSketchPrime;
    h.c1 = hash32(seed, base + 4) % kSketchPrime;
    h.c2 = hash32(seed, base + 5) % kSketchPrime;
    h.c3 = hash32(seed, base + 6) % kSketchPrime;
    return h;
  }

  COMMLIB_HOST_DEVICE int64_t bucket(uint64_t i, uint64_t cols) const {
    return static_cast<int64_t>(mul32x32(mod_mersenne31(mul32x32(a, i) + b), cols) >> 31);
  }

  // ((c3 i + c2) i + c1) i + c0 mod P: the cubic whose parity is the sign.
  // Takes any i < 2^32 (the CPU kernels evaluate it a little past P to seed
  // finite differences).
  COMMLIB_HOST_DEVICE uint64_t sign_poly(uint64_t i) const {
    uint64_t g = mod_mersenne31(mul32x32(c3, i) + c2);
    g = mod_mersenne31(mul32x32(g, i) + c1);
    return mod_mersenne31(mul32x32(g, i) + c0);
  }

  COMMLIB_HOST_DEVICE float sign(uint64_t i) const { return (sign_poly(i) & 1) ? -1.0f : 1.0f; }
};

inline void check_sketch_table(const char* op, const at::Tensor& table) {
  TORCH_CHECK_VALUE(table.scalar_type() == at::kFloat, op, ": table must be float32, got ", table.scalar_type());
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(0) >= 1 && table.size(1) >= 1, op,
                    ": table must be a 2-D (rows, cols) tensor with rows, cols >= 1, got shape ", table.sizes());
  TORCH_CHECK_VALUE(table.is_contiguous(), op, ": table must be contiguous");
  TORCH_CHECK_VALUE(table.size(1) <= static_cast<int64_t>(kSketchPrime), op, ": at most 2^31 - 1 columns");
  TORCH_CHECK_VALUE(table.size(0) <= 64, op, ": at most 64 rows, got ", table.size(0));
}

inline void check_sketch_range(const char* op, int64_t offset, int64_t length) {
  TORCH_CHECK_VALUE(offset >= 0 && length >= 0, op, ": offset and length must be non-negative, got ", offset, ", ",
                    length);
  TORCH_CHECK_VALUE(offset <= static_cast<int64_t>(kSketchPrime) && length <= static_cast<int64_t>(kSketchPrime) - offset,
                    op,
                    ": global indices must stay below 2^31 - 1, got offset ", offset, " + length ", length);
}

inline void check_srht_args(const char* op, int64_t block, const at::Tensor& rows) {
  TORCH_CHECK_VALUE(block >= 1 && block <= (int64_t{1} << 24) && (block & (block - 1)) == 0, op,
                    ": block must be a power of two in [1, 2^24], got ", block);
  TORCH_CHECK_VALUE(rows.scalar_type() == at::kLong && rows.dim() == 1, op, ": rows must be a 1-D int64 tensor");
  TORCH_CHECK_VALUE(rows.numel() >= 1 && rows.numel() <= block, op, ": rows must hold 1 to block = ", block,
                    " row indices, got ", rows.numel());
}

// out: the result's destination, a contiguous 1-D float32 tensor on the input's device sharing no memory with it.
inline void check_out_vector(const char* op, const at::Tensor& out, const at::Tensor& input) {
  TORCH_CHECK_VALUE(out.scalar_type() == at::kFloat && out.dim() == 1 && out.is_contiguous(), op,
                    ": out must be a contiguous 1-D float32 tensor, got ", out.scalar_type(), " of shape ", out.sizes());
  TORCH_CHECK_VALUE(out.device() == input.device(), op, ": out must be on ", input.device(), ", got ", out.device());
  TORCH_CHECK_VALUE(at::get_overlap_status(out, input) == at::MemOverlapStatus::No, op,
                    ": out must not share memory with the input");
}

void count_sketch_add_cpu(const at::Tensor& table, const at::Tensor& x, int64_t seed, int64_t offset);
at::Tensor count_unsketch_cpu(const at::Tensor& table, int64_t seed, int64_t offset, int64_t length);
void count_unsketch_out_cpu(const at::Tensor& table, int64_t seed, int64_t offset, const at::Tensor& out);
at::Tensor srht_cpu(const at::Tensor& x, int64_t block, const at::Tensor& rows, int64_t seed);
at::Tensor srht_transpose_cpu(const at::Tensor& y, int64_t block, const at::Tensor& rows, int64_t length,
                              int64_t seed);
void srht_transpose_out_cpu(const at::Tensor& y, int64_t block, const at::Tensor& rows, int64_t seed,
                            const at::Tensor& out);

#ifdef WITH_CUDA
void count_sketch_add_cuda(const at::Tensor& table, const at::Tensor& x, int64_t seed, int64_t offset);
at::Tensor count_unsketch_cuda(const at::Tensor& table, int64_t seed, int64_t offset, int64_t length);
void count_unsketch_out_cuda(const at::Tensor& table, int64_t seed, int64_t offset, const at::Tensor& out);
at::Tensor srht_cuda(const at::Tensor& x, int64_t block, const at::Tensor& rows, int64_t seed);
at::Tensor srht_transpose_cuda(const at::Tensor& y, int64_t block, const at::Tensor& rows, int64_t length,
                               int64_t seed);
void srht_transpose_out_cuda(const at::Tensor& y, int64_t block, const at::Tensor& rows, int64_t seed,
                             const at::Tensor& out);
#endif

}  // namespace commlib
