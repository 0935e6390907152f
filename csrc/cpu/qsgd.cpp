// CPU kernels of commlib::qsgd_encode (quantize + pack in one pass) and
// commlib::qsgd_decode_add (unpack + dequantize + accumulate). The math is
// in ../qsgd.h.
//
// Work is split into blocks of whole buckets whose length is also a
// multiple of 8 codes, so every block starts on a byte of the packed output
// and blocks are independent (parallel, any thread count, same bytes).
//   encode, per block: for each bucket, one pass for the maximum key (and a
//     finiteness check) fused with the l2 sum, one that writes the codes.
//     With AVX-512 and buckets on 16-code boundaries the codes are computed
//     16 at a time (hash included) and packed in registers straight into
//     the output; otherwise they go to an L2-resident scratch buffer that is
//     then packed into the block's bytes.
//   decode: first every scale and every code is validated (a malformed
//     payload raises before out is touched; the codes are compared on the
//     packed bytes, several per 64-bit word: swar::codes_at_most), then per
//     block the codes are unpacked to scratch and accumulated into out.
//   check: the decoder's validation alone (qsgd_check).
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

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// The bucket's largest magnitude key (the float bits with the sign cleared)
// and the l2 partial sums: lanes[k] = sum of x[8t + k]^2 in double, t in
// order (a fixed order, so the same bits for any thread count or path).
struct BucketStats {
  uint32_t top_key;
  double lanes[8];
};

BucketStats bucket_stats(const float* __restrict__ x, int64_t len, bool want_squares) {
  BucketStats st{0, {0, 0, 0, 0, 0, 0, 0, 0}};
  const int64_t whole = len / 8 * 8;
  int64_t j = 0;
#if defined(__AVX512F__)
  // 16 floats per step: both halves add to the same 8 double lanes, low half
  // first, which is the scalar loop's order.
  __m512i top = _mm512_setzero_si512();
  __m512d acc = _mm512_setzero_pd();
  const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
  for (; j + 16 <= len; j += 16) {
    const __m512 v = _mm512_loadu_ps(x + j);
    top = _mm512_max_epu32(top, _mm512_and_si512(_mm512_castps_si512(v), magnitude));
    if (want_squares) {
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
      const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
      acc = _mm512_add_pd(acc, _mm512_mul_pd(lo, lo));
      acc = _mm512_add_pd(acc, _mm512_mul_pd(hi, hi));
    }
  }
  st.top_key = _mm512_reduce_max_epu32(top);
  _mm512_storeu_pd(st.lanes, acc);
#endif
  for (int64_t t = j; t < len; ++t) {
    uint32_t bits;
    std::memcpy(&bits, x + t, sizeof(bits));
    st.top_key = std::max(st.top_key, bits & 0x7FFFFFFFu);
  }
  if (want_squares) {
    for (; j < whole; j += 8) {
      for (int k = 0; k < 8; ++k) {
        const double v = x[j + k];
        st.lanes[k] += v * v;
      }
    }
    for (; j < len; ++j) {
      const double v = x[j];
      st.lanes[j - whole] += v * v;
    }
  }
  return st;
}

// The code of x at global index i under the bucket's scaling (see ../qsgd.h);
// the scalar twin of Quantizer16::codes.
inline uint8_t quantize_one(float x, uint32_t i, QsgdScaling scaling, float s, int32_t center, uint32_t key32) {
  const float y = qsgd_levels(std::fabs(x), scaling, s);
  const float floor_y = std::floor(y);
  const float coin = uniform24(hash32_stream(key32, i));
  const int32_t level = static_cast<int32_t>(floor_y) + (coin < y - floor_y ? 1 : 0);
  return static_cast<uint8_t>(x < 0.0f ? center - level : center + level);
}

#if defined(__AVX512F__)
// Codes of 16 elements at once, branch-free: |x| (times the pre-scale when
// it is not 1: x * 1 == x), times ratio, min with s (min_ps keeps the same
// operand as the scalar `y < s ? y : s`), floor, and the stream hash on 16
// 32-bit lanes. Bitwise quantize_one's result.
class Quantizer16 {
 public:
  // The first call to codes() quantizes the elements at global indices first + 0 .. 15, each later call the
  // next 16.
  Quantizer16(int64_t levels, QsgdScaling scaling, uint32_t key32, uint32_t first)
      : prescaled_(scaling.pre != 1.0f),
        pre_(_mm512_set1_ps(scaling.pre)),
        ratio_(_mm512_set1_ps(scaling.ratio)),
        s_(_mm512_set1_ps(static_cast<float>(levels))),
        center_(_mm512_set1_epi32(static_cast<int32_t>(levels))),
        key32_(_mm512_set1_epi32(static_cast<int32_t>(key32))),
        weyl_(_mm512_mullo_epi32(
            _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(first)),
                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
            _mm512_set1_epi32(static_cast<int32_t>(kGolden)))) {}

  // The codes (0 .. 2 levels) of x[0, 16) in 32-bit lanes; advances to the next 16 indices.
  inline __m512i codes(const float* x) {
    const __m512 v = _mm512_loadu_ps(x);
    __m512 mag = _mm512_abs_ps(v);
    if (prescaled_) {
      mag = _mm512_mul_ps(mag, pre_);
    }
    const __m512 y = _mm512_min_ps(_mm512_mul_ps(mag, ratio_), s_);
    const __m512 floor_y = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512i h = fmix(_mm512_add_epi32(weyl_, key32_));
    weyl_ = _mm512_add_epi32(weyl_, _mm512_set1_epi32(static_cast<int32_t>(16u * kGolden)));
    const __m512 coin = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(h, 8)), _mm512_set1_ps(1.0f / 16777216.0f));
    const __mmask16 up = _mm512_cmp_ps_mask(coin, _mm512_sub_ps(y, floor_y), _CMP_LT_OQ);
    const __m512i down = _mm512_cvttps_epi32(floor_y);
    const __m512i level = _mm512_mask_add_epi32(down, up, down, _mm512_set1_epi32(1));
    const __mmask16 negative = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_sub_epi32(_mm512_add_epi32(center_, level), negative, center_, level);
  }

 private:
  static inline __m512i fmix(__m512i h) {
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32(static_cast<int32_t>(0x85EBCA6Bu)));
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 13));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32(static_cast<int32_t>(0xC2B2AE35u)));
    return _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
  }

  static constexpr uint32_t kGolden = 0x9E3779B1u;  // hash32_stream's counter multiplier (../hash.h)

  const bool prescaled_;
  const __m512 pre_, ratio_, s_;
  const __m512i center_, key32_;
  __m512i weyl_;  // (index * kGolden) mod 2^32 of the next 16 indices: one add per step, no multiply
};

// 16 codes (< 2^bits, in 32-bit lanes) packed into 2 * bits bytes at out, code
// k at bits k * bits .. (../pack_bits.h's layout): narrowed to bytes, then
// neighbours merged by multiply-adds (c0 + 16 c1 for 4 bits; c0 + 4 c1 and
// then p0 + 16 p1 for 2 bits).
inline void store_packed16(__m512i code, int64_t bits, uint8_t* out) {
  const __m128i bytes = _mm512_cvtepi32_epi8(code);
  if (bits == 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), bytes);
  } else if (bits == 4) {
    const __m128i pairs = _mm_maddubs_epi16(bytes, _mm_set1_epi16(0x1001));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(pairs, pairs));
  } else {
    const __m128i pairs = _mm_maddubs_epi16(bytes, _mm_set1_epi16(0x0401));
    const __m128i quads = _mm_madd_epi16(pairs, _mm_set1_epi32(0x00100001));
    const __m128i words = _mm_packus_epi32(quads, quads);
    const uint32_t packed = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm_packus_epi16(words, words)));
    std::memcpy(out, &packed, sizeof(packed));
  }
}
#endif

// codes[j] for x[0, len) at global indices first + j, under the bucket's
// scaling; 16 at a time with AVX-512, the scalar loop finishes the tail.
void quantize_codes(const float* __restrict__ x, int64_t len, uint32_t first, int64_t levels, QsgdScaling scaling,
                    uint32_t key32, uint8_t* __restrict__ codes) {
  int64_t j = 0;
#if defined(__AVX512F__)
  Quantizer16 quantizer(levels, scaling, key32, first);
  for (; j + 16 <= len; j += 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + j), _mm512_cvtepi32_epi8(quantizer.codes(x + j)));
  }
#endif
  for (; j < len; ++j) {
    codes[j] = quantize_one(x[j], first + static_cast<uint32_t>(j), scaling, static_cast<float>(levels),
                            static_cast<int32_t>(levels), key32);
  }
}

// A bucket's scale and the scaling its codes use: scale -1 if the
// bucket holds a NaN or an infinity or its norm overflows float32; `zero`
// for an all-zero bucket (scale 0, every code is `levels`). One pass over
// the bucket: its maximum key (which doubles as the finiteness check) and
// the l2 lanes.
struct BucketScale {
  float scale;
  QsgdScaling scaling;
  bool zero;
};

BucketScale bucket_scale(const float* __restrict__ x, int64_t len, int64_t levels, bool max_norm) {
  const BucketStats st = bucket_stats(x, len, !max_norm);
  if (st.top_key >= 0x7F800000u) {
    return {-1.0f, {1.0f, 0.0f}, false};
  }
  if (st.top_key == 0) {
    return {0.0f, {1.0f, 0.0f}, true};
  }
  double norm;
  if (max_norm) {
    float top;
    std::memcpy(&top, &st.top_key, sizeof(top));
    norm = top;
  } else {
    const double* l = st.lanes;
    norm = std::sqrt(((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])));
  }
  const float scale = static_cast<float>(norm);
  if (!is_finite_bits(scale)) {
    return {-1.0f, {1.0f, 0.0f}, false};
  }
  return {scale, qsgd_scaling(norm, static_cast<double>(levels)), false};
}

// Quantizes one bucket x[0, len) (global offset `first`) into codes; returns
// its scale (-1: not finite). The bucket is read twice while L1-resident.
float quantize_bucket(const float* __restrict__ x, int64_t len, uint32_t first, int64_t levels, bool max_norm,
                      uint32_t key32, uint8_t* __restrict__ codes) {
  const BucketScale b = bucket_scale(x, len, levels, max_norm);
  if (b.zero) {
    std::fill(codes, codes + len, static_cast<uint8_t>(levels));
  } else if (b.scale > 0.0f) {
    quantize_codes(x, len, first, levels, b.scaling, key32, codes);
  }
  return b.scale;
}

#if defined(__AVX512F__)
// As quantize_bucket, but straight into the packed bytes at out (the bucket
// starts on a 16-code boundary, so out is its first byte): 16 codes at a
// time are quantized and packed in registers, the last len % 16 (only in
// the tensor's last bucket) go through pack_tail.
float quantize_bucket_packed(const float* __restrict__ x, int64_t len, uint32_t first, int64_t levels, bool max_norm,
                             uint32_t key32, int64_t bits, uint8_t* __restrict__ out) {
  const BucketScale b = bucket_scale(x, len, levels, max_norm);
  if (b.scale < 0.0f) {
    return b.scale;
  }
  const int64_t whole = len / 16 * 16;
  uint8_t tail[16];
  if (b.zero) {
    const int64_t repeat = bits == 8 ? 0x01 : bits == 4 ? 0x11 : 0x55;  // `levels` in every code of a byte
    std::memset(out, static_cast<int>(levels * repeat), whole * bits / 8);
    std::fill(tail, tail + (len - whole), static_cast<uint8_t>(levels));
  } else {
    Quantizer16 quantizer(levels, b.scaling, key32, first);
    for (int64_t j = 0; j < whole; j += 16) {
      store_packed16(quantizer.codes(x + j), bits, out + j * bits / 8);
    }
    quantize_codes(x + whole, len - whole, first + static_cast<uint32_t>(whole), levels, b.scaling, key32, tail);
  }
  if (whole < len) {
    swar::pack_tail(tail, out + whole * bits / 8, 0, len - whole, bits);
  }
  return b.scale;
}
#endif

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
  const uint32_t key32 = stream_key32(static_cast<uint64_t>(seed));
  std::atomic<bool> bad{false};
#if defined(__AVX512F__)
  if (bucket_size % 16 == 0 || bucket_size == n) {  // every bucket starts on a 16-code boundary
    at::parallel_for(0, blocks.count, 1, [&](int64_t first_block, int64_t last_block) {
      for (int64_t off = first_block * blocks.length; off < std::min(n, last_block * blocks.length);
           off += bucket_size) {
        const float scale = quantize_bucket_packed(src + off, std::min(bucket_size, n - off), static_cast<uint32_t>(off),
                                                   levels, max_norm, key32, bits,
                                                   dst + off * bits / 8);
        if (scale < 0.0f) {
          bad.store(true, std::memory_order_relaxed);
        }
        scale_out[off / bucket_size] = scale;
      }
    });
    if (bad.load()) {
      raise_non_finite(src, n);
    }
    return {scales, packed};
  }
#endif
  at::parallel_for(0, blocks.count, 1, [&](int64_t first_block, int64_t last_block) {
    std::vector<uint8_t> codes(std::min(blocks.length, n));
    for (int64_t blk = first_block; blk < last_block; ++blk) {
      const int64_t begin = blk * blocks.length;
      const int64_t len = std::min(blocks.length, n - begin);
      for (int64_t off = 0; off < len; off += bucket_size) {
        const int64_t size = std::min(bucket_size, len - off);
        const float scale = quantize_bucket(src + begin + off, size, static_cast<uint32_t>(begin + off), levels, max_norm,
                                            key32, codes.data() + off);
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

namespace {

constexpr int64_t kCheckBytesPerTask = int64_t{1} << 18;

// Whether each of the n codes packed at `packed` (bits 2, 4 or 8) is <= max_code:
// in parallel over whole-byte ranges, the last range taking the tail codes.
bool codes_at_most(const uint8_t* packed, int64_t n, int64_t bits, unsigned max_code) {
  const int64_t per_byte = 8 / bits;
  const int64_t ranges = std::max<int64_t>(1, n / per_byte / kCheckBytesPerTask);
  const int64_t range_codes = (n / ranges) / (8 * per_byte) * (8 * per_byte);  // whole words per range
  std::atomic<bool> over{false};
  at::parallel_for(0, ranges, 1, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const int64_t begin = r * range_codes;
      const int64_t count = r + 1 == ranges ? n - begin : range_codes;
      const uint8_t* start = packed + begin / per_byte;
      bool ok = true;
      switch (bits) {
        case 2: ok = swar::codes_at_most<2>(start, count, max_code); break;
        case 4: ok = swar::codes_at_most<4>(start, count, max_code); break;
        default: {
          uint8_t largest = 0;
          for (int64_t j = 0; j < count; ++j) {
            largest = std::max(largest, start[j]);
          }
          ok = largest <= max_code;
        }
      }
      if (!ok) {
        over.store(true, std::memory_order_relaxed);
      }
    }
  });
  return !over.load();
}

// What qsgd_decode_add checks before touching out (sizes aside): every scale
// finite and non-negative, every code at most 2 * levels.
void check_qsgd_payload(const char* op, const at::Tensor& scales, const at::Tensor& packed, int64_t n,
                        int64_t levels, int64_t bits) {
  const float* scale_in = scales.data_ptr<float>();
  for (int64_t b = 0; b < scales.numel(); ++b) {
    TORCH_CHECK_VALUE(is_finite_bits(scale_in[b]) && scale_in[b] >= 0.0f, op, ": scale ", b, " = ", scale_in[b],
                      " is not finite and non-negative");
  }
  TORCH_CHECK_VALUE(codes_at_most(packed.data_ptr<uint8_t>(), n, bits, static_cast<unsigned>(2 * levels)), op,
                    ": a code exceeds 2 * levels = ", 2 * levels);
}

}  // namespace

void qsgd_check_cpu(const at::Tensor& scales, const at::Tensor& packed, int64_t n, int64_t bucket_size,
                    int64_t levels, int64_t bits) {
  check_qsgd_payload_sizes("qsgd_check", n, scales, packed, bucket_size, levels, bits);
  check_qsgd_payload("qsgd_check", scales, packed, n, levels, bits);
}

void qsgd_decode_add_cpu(const at::Tensor& out, const at::Tensor& scales, const at::Tensor& packed,
                         int64_t bucket_size, int64_t levels, int64_t bits, bool subtract) {
  check_qsgd_decode_args(out, scales, packed, bucket_size, levels, bits);
  const int64_t n = out.numel();
  bucket_size = effective_bucket(n, bucket_size);
  check_qsgd_payload("qsgd_decode_add", scales, packed, n, levels, bits);  // before out is touched
  const float* scale_in = scales.data_ptr<float>();
  const uint8_t* src = packed.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  const Blocks blocks = make_blocks(n, bucket_size);

  // out += scale / s * (code - s), or out -= it (the same product, then one subtraction).
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
        if (subtract) {
          for (int64_t j = 0; j < size; ++j) {
            o[j] -= step * static_cast<float>(static_cast<int>(code[j]) - static_cast<int>(levels));
          }
        } else {
          for (int64_t j = 0; j < size; ++j) {
            o[j] += step * static_cast<float>(static_cast<int>(code[j]) - static_cast<int>(levels));
          }
        }
      }
    }
  });
}

TORCH_LIBRARY_IMPL(commlib, CPU, m) {
  m.impl("qsgd_encode", &qsgd_encode_cpu);
  m.impl("qsgd_decode_add", &qsgd_decode_add_cpu);
  m.impl("qsgd_check", &qsgd_check_cpu);
}

}  // namespace commlib
