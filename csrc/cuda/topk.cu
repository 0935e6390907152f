// CUDA kernels of commlib::topk_magnitude and commlib::topk_threshold (same
// contract as the CPU kernels, ../topk.h). Radix select in three levels
// (12, 11 and 8 key bits):
//   1. keys = bits(x) & 0x7FFFFFFF (an ATen op), NaN check;
//   2. per level, a histogram of the next key bits among the keys that match
//      the prefix chosen so far (shared-memory histogram per block, merged
//      with global atomics); the host reads it (16 KiB) and picks the bin that
//      holds the k-th largest key, so after three levels it knows the k-th key
//      T and how many keys exceed it;
//   3. ordered compaction with ATen ops: take keys > T, and keys == T whose
//      running count (a cumsum in index order) is within the ties still
//      needed; nonzero() returns the indices sorted.
// topk_threshold runs the same exact select on CUDA: the sampled threshold
// pays on CPU caches; on the GPU the three histogram passes already stream.
#include <cstdint>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../topk.h"
#include "launch.cuh"

namespace commlib {
namespace {

constexpr int kMaxBins = 4096;

__global__ void prefix_histogram_kernel(const int32_t* __restrict__ keys, int64_t n, uint32_t prefix,
                                        uint32_t prefix_mask, int shift, int bins,
                                        unsigned long long* __restrict__ hist) {
  __shared__ unsigned int local[kMaxBins];
  for (int b = threadIdx.x; b < bins; b += blockDim.x) {
    local[b] = 0;
  }
  __syncthreads();
  const uint32_t mask = static_cast<uint32_t>(bins - 1);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t key = static_cast<uint32_t>(keys[i]);
    if ((key & prefix_mask) == prefix) {
      atomicAdd(&local[(key >> shift) & mask], 1u);
    }
  }
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += blockDim.x) {
    if (local[b] != 0) {
      atomicAdd(&hist[b], static_cast<unsigned long long>(local[b]));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> radix_topk(const at::Tensor& x, int64_t k, const char* op) {
  check_topk_args(op, x, k);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t d = x.numel();
  TORCH_CHECK_VALUE(!at::isnan(x).any().item<bool>(), op, ": x contains NaN; magnitudes of NaN have no order");
  if (k == 0) {
    return {at::empty({0}, x.options()), at::empty({0}, x.options().dtype(at::kInt))};
  }
  if (k == d) {
    return {x.clone(), at::arange(d, x.options().dtype(at::kInt))};
  }
  const at::Tensor keys = at::bitwise_and(x.view(at::kInt), 0x7FFFFFFF).contiguous();
  const int widths[3] = {12, 11, 8};
  const int shifts[3] = {19, 8, 0};
  uint32_t prefix = 0;
  uint32_t prefix_mask = 0;
  int64_t need = k;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned int grid = std::min<unsigned int>(blocks_for(d, op), 4096);
  for (int level = 0; level < 3; ++level) {
    const int bins = 1 << widths[level];
    at::Tensor hist = at::zeros({bins}, x.options().dtype(at::kLong));
    prefix_histogram_kernel<<<grid, kThreadsPerBlock, 0, stream>>>(
        keys.data_ptr<int32_t>(), d, prefix, prefix_mask, shifts[level], bins,
        reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor host = hist.cpu();
    const int64_t* h = host.data_ptr<int64_t>();
    int64_t above = 0;
    int bin = bins - 1;
    while (bin > 0 && above + h[bin] < need) {
      above += h[bin--];
    }
    need -= above;
    prefix |= static_cast<uint32_t>(bin) << shifts[level];
    prefix_mask |= static_cast<uint32_t>(bins - 1) << shifts[level];
  }
  const int64_t threshold = static_cast<int64_t>(prefix);
  const at::Tensor equal = keys.eq(threshold);
  const at::Tensor take = keys.gt(threshold).logical_or_(equal.logical_and(equal.cumsum(0).le(need)));
  const at::Tensor idx = at::nonzero(take).squeeze(1);
  TORCH_CHECK(idx.numel() == k, op, ": internal error, selected ", idx.numel(), " of k = ", k);
  return {x.index_select(0, idx), idx.to(at::kInt)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_magnitude_cuda(const at::Tensor& x, int64_t k) {
  return radix_topk(x, k, "topk_magnitude");
}

std::tuple<at::Tensor, at::Tensor> topk_threshold_cuda(const at::Tensor& x, int64_t k, int64_t /*seed*/) {
  return radix_topk(x, k, "topk_threshold");
}

TORCH_LIBRARY_IMPL(commlib, CUDA, m) {
  m.impl("topk_magnitude", &topk_magnitude_cuda);
  m.impl("topk_threshold", &topk_threshold_cuda);
}

}  // namespace commlib
