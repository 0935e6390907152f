// Shared declarations of the top-k-by-magnitude ops.
//
// Contract (same as commlib/ops/reference.py::topk_magnitude): the k entries
// of a 1-D float32 tensor with the largest |x|, ties at the k-th magnitude to
// the lower index, returned as (float32 values, int32 indices) sorted by
// index. -0.0 and +0.0 tie; +-inf are the largest magnitudes; a NaN anywhere
// raises ValueError (its "magnitude" has no order).
//
// The magnitude of a float orders like its bit pattern with the sign bit
// cleared, read as an unsigned integer (the "key"); both kernels select on
// keys by radix.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace commlib {

// Keys above this are NaN.
constexpr uint32_t kInfKey = 0x7F800000u;

inline uint32_t magnitude_key(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits & 0x7FFFFFFFu;
}

inline void check_topk_args(const char* op, const at::Tensor& x, int64_t k) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat, op, ": x must be float32, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 1, op, ": x must be 1-D, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.is_contiguous(), op, ": x must be contiguous");
  TORCH_CHECK_VALUE(x.numel() <= std::numeric_limits<int32_t>::max(), op,
                    ": indices are int32, so x may have at most 2**31 - 1 elements, got ", x.numel());
  TORCH_CHECK_VALUE(k >= 0 && k <= x.numel(), op, ": k must be in [0, ", x.numel(), "], got ", k);
}

std::tuple<at::Tensor, at::Tensor> topk_magnitude_cpu(const at::Tensor& x, int64_t k);
std::tuple<at::Tensor, at::Tensor> topk_threshold_cpu(const at::Tensor& x, int64_t k, int64_t seed);

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> topk_magnitude_cuda(const at::Tensor& x, int64_t k);
std::tuple<at::Tensor, at::Tensor> topk_threshold_cuda(const at::Tensor& x, int64_t k, int64_t seed);
#endif

}  // namespace commlib
