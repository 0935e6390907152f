// CUDA kernels of commlib::qsgd_encode, commlib::qsgd_decode_add and commlib::qsgd_check (math in
// ../qsgd.h, the same formulas as the CPU kernels).
//   encode: (1) one block per bucket reduces the bucket's max |x| or sum of
//           squares (in double) and stores the float scale and the bucket's
//           (pre-scale, ratio) of qsgd_scaling, flagging non-finite input;
//           (2) one thread per element computes its code from the stream
//           hash; (3) pack_bits_cuda packs the codes.
//   decode: the scales and codes are validated first (ATen reductions, read
//           on the host), so a malformed payload raises before out is touched;
//           then one thread per element adds scale / s * (code - s), with
//           explicitly rounded operations (__fmul_rn, __fadd_rn) so nvcc does
//           not contract them into a fused multiply-add.
//   check: the decoder's validation alone.
// The l2 sum runs in a different order from the CPU's, so a scale may differ
// in its last bit; given equal scales the codes are equal.
#include <cstdint>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../hash.h"
#include "../qsgd.h"
#include "launch.cuh"

namespace commlib {
namespace {

__device__ __forceinline__ bool finite_bits(float v) { return (__float_as_uint(v) & 0x7F800000u) != 0x7F800000u; }

__global__ void bucket_norm_kernel(const float* __restrict__ x, int64_t n, int64_t bucket_size, bool max_norm,
                                   double levels, float2* __restrict__ scaling, float* __restrict__ scale,
                                   int* __restrict__ bad) {
  __shared__ double partial[kThreadsPerBlock];
  const int64_t b = blockIdx.x;
  const int64_t begin = b * bucket_size;
  const int64_t end = min(n, begin + bucket_size);
  double acc = 0.0;
  bool finite = true;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    finite = finite && finite_bits(x[i]);
    const double v = fabs(static_cast<double>(x[i]));
    acc = max_norm ? fmax(acc, v) : acc + v * v;
  }
  if (!finite) {
    atomicOr(bad, 1);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const double other = partial[threadIdx.x + stride];
      partial[threadIdx.x] = max_norm ? fmax(partial[threadIdx.x], other) : partial[threadIdx.x] + other;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const double norm = max_norm ? partial[0] : sqrt(partial[0]);
    const float s = static_cast<float>(norm);
    if (!finite_bits(s)) {
      atomicOr(bad, 1);
    }
    scale[b] = s;
    const QsgdScaling sc = norm > 0.0 ? qsgd_scaling(norm, levels) : QsgdScaling{1.0f, 0.0f};  // zero: codes s
    scaling[b] = make_float2(sc.pre, sc.ratio);
  }
}

__global__ void quantize_kernel(const float* __restrict__ x, int64_t n, int64_t bucket_size,
                                const float2* __restrict__ scaling, int levels, uint32_t key32,
                                uint8_t* __restrict__ codes) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) {
    return;
  }
  const float2 sc = scaling[i / bucket_size];
  const float y = qsgd_levels(fabsf(x[i]), QsgdScaling{sc.x, sc.y}, static_cast<float>(levels));
  const float floor_y = floorf(y);
  const float coin = uniform24(hash32_stream(key32, static_cast<uint32_t>(i)));
  const int level = static_cast<int>(floor_y) + (coin < y - floor_y ? 1 : 0);
  codes[i] = static_cast<uint8_t>(x[i] < 0.0f ? levels - level : levels + level);
}

__global__ void dequantize_add_kernel(float* __restrict__ out, int64_t n, int64_t bucket_size,
                                      const float* __restrict__ scales, const uint8_t* __restrict__ codes,
                                      int levels, bool subtract) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) {
    return;
  }
  const float step = scales[i / bucket_size] / static_cast<float>(levels);
  const float value = __fmul_rn(step, static_cast<float>(static_cast<int>(codes[i]) - levels));
  out[i] = subtract ? __fsub_rn(out[i], value) : __fadd_rn(out[i], value);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> qsgd_encode_cuda(const at::Tensor& x, int64_t bucket_size, int64_t levels,
                                                    int64_t bits, bool max_norm, int64_t seed) {
  check_qsgd_config("qsgd_encode", bucket_size, levels, bits);
  check_float_vector("qsgd_encode", "x", x);
  const int64_t n = x.numel();
  TORCH_CHECK_VALUE(n <= kMaxQsgdNumel, "qsgd_encode: at most 2**32 - 1 elements, got ", n);
  bucket_size = effective_bucket(n, bucket_size);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t buckets = num_buckets(n, bucket_size);
  at::Tensor scales = at::empty({buckets}, x.options());
  if (n == 0) {
    return {scales, at::empty({0}, x.options().dtype(at::kByte))};
  }
  TORCH_CHECK_VALUE(buckets <= 0x7fffffff, "qsgd_encode: too many buckets for one launch (", buckets, ")");
  at::Tensor scaling = at::empty({buckets, 2}, x.options());  // (pre-scale, ratio) per bucket
  at::Tensor bad = at::zeros({1}, x.options().dtype(at::kInt));
  at::Tensor codes = at::empty({n}, x.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  bucket_norm_kernel<<<static_cast<unsigned int>(buckets), kThreadsPerBlock, 0, stream>>>(
      x.data_ptr<float>(), n, bucket_size, max_norm, static_cast<double>(levels), reinterpret_cast<float2*>(scaling.data_ptr<float>()),
      scales.data_ptr<float>(), bad.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  quantize_kernel<<<blocks_for(n, "qsgd_encode"), kThreadsPerBlock, 0, stream>>>(
      x.data_ptr<float>(), n, bucket_size, reinterpret_cast<const float2*>(scaling.data_ptr<float>()),
      static_cast<int>(levels), stream_key32(static_cast<uint64_t>(seed)), codes.data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK_VALUE(bad.item<int>() == 0, "qsgd_encode: x holds NaN or Inf, or a bucket's norm overflows float32");
  return {scales, pack_bits_cuda(codes, bits)};
}

namespace {

// What qsgd_decode_add checks before touching out (sizes aside); returns the unpacked codes.
at::Tensor checked_codes(const char* op, const at::Tensor& scales, const at::Tensor& packed, int64_t n,
                         int64_t levels, int64_t bits) {
  TORCH_CHECK_VALUE(at::isfinite(scales).all().item<bool>() && scales.ge(0).all().item<bool>(), op,
                    ": every scale must be finite and non-negative");
  at::Tensor codes = unpack_bits_cuda(packed, bits, n);
  TORCH_CHECK_VALUE(n == 0 || codes.max().item<int64_t>() <= 2 * levels, op, ": a code exceeds 2 * levels = ",
                    2 * levels);
  return codes;
}

}  // namespace

void qsgd_check_cuda(const at::Tensor& scales, const at::Tensor& packed, int64_t n, int64_t bucket_size,
                     int64_t levels, int64_t bits) {
  check_qsgd_payload_sizes("qsgd_check", n, scales, packed, bucket_size, levels, bits);
  const c10::cuda::CUDAGuard device_guard(scales.device());
  checked_codes("qsgd_check", scales, packed, n, levels, bits);
}

void qsgd_decode_add_cuda(const at::Tensor& out, const at::Tensor& scales, const at::Tensor& packed,
                          int64_t bucket_size, int64_t levels, int64_t bits, bool subtract) {
  check_qsgd_decode_args(out, scales, packed, bucket_size, levels, bits);
  const c10::cuda::CUDAGuard device_guard(out.device());
  const int64_t n = out.numel();
  bucket_size = effective_bucket(n, bucket_size);
  const at::Tensor codes = checked_codes("qsgd_decode_add", scales, packed, n, levels, bits);
  if (n == 0) {
    return;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dequantize_add_kernel<<<blocks_for(n, "qsgd_decode_add"), kThreadsPerBlock, 0, stream>>>(
      out.data_ptr<float>(), n, bucket_size, scales.data_ptr<float>(), codes.data_ptr<uint8_t>(),
      static_cast<int>(levels), subtract);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

TORCH_LIBRARY_IMPL(commlib, CUDA, m) {
  m.impl("qsgd_encode", &qsgd_encode_cuda);
  m.impl("qsgd_decode_add", &qsgd_decode_add_cuda);
  m.impl("qsgd_check", &qsgd_check_cuda);
}

}  // namespace commlib
