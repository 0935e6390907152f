// CUDA kernels of the sketching ops (math in ../sketch.h).
//   count_sketch_add_: one thread per (element, row), atomicAdd into the
//     table. Float atomics make the order of additions, and so the last bits
//     of the table, vary from run to run on the GPU (the CPU kernel is
//     deterministic).
//   count_unsketch: one thread per element; the r signed counters are
//     insertion-sorted in registers and the lower median taken.
//   srht / srht_transpose: the blocks live in one scratch buffer; one launch
//     per butterfly stage h = 1, 2, 4, ... over all blocks (the same
//     butterflies in the same order as the CPU, so the same bits), then a
//     gather of the kept rows (or, for the transpose, a scatter first and the
//     signs last).
#include <cmath>
#include <cstdint>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../sketch.h"
#include "launch.cuh"

namespace commlib {
namespace {

__global__ void count_sketch_kernel(float* __restrict__ table, int64_t cols, const float* __restrict__ x,
                                    int64_t n, uint64_t seed, int64_t offset) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) {
    return;
  }
  const int64_t row = blockIdx.y;
  const CountSketchRow h = CountSketchRow::make(seed, row);
  const uint64_t i = static_cast<uint64_t>(offset + t);
  atomicAdd(&table[row * cols + h.bucket(i, static_cast<uint64_t>(cols))], h.sign(i) * x[t]);
}

__global__ void count_unsketch_kernel(const float* __restrict__ table, int64_t rows, int64_t cols, uint64_t seed,
                                      int64_t offset, int64_t length, float* __restrict__ out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= length) {
    return;
  }
  const uint64_t i = static_cast<uint64_t>(offset + t);
  float sorted[64];
  for (int64_t j = 0; j < rows; ++j) {
    const CountSketchRow h = CountSketchRow::make(seed, j);
    const float v = h.sign(i) * table[j * cols + h.bucket(i, static_cast<uint64_t>(cols))];
    int64_t at = j;
    while (at > 0 && sorted[at - 1] > v) {
      sorted[at] = sorted[at - 1];
      --at;
    }
    sorted[at] = v;
  }
  out[t] = sorted[(rows - 1) / 2];
}

__device__ __forceinline__ float random_sign(uint64_t seed, int64_t i) {
  return (hash32(seed, static_cast<uint64_t>(i)) & 1u) ? -1.0f : 1.0f;
}

__global__ void signed_blocks_kernel(const float* __restrict__ x, int64_t d, int64_t padded, uint64_t seed,
                                     float* __restrict__ v) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < padded) {
    v[i] = i < d ? random_sign(seed, i) * x[i] : 0.0f;
  }
}

// Stage h of the butterfly over all blocks: pair p (of padded / 2) maps to
// element lo = block start + run * 2h + t and its partner lo + h.
__global__ void butterfly_kernel(float* __restrict__ v, int64_t pairs, int64_t block, int64_t h) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= pairs) {
    return;
  }
  const int64_t half = block / 2;
  const int64_t in_block = p % half;
  const int64_t lo = (p / half) * block + (in_block / h) * 2 * h + in_block % h;
  const float u = v[lo];
  const float w = v[lo + h];
  v[lo] = __fadd_rn(u, w);
  v[lo + h] = __fsub_rn(u, w);
}

__global__ void gather_rows_kernel(const float* __restrict__ v, int64_t blocks, int64_t block,
                                   const int64_t* __restrict__ rows, int64_t m, float scale, float* __restrict__ out) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q < blocks * m) {
    out[q] = v[(q / m) * block + rows[q % m]] * scale;
  }
}

__global__ void scatter_rows_kernel(const float* __restrict__ y, int64_t blocks, int64_t block,
                                    const int64_t* __restrict__ rows, int64_t m, float* __restrict__ v) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q < blocks * m) {
    v[(q / m) * block + rows[q % m]] = y[q];
  }
}

__global__ void unsign_kernel(const float* __restrict__ v, int64_t length, uint64_t seed, float scale,
                              float* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < length) {
    out[i] = random_sign(seed, i) * (v[i] * scale);
  }
}

void check_rows_on_device(const char* op, const at::Tensor& rows, int64_t block) {
  check_srht_args(op, block, rows);
  TORCH_CHECK_VALUE(rows.min().item<int64_t>() >= 0 && rows.max().item<int64_t>() < block, op,
                    ": a row index is outside [0, ", block, ")");
  TORCH_CHECK_VALUE(std::get<0>(at::_unique(rows)).numel() == rows.numel(), op, ": row indices must be distinct");
}

void butterflies(float* v, int64_t padded, int64_t block, cudaStream_t stream) {
  const int64_t pairs = padded / 2;
  for (int64_t h = 1; h < block; h *= 2) {
    butterfly_kernel<<<blocks_for(pairs, "srht"), kThreadsPerBlock, 0, stream>>>(v, pairs, block, h);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

float hadamard_scale(int64_t block) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(block))); }

}  // namespace

void count_sketch_add_cuda(const at::Tensor& table, const at::Tensor& x, int64_t seed, int64_t offset) {
  const char* op = "count_sketch_add_";
  check_sketch_table(op, table);
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && x.dim() == 1 && x.is_contiguous(), op,
                    ": x must be a contiguous 1-D float32 tensor");
  check_sketch_range(op, offset, x.numel());
  const c10::cuda::CUDAGuard device_guard(table.device());
  if (x.numel() == 0) {
    return;
  }
  const dim3 grid(blocks_for(x.numel(), op), static_cast<unsigned int>(table.size(0)));
  count_sketch_kernel<<<grid, kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
      table.data_ptr<float>(), table.size(1), x.data_ptr<float>(), x.numel(), static_cast<uint64_t>(seed), offset);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

namespace {

// count_unsketch into out (its length), for both ops; op names the caller in errors.
void count_unsketch_into(const char* op, const at::Tensor& table, int64_t seed, int64_t offset,
                         const at::Tensor& out) {
  check_sketch_table(op, table);
  check_out_vector(op, out, table);
  const int64_t length = out.numel();
  check_sketch_range(op, offset, length);
  const c10::cuda::CUDAGuard device_guard(table.device());
  TORCH_CHECK_VALUE(at::isfinite(table).all().item<bool>(), op, ": the table holds NaN or Inf");
  if (length == 0) {
    return;
  }
  count_unsketch_kernel<<<blocks_for(length, op), kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
      table.data_ptr<float>(), table.size(0), table.size(1), static_cast<uint64_t>(seed), offset, length,
      out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor count_unsketch_cuda(const at::Tensor& table, int64_t seed, int64_t offset, int64_t length) {
  check_sketch_range("count_unsketch", offset, length);
  at::Tensor out = at::empty({length}, table.options());
  count_unsketch_into("count_unsketch", table, seed, offset, out);
  return out;
}

void count_unsketch_out_cuda(const at::Tensor& table, int64_t seed, int64_t offset, const at::Tensor& out) {
  count_unsketch_into("count_unsketch_out", table, seed, offset, out);
}

at::Tensor srht_cuda(const at::Tensor& x, int64_t block, const at::Tensor& rows, int64_t seed) {
  const char* op = "srht";
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && x.dim() == 1 && x.is_contiguous(), op,
                    ": x must be a contiguous 1-D float32 tensor");
  check_rows_on_device(op, rows, block);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t d = x.numel();
  const int64_t blocks = (d + block - 1) / block;
  const int64_t m = rows.numel();
  at::Tensor out = at::empty({blocks, m}, x.options());
  if (blocks == 0) {
    return out;
  }
  const int64_t padded = blocks * block;
  at::Tensor v = at::empty({padded}, x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  signed_blocks_kernel<<<blocks_for(padded, op), kThreadsPerBlock, 0, stream>>>(
      x.data_ptr<float>(), d, padded, static_cast<uint64_t>(seed), v.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  butterflies(v.data_ptr<float>(), padded, block, stream);
  const at::Tensor picked = rows.contiguous();
  gather_rows_kernel<<<blocks_for(blocks * m, op), kThreadsPerBlock, 0, stream>>>(
      v.data_ptr<float>(), blocks, block, picked.data_ptr<int64_t>(), m, hadamard_scale(block), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

namespace {

// srht_transpose into out (its length), for both ops; op names the caller in errors.
void srht_transpose_into(const char* op, const at::Tensor& y, int64_t block, const at::Tensor& rows, int64_t seed,
                         const at::Tensor& out) {
  check_rows_on_device(op, rows, block);
  TORCH_CHECK_VALUE(y.scalar_type() == at::kFloat && y.dim() == 2 && y.is_contiguous(), op,
                    ": y must be a contiguous 2-D float32 tensor");
  check_out_vector(op, out, y);
  const int64_t length = out.numel();
  const int64_t blocks = (length + block - 1) / block;
  const int64_t m = rows.numel();
  TORCH_CHECK_VALUE(y.size(0) == blocks && y.size(1) == m, op, ": y must have shape (", blocks, ", ", m,
                    ") for length ", length, ", block ", block, " and ", m, " rows, got ", y.sizes());
  const c10::cuda::CUDAGuard device_guard(y.device());
  if (blocks == 0) {
    return;
  }
  const int64_t padded = blocks * block;
  at::Tensor v = at::zeros({padded}, y.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor picked = rows.contiguous();
  scatter_rows_kernel<<<blocks_for(blocks * m, op), kThreadsPerBlock, 0, stream>>>(
      y.data_ptr<float>(), blocks, block, picked.data_ptr<int64_t>(), m, v.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  butterflies(v.data_ptr<float>(), padded, block, stream);
  unsign_kernel<<<blocks_for(length, op), kThreadsPerBlock, 0, stream>>>(
      v.data_ptr<float>(), length, static_cast<uint64_t>(seed), hadamard_scale(block), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor srht_transpose_cuda(const at::Tensor& y, int64_t block, const at::Tensor& rows, int64_t length,
                               int64_t seed) {
  TORCH_CHECK_VALUE(length >= 0, "srht_transpose: length must be non-negative, got ", length);
  at::Tensor out = at::empty({length}, y.options());
  srht_transpose_into("srht_transpose", y, block, rows, seed, out);
  return out;
}

void srht_transpose_out_cuda(const at::Tensor& y, int64_t block, const at::Tensor& rows, int64_t seed,
                             const at::Tensor& out) {
  srht_transpose_into("srht_transpose_out", y, block, rows, seed, out);
}

TORCH_LIBRARY_IMPL(commlib, CUDA, m) {
  m.impl("count_sketch_add_", &count_sketch_add_cuda);
  m.impl("count_unsketch", &count_unsketch_cuda);
  m.impl("count_unsketch_out", &count_unsketch_out_cuda);
  m.impl("srht", &srht_cuda);
  m.impl("srht_transpose", &srht_transpose_cuda);
  m.impl("srht_transpose_out", &srht_transpose_out_cuda);
}

}  // namespace commlib
