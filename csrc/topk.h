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

// Fused error-feedback step ef_topk_(e, g, k, seed) (EF14, Seide et al.
// 2014; Stich et al. 2018): u = e + g is written into e, the top-k of u by
// the contract above is returned, and e is zeroed at the selected indices,
// leaving e = u - C(u). Same set, values and residual as the unfused
// e.add_(g); topk_threshold(e, k, seed); e[indices] = 0. A NaN in u raises
// after e already holds u (as in the unfused sequence).
inline void check_ef_topk_args(const at::Tensor& e, const at::Tensor& g, int64_t k) {
  const char* op = "ef_topk_";
  check_topk_args(op, e, k);
  TORCH_CHECK_VALUE(g.scalar_type() == at::kFloat && g.dim() == 1 && g.is_contiguous(), op,
                    ": g must be a contiguous 1-D float32 tensor");
  TORCH_CHECK_VALUE(g.numel() == e.numel(), op, ": g has ", g.numel(), " elements, e has ", e.numel());
  TORCH_CHECK_VALUE(g.device() == e.device(), op, ": e and g must be on one device");
  const float* eb = e.data_ptr<float>();
  const float* gb = g.data_ptr<float>();
  const int64_t n = e.numel();
  TORCH_CHECK_VALUE(n == 0 || eb == gb || eb + n <= gb || gb + n <= eb, op, ": e and g overlap partially");
}

std::tuple<at::Tensor, at::Tensor> topk_magnitude_cpu(const at::Tensor& x, int64_t k);
std::tuple<at::Tensor, at::Tensor> topk_threshold_cpu(const at::Tensor& x, int64_t k, int64_t seed);
std::tuple<at::Tensor, at::Tensor> ef_topk_cpu(const at::Tensor& e, const at::Tensor& g, int64_t k, int64_t seed);

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> topk_magnitude_cuda(const at::Tensor& x, int64_t k);
std::tuple<at::Tensor, at::Tensor> topk_threshold_cuda(const at::Tensor& x, int64_t k, int64_t seed);
std::tuple<at::Tensor, at::Tensor> ef_topk_cuda(const at::Tensor& e, const at::Tensor& g, int64_t k, int64_t seed);
#endif

}  // namespace commlib
