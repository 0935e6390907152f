// CPU kernels of commlib::qsgd_encode (quantize + pack in one pass) and
// commlib::qsgd_decode_add (unpack + dequantize + accumulate). The math is
// in ../qsgd.h.
//
// Work is split into blocks of whole buckets whose length is also a
// multiple of 8 codes, so every block starts on a byte of the packed output
// and blocks are independent (parallel, any thread count, same bytes).
//   encode, per block: for each bucket, one pass for top (and a finiteness
//     check), one for c, one that writes the codes to an L2-resident scratch
//     buffer; then the scratch is packed into the block's bytes.
//   decode: first every scale and every code is validated (a malformed
//     payload raises before out is touched), then per block the codes are
//     unpacked to scratch and accumulated into out.
#include "../qsgd.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../hash.h"
#include "swar.h"

namespace commlib {
namespace {

constexpr int64_t kTargetBlock = 1 << 15;  // codes per block, about

struct Blocks {
  int64_t length;  // codes per block: a multiple of the bucket size and of 8
  int64_t count;
};

Blocks make_blocks(int64_t n, int64_t bucket_size) {
  const int64_t unit = std::lcm(bucket_size, int64_t{8});
  const int64_t length = std::max<int64_t>(1, kTargetBlock / unit) * unit;
  return {length, (n + length - 1) / length};
}

// Packs codes[0, len) to out; len may end mid-byte only for the last block.
void pack_block(const uint8_t* codes, uint8_t* out, int64_t len, int64_t bits) {
  const int64_t groups = len / 8;
  switch (bits) {
    case 2: swar::pack_range<2>(codes, out, 0, groups); break;
    case 4: swar::pack_range<4>(codes, out, 0, groups); break;
    default: std::memcpy(out, codes, groups * 8); break;
  }
  swar::pack_tail(codes, out, 8 * groups, len, bits);
}

void unpack_block(const uint8_t* packed, uint8_t* codes, int64_t len, int64_t bits) {
  const int64_t groups = len / 8;
  switch (bits) {
    case 2: swar::unpack_range<2>(packed, codes, 0, groups); break;
    case 4: swar::unpack_range<4>(packed, codes, 0, groups); break;
    default: std::memcpy(codes, packed, groups * 8); break;
  }
  swar::unpack_tail(packed, codes, 8 * groups, len, bits);
}

inline bool is_finite_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return (b & 0x7F800000u) != 0x7F800000u;
}

// Quantizes one bucket x[0, len) (global offset `first`) into codes; returns
// its scale, or -1 if the bucket holds a NaN or an infinity or its norm
// overflows float32. Every loop is written to vectorize: the maximum over
// integer keys, the double sum in 8 fixed lanes (a fixed order, so the same
// bits for any thread count), the quantization branch-free.
float quantize_bucket(const float* __restrict__ x, int64_t len, uint32_t first, int64_t levels, bool max_norm,
                      uint64_t seed, uint8_t* __restrict__ codes) {
  uint32_t top_key = 0;
  for (int64_t j = 0; j < len; ++j) {
    uint32_t bits;
    std::memcpy(&bits, x + j, sizeof(bits));
    top_key = std::max(top_key, bits & 0x7FFFFFFFu);
  }
  if (top_key >= 0x7F800000u) {
    return -1.0f;
  }
  const uint8_t zero_code = static_cast<uint8_t>(levels);
  if (top_key == 0) {
    std::fill(codes, codes + len, zero_code);
    return 0.0f;
  }
  double norm;
  if (max_norm) {
    float top;
    std::memcpy(&top, &top_key, sizeof(top));
    norm = top;
  } else {
    double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t whole = len / 8 * 8;
    for (int64_t j = 0; j < whole; j += 8) {
      for (int k = 0; k < 8; ++k) {
        const double v = x[j + k];
        lanes[k] += v * v;
      }
    }
    for (int64_t j = whole; j < len; ++j) {
      const double v = x[j];
      lanes[j - whole] += v * v;
    }
    norm = std::sqrt(((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])));
  }
  const float scale = static_cast<float>(norm);
  if (!is_finite_bits(scale)) {
    return -1.0f;
  }
  const double s = static_cast<double>(levels);
  const double ratio = s / norm;
  const uint32_t key_lo = static_cast<uint32_t>(seed);
  const uint32_t key_hi = static_cast<uint32_t>(seed >> 32);
  const int32_t center = static_cast<int32_t>(levels);
  for (int64_t j = 0; j < len; ++j) {
    const double scaled = static_cast<double>(std::fabs(x[j])) * ratio;
    const float y = static_cast<float>(scaled < s ? scaled : s);
    const float floor_y = std::floor(y);
    const float coin = uniform24(hash32_small(key_lo, key_hi, first + static_cast<uint32_t>(j)));
    const int32_t level = static_cast<int32_t>(floor_y) + (coin < y - floor_y ? 1 : 0);
    codes[j] = static_cast<uint8_t>(x[j] < 0.0f ? center - level : center + level);
  }
  return scale;
}

[[noreturn]] void raise_non_finite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(is_finite_bits(x[i]), "qsgd_encode: x[", i, "] = ", x[i], " is not finite");
  }
  TORCH_CHECK_VALUE(false, "qsgd_encode: a bucket's norm overflows float32");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> qsgd_encode_cpu(const at::Tensor& x, int64_t bucket_size, int64_t levels,
                                                   int64_t bits, bool max_norm, int64_t seed) {
  check_qsgd_config("qsgd_encode", bucket_size, levels, bits);
  check_float_vector("qsgd_encode", "x", x);
  const int64_t n = x.numel();
  TORCH_CHECK_VALUE(n <= kMaxQsgdNumel, "qsgd_encode: at most 2**32 - 1 elements, got ", n);
  bucket_size = effective_bucket(n, bucket_size);
  at::Tensor scales = at::empty({num_buckets(n, bucket_size)}, x.options());
  at::Tensor packed = at::empty({packed_length(n, bits)}, x.options().dtype(at::kByte));
  const float* src = x.data_ptr<float>();
  float* scale_out = scales.data_ptr<float>();
  uint8_t* dst = packed.data_ptr<uint8_t>();
  const Blocks blocks = make_blocks(n, bucket_size);
  std::atomic<bool> bad{false};
  at::parallel_for(0, blocks.count, 1, [&](int64_t first_block, int64_t last_block) {
    std::vector<uint8_t> codes(std::min(blocks.length, n));
    for (int64_t blk = first_block; blk < last_block; ++blk) {
      const int64_t begin = blk * blocks.length;
      const int64_t len = std::min(blocks.length, n - begin);
      for (int64_t off = 0; off < len; off += bucket_size) {
        const int64_t size = std::min(bucket_size, len - off);
        const float scale = quantize_bucket(src + begin + off, size, static_cast<uint32_t>(begin + off), levels, max_norm,
                                            static_cast<uint64_t>(seed), codes.data() + off);
        if (scale < 0.0f) {
          bad.store(true, std::memory_order_relaxed);
        }
        scale_out[(begin + off) / bucket_size] = scale;
      }
      pack_block(codes.data(), dst + begin * bits / 8, len, bits);
    }
  });
  if (bad.load()) {
    raise_non_finite(src, n);
  }
  return {scales, packed};
}

void qsgd_decode_add_cpu(const at::Tensor& out, const at::Tensor& scales, const at::Tensor& packed,
                         int64_t bucket_size, int64_t levels, int64_t bits) {
  check_qsgd_decode_args(out, scales, packed, bucket_size, levels, bits);
  const int64_t n = out.numel();
  bucket_size = effective_bucket(n, bucket_size);
  const float* scale_in = scales.data_ptr<float>();
  for (int64_t b = 0; b < scales.numel(); ++b) {
    TORCH_CHECK_VALUE(is_finite_bits(scale_in[b]) && scale_in[b] >= 0.0f, "qsgd_decode_add: scale ", b, " = ",
                      scale_in[b], " is not finite and non-negative");
  }
  const uint8_t* src = packed.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  const Blocks blocks = make_blocks(n, bucket_size);
  const int max_code = static_cast<int>(2 * levels);

  // Pass 1: every code must be <= 2s.
  std::atomic<bool> bad{false};
  at::parallel_for(0, blocks.count, 1, [&](int64_t first_block, int64_t last_block) {
    std::vector<uint8_t> codes(std::min(blocks.length, n));
    for (int64_t blk = first_block; blk < last_block; ++blk) {
      const int64_t begin = blk * blocks.length;
      const int64_t len = std::min(blocks.length, n - begin);
      unpack_block(src + begin * bits / 8, codes.data(), len, bits);
      uint8_t largest = 0;
      for (int64_t j = 0; j < len; ++j) {
        largest = std::max(largest, codes[j]);
      }
      if (largest > max_code) {
        bad.store(true, std::memory_order_relaxed);
      }
    }
  });
  TORCH_CHECK_VALUE(!bad.load(), "qsgd_decode_add: a code exceeds 2 * levels = ", max_code);

  // Pass 2: out += scale / s * (code - s).
  at::parallel_for(0, blocks.count, 1, [&](int64_t first_block, int64_t last_block) {
    std::vector<uint8_t> codes(std::min(blocks.length, n));
    const float s = static_cast<float>(levels);
    for (int64_t blk = first_block; blk < last_block; ++blk) {
      const int64_t begin = blk * blocks.length;
      const int64_t len = std::min(blocks.length, n - begin);
      unpack_block(src + begin * bits / 8, codes.data(), len, bits);
      for (int64_t off = 0; off < len; off += bucket_size) {
        const int64_t size = std::min(bucket_size, len - off);
        const float step = scale_in[(begin + off) / bucket_size] / s;
        float* o = dst + begin + off;
        const uint8_t* code = codes.data() + off;
        for (int64_t j = 0; j < size; ++j) {
          o[j] += step * static_cast<float>(static_cast<int>(code[j]) - static_cast<int>(levels));
        }
      }
    }
  });
}

TORCH_LIBRARY_IMPL(commlib, CPU, m) {
  m.impl("qsgd_encode", &qsgd_encode_cpu);
  m.impl("qsgd_decode_add", &qsgd_decode_add_cpu);
}

}  // namespace commlib
