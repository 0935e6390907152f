// CUDA kernel of commlib::ef_topk_ (contract in ../topk.h): e += g (one
// elementwise kernel), the exact radix select of topk_threshold_cuda on e,
// then e[i] = 0 at the k selected indices (one scatter kernel). The set and
// values are topk_threshold_cuda's, hence topk_magnitude's.
#include <cstdint>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../topk.h"
#include "launch.cuh"

namespace commlib {
namespace {

__global__ void add_into_kernel(float* __restrict__ e, const float* __restrict__ g, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    e[i] = __fadd_rn(e[i], g[i]);
  }
}

__global__ void zero_at_kernel(float* __restrict__ e, const int32_t* __restrict__ idx, int64_t k) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < k) {
    e[idx[t]] = 0.0f;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> ef_topk_cuda(const at::Tensor& e, const at::Tensor& g, int64_t k, int64_t seed) {
  const char* op = "ef_topk_";
  check_ef_topk_args(e, g, k);
  const c10::cuda::CUDAGuard guard(e.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = e.numel();
  if (n > 0) {
    add_into_kernel<<<blocks_for(n, op), kThreadsPerBlock, 0, stream>>>(e.data_ptr<float>(), g.data_ptr<float>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  std::tuple<at::Tensor, at::Tensor> picked = topk_threshold_cuda(e, k, seed);
  if (k > 0) {
    zero_at_kernel<<<blocks_for(k, op), kThreadsPerBlock, 0, stream>>>(e.data_ptr<float>(),
                                                                     std::get<1>(picked).data_ptr<int32_t>(), k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return picked;
}

TORCH_LIBRARY_IMPL(commlib, CUDA, m) { m.impl("ef_topk_", &ef_topk_cuda); }

}  // namespace commlib
