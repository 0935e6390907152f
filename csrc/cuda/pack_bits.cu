// CUDA kernels of commlib::pack_bits and commlib::unpack_bits, one thread per
// output byte. Same layout and checks as the CPU kernels (see ../pack_bits.h).
//
//   pack: thread j builds packed byte j from codes j*(8/bits) .. (+8/bits - 1)
//         (fewer for the tail byte, whose high bits stay zero) and flags any
//         code >= 2**bits in a device int, which the host reads afterwards
//         (a synchronisation: raising needs the answer on the host).
//   unpack: thread i extracts code i from byte (i*bits)/8 at bit (i*bits)%8.
//   bits == 8 is a device-to-device copy.
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../pack_bits.h"
#include "launch.cuh"

namespace commlib {
namespace {

template <int B>
__global__ void pack_bits_kernel(const uint8_t* __restrict__ codes, uint8_t* __restrict__ packed, int64_t n,
                                 int64_t num_bytes, int* __restrict__ overflow) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= num_bytes) {
    return;
  }
  constexpr int kPerByte = 8 / B;
  const int64_t first = j * kPerByte;
  unsigned byte = 0;
  unsigned seen = 0;
#pragma unroll
  for (int k = 0; k < kPerByte; ++k) {
    if (first + k < n) {
      const unsigned code = codes[first + k];
      seen |= code;
      byte |= code << (k * B);
    }
  }
  packed[j] = static_cast<uint8_t>(byte);
  if (seen >> B) {
    atomicOr(overflow, 1);
  }
}

template <int B>
__global__ void unpack_bits_kernel(const uint8_t* __restrict__ packed, uint8_t* __restrict__ codes, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) {
    return;
  }
  const int64_t bit = i * B;
  codes[i] = static_cast<uint8_t>((packed[bit >> 3] >> (bit & 7)) & ((1u << B) - 1));
}

}  // namespace

at::Tensor pack_bits_cuda(const at::Tensor& codes, int64_t bits) {
  check_pack_args(codes, bits);
  const c10::cuda::CUDAGuard device_guard(codes.device());
  const int64_t n = codes.numel();
  const int64_t num_bytes = packed_length(n, bits);
  at::Tensor packed = at::empty({num_bytes}, codes.options());
  if (n == 0) {
    return packed;
  }
  if (bits == 8) {
    packed.copy_(codes);
    return packed;
  }
  at::Tensor overflow = at::zeros({1}, codes.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned int blocks = blocks_for(num_bytes, "pack_bits");
  const uint8_t* src = codes.data_ptr<uint8_t>();
  uint8_t* dst = packed.data_ptr<uint8_t>();
  int* flag = overflow.data_ptr<int>();
  switch (bits) {
    case 1: pack_bits_kernel<1><<<blocks, kThreadsPerBlock, 0, stream>>>(src, dst, n, num_bytes, flag); break;
    case 2: pack_bits_kernel<2><<<blocks, kThreadsPerBlock, 0, stream>>>(src, dst, n, num_bytes, flag); break;
    case 4: pack_bits_kernel<4><<<blocks, kThreadsPerBlock, 0, stream>>>(src, dst, n, num_bytes, flag); break;
    default: TORCH_CHECK(false, "pack_bits: unreachable bits ", bits);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK_VALUE(overflow.item<int>() == 0, "pack_bits: a code does not fit in ", bits,
                    " bits (codes must be < ", (1 << bits), ")");
  return packed;
}

at::Tensor unpack_bits_cuda(const at::Tensor& packed, int64_t bits, int64_t n) {
  check_unpack_args(packed, bits, n);
  const c10::cuda::CUDAGuard device_guard(packed.device());
  at::Tensor codes = at::empty({n}, packed.options());
  if (n == 0) {
    return codes;
  }
  if (bits == 8) {
    codes.copy_(packed);
    return codes;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned int blocks = blocks_for(n, "unpack_bits");
  const uint8_t* src = packed.data_ptr<uint8_t>();
  uint8_t* dst = codes.data_ptr<uint8_t>();
  switch (bits) {
    case 1: unpack_bits_kernel<1><<<blocks, kThreadsPerBlock, 0, stream>>>(src, dst, n); break;
    case 2: unpack_bits_kernel<2><<<blocks, kThreadsPerBlock, 0, stream>>>(src, dst, n); break;
    case 4: unpack_bits_kernel<4><<<blocks, kThreadsPerBlock, 0, stream>>>(src, dst, n); break;
    default: TORCH_CHECK(false, "unpack_bits: unreachable bits ", bits);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return codes;
}

TORCH_LIBRARY_IMPL(commlib, CUDA, m) {
  m.impl("pack_bits", &pack_bits_cuda);
  m.impl("unpack_bits", &unpack_bits_cuda);
}

}  // namespace commlib
