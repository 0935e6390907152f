// Shared declarations of the fused QSGD ops (Alistarh et al., NeurIPS 2017).
//
// Encoding of a float32 vector x (fewer than 2**32 elements), bucket by
// bucket (bucket_size consecutive elements, the last one shorter), s = levels:
//   norm  = sqrt(sum x_i^2) in double (l2)  or  max |x_i| (max norm)
//   scale = float(norm)                    (0 for an all-zero bucket: codes s)
//   pre   = 2^64 if s / norm >= 2^100 else 1   (a tiny norm: s / norm would
//           overflow float32; scaling by a power of two is exact)
//   ratio = float(s / (norm * pre))        (in double, rounded once)
//   y_i   = min((|x_i| * pre) * ratio, s)  in float32
//   level = floor(y_i) + [uniform24(hash32_stream(stream_key32(seed), i)) < y_i - floor(y_i)]
//   code  = s - level if x_i < 0 else s + level, in [0, 2s], packed with `bits`
//           bits per code (layout of pack_bits).
// Decoding adds float(scale / s) * float(code - s) to out[i].
// The reference (commlib/ops/reference.py) does the same elementwise
// operations, so given the same norms the codes are bitwise equal; an l2
// norm may differ in its last bit, because the order of the sum differs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "hash.h"
#include "pack_bits.h"

namespace commlib {

inline int64_t num_buckets(int64_t n, int64_t bucket_size) { return n == 0 ? 0 : (n - 1) / bucket_size + 1; }

// A bucket longer than the vector is one bucket of all n elements: the same
// result, and no arithmetic with the huge size.
inline int64_t effective_bucket(int64_t n, int64_t bucket_size) { return std::min(bucket_size, std::max<int64_t>(n, 1)); }

// A bucket's pre-scale and ratio (see the top of this file), from its norm > 0.
struct QsgdScaling {
  float pre;
  float ratio;
};

COMMLIB_HOST_DEVICE QsgdScaling qsgd_scaling(double norm, double levels) {
  constexpr double kTinyNormRatio = 1267650600228229401496703205376.0;  // 2^100
  constexpr double kPre = 18446744073709551616.0;                     // 2^64
  const double pre = levels / norm >= kTinyNormRatio ? kPre : 1.0;
  return {static_cast<float>(pre), static_cast<float>(levels / (norm * pre))};
}

// y = min((|x| * pre) * ratio, s) in float32: the magnitude in levels.
COMMLIB_HOST_DEVICE float qsgd_levels(float magnitude, QsgdScaling scaling, float s) {
  const float y = (magnitude * scaling.pre) * scaling.ratio;
  return y < s ? y : s;
}

constexpr int64_t kMaxQsgdNumel = (int64_t{1} << 32) - 1;

inline void check_qsgd_config(const char* op, int64_t bucket_size, int64_t levels, int64_t bits) {
  TORCH_CHECK_VALUE(bucket_size >= 1, op, ": bucket_size must be positive, got ", bucket_size);
  TORCH_CHECK_VALUE(bits == 2 || bits == 4 || bits == 8, op, ": bits must be one of (2, 4, 8), got ", bits);
  TORCH_CHECK_VALUE(levels >= 1 && levels <= ((int64_t{1} << bits) - 1) / 2, op, ": levels must be in [1, ",
                    ((int64_t{1} << bits) - 1) / 2, "] for ", bits, "-bit codes, got ", levels);
}

inline void check_float_vector(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1, op, ": ", name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// The size checks of a payload of n codes (scales, packed) under op's name.
inline void check_qsgd_payload_sizes(const char* op, int64_t n, const at::Tensor& scales, const at::Tensor& packed,
                                     int64_t bucket_size, int64_t levels, int64_t bits) {
  check_qsgd_config(op, bucket_size, levels, bits);
  check_float_vector(op, "scales", scales);
  check_byte_vector(op, "packed", packed);
  TORCH_CHECK_VALUE(n >= 0, op, ": n must be a non-negative integer, got ", n);
  TORCH_CHECK_VALUE(scales.numel() == num_buckets(n, bucket_size), op, ": ", n, " elements in buckets of ",
                    bucket_size, " need ", num_buckets(n, bucket_size), " scales, got ", scales.numel());
  TORCH_CHECK_VALUE(packed.numel() == packed_length(n, bits), op, ": ", n, " codes of ", bits, " bits need ",
                    packed_length(n, bits), " bytes, got ", packed.numel());
  TORCH_CHECK_VALUE(packed.device() == scales.device(), op, ": scales and packed must be on one device");
}

inline void check_qsgd_decode_args(const at::Tensor& out, const at::Tensor& scales, const at::Tensor& packed,
                                   int64_t bucket_size, int64_t levels, int64_t bits) {
  const char* op = "qsgd_decode_add";
  check_float_vector(op, "out", out);
  check_qsgd_payload_sizes(op, out.numel(), scales, packed, bucket_size, levels, bits);
  TORCH_CHECK_VALUE(scales.device() == out.device(), op, ": out, scales and packed must be on one device");
}

std::tuple<at::Tensor, at::Tensor> qsgd_encode_cpu(const at::Tensor& x, int64_t bucket_size, int64_t levels,
                                                   int64_t bits, bool max_norm, int64_t seed);
void qsgd_decode_add_cpu(const at::Tensor& out, const at::Tensor& scales, const at::Tensor& packed,
                         int64_t bucket_size, int64_t levels, int64_t bits, bool subtract);
void qsgd_check_cpu(const at::Tensor& scales, const at::Tensor& packed, int64_t n, int64_t bucket_size,
                    int64_t levels, int64_t bits);

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> qsgd_encode_cuda(const at::Tensor& x, int64_t bucket_size, int64_t levels,
                                                    int64_t bits, bool max_norm, int64_t seed);
void qsgd_decode_add_cuda(const at::Tensor& out, const at::Tensor& scales, const at::Tensor& packed,
                          int64_t bucket_size, int64_t levels, int64_t bits, bool subtract);
void qsgd_check_cuda(const at::Tensor& scales, const at::Tensor& packed, int64_t n, int64_t bucket_size,
                     int64_t levels, int64_t bits);
#endif

}  // namespace commlib
