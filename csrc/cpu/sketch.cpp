// CPU kernels of the sketching ops (math in ../sketch.h).
//
// count_sketch_add_: every cell is accumulated in index order (the order of
//   the reference's per-row index_add_), so the result has the same bits for
//   any thread count. Hashes of consecutive indices come from RowHashStream
//   (finite differences, no modular multiply in the loop). Threads take whole
//   rows, rows - rows % threads of them; each remaining row (every row, when
//   there are fewer rows than threads: one row, say) runs on all threads,
//   each thread owning a column range: it hashes every element and adds
//   those that fall in its range (see sketch_row_parallel).
// count_unsketch: in parallel over chunks of elements; the r signed counters
//   of a chunk are stored row-major (r rows of the chunk's length), sorted
//   column-wise by odd-even transposition (r rounds of compare-exchanges
//   between neighbouring rows, each a vectorized min/max over the chunk), and
//   the lower median's row copied out. The table must be finite, so min/max
//   order like a sort.
// srht / srht_transpose: in parallel over blocks; each block is transformed
//   in a thread-local (L1-resident) buffer with the iterative butterfly
//   (stage h pairs element t with t + h inside runs of 2h). With AVX-512 the
//   signs are hashed 16 at a time, stages 1, 2, 4, 8 run inside a register
//   (fused with the sign flip in srht), and the remaining stages two at a
//   time (radix 4), whose contiguous inner loops vectorize; with AVX2, 8 at
//   a time and stages 1, 2, 4. Same butterflies, same operands: the same
//   bits as the reference.
#include "../sketch.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace commlib {
namespace {

void check_float_vector(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.is_contiguous(), op, ": ", name, " must be a contiguous 1-D tensor");
}

// One butterfly stage h of the unnormalized Walsh-Hadamard transform on
// v[0, n): (v[t], v[t + h]) -> (v[t] + v[t + h], v[t] - v[t + h]) for every t
// with bit h clear. Every stage's outputs depend only on the stage before, so
// any grouping of the butterflies inside a stage, and any fusing of
// consecutive stages that keeps each butterfly's two operations, gives the
// same bits as the plain loop below.
void fwht_stage(float* __restrict__ v, int64_t n, int64_t h) {
  for (int64_t start = 0; start < n; start += 2 * h) {
    float* __restrict__ lo = v + start;
    float* __restrict__ hi = v + start + h;
    for (int64_t t = 0; t < h; ++t) {
      const float u = lo[t];
      const float w = hi[t];
      lo[t] = u + w;
      hi[t] = u - w;
    }
  }
}

// Stages h and 2h fused (radix 4): each group of four elements t, t + h,
// t + 2h, t + 3h is loaded once for both stages.
void fwht_stage_pair(float* __restrict__ v, int64_t n, int64_t h) {
  for (int64_t start = 0; start < n; start += 4 * h) {
    float* __restrict__ p0 = v + start;
    float* __restrict__ p1 = p0 + h;
    float* __restrict__ p2 = p1 + h;
    float* __restrict__ p3 = p2 + h;
    for (int64_t t = 0; t < h; ++t) {
      const float a = p0[t] + p1[t];
      const float b = p0[t] - p1[t];
      const float c = p2[t] + p3[t];
      const float d = p2[t] - p3[t];
      p0[t] = a + c;
      p2[t] = a - c;
      p1[t] = b + d;
      p3[t] = b - d;
    }
  }
}

#if defined(__AVX512F__)
// Stages h = 1, 2, 4, 8 inside one 16-float register: the partner of lane l
// is lane l ^ h (a permute); lanes with bit h clear keep u + w, the others
// take u - w (partner minus self), the scalar butterfly's operands.
inline __m512 fwht16(__m512 v) {
  __m512 p = _mm512_permute_ps(v, 0xB1);
  v = _mm512_mask_blend_ps(0xAAAA, _mm512_add_ps(v, p), _mm512_sub_ps(p, v));
  p = _mm512_permute_ps(v, 0x4E);
  v = _mm512_mask_blend_ps(0xCCCC, _mm512_add_ps(v, p), _mm512_sub_ps(p, v));
  p = _mm512_shuffle_f32x4(v, v, 0xB1);
  v = _mm512_mask_blend_ps(0xF0F0, _mm512_add_ps(v, p), _mm512_sub_ps(p, v));
  p = _mm512_shuffle_f32x4(v, v, 0x4E);
  return _mm512_mask_blend_ps(0xFF00, _mm512_add_ps(v, p), _mm512_sub_ps(p, v));
}

// The counter hash of sketch.h's signs, hash32(seed, i), for the 16 indices
// first + 0..15 (all below 2^32, so the high-counter term is zero), as a
// mask of the odd ones (sign -1).
inline __mmask16 odd_hash_mask16(uint32_t key_lo, uint32_t key_hi, uint32_t first) {
  const __m512i m1 = _mm512_set1_epi32(static_cast<int32_t>(0x85EBCA6Bu));
  const __m512i m2 = _mm512_set1_epi32(static_cast<int32_t>(0xC2B2AE35u));
  const auto fmix = [&](__m512i h) {
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
    h = _mm512_mullo_epi32(h, m1);
    h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 13));
    h = _mm512_mullo_epi32(h, m2);
    return _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
  };
  const __m512i index = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(first)),
                                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __m512i h = fmix(_mm512_xor_si512(
      fmix(_mm512_add_epi32(_mm512_mullo_epi32(index, _mm512_set1_epi32(static_cast<int32_t>(0x9E3779B1u))),
                            _mm512_set1_epi32(static_cast<int32_t>(key_lo)))),
      _mm512_set1_epi32(static_cast<int32_t>(key_hi))));
  return _mm512_test_epi32_mask(h, _mm512_set1_epi32(1));
}

inline __m512 signs16(uint64_t seed, int64_t first) {
  const __mmask16 odd = odd_hash_mask16(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                                        static_cast<uint32_t>(first));
  return _mm512_mask_blend_ps(odd, _mm512_set1_ps(1.0f), _mm512_set1_ps(-1.0f));
}
#elif defined(__AVX2__)
// Stages h = 1, 2, 4 inside one 8-float register, as fwht16 does with 16.
inline __m256 fwht8(__m256 v) {
  __m256 p = _mm256_permute_ps(v, 0xB1);
  v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xAA);
  p = _mm256_permute_ps(v, 0x4E);
  v = _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xCC);
  p = _mm256_permute2f128_ps(v, v, 0x01);
  return _mm256_blend_ps(_mm256_add_ps(v, p), _mm256_sub_ps(p, v), 0xF0);
}

// The signs of sketch.h, hash32(seed, i) odd -> -1, for the 8 indices first + 0..7 (all below 2^32).
inline __m256 signs8(uint64_t seed, int64_t first) {
  const __m256i m1 = _mm256_set1_epi32(static_cast<int32_t>(0x85EBCA6Bu));
  const __m256i m2 = _mm256_set1_epi32(static_cast<int32_t>(0xC2B2AE35u));
  const auto fmix = [&](__m256i h) {
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
    h = _mm256_mullo_epi32(h, m1);
    h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 13));
    h = _mm256_mullo_epi32(h, m2);
    return _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
  };
  const __m256i index = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(first))),
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i h = fmix(_mm256_xor_si256(
      fmix(_mm256_add_epi32(_mm256_mullo_epi32(index, _mm256_set1_epi32(static_cast<int32_t>(0x9E3779B1u))),
                            _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(seed))))),
      _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(seed >> 32)))));
  const __m256i sign_bit = _mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(1)), 31);
  return _mm256_castsi256_ps(_mm256_or_si256(_mm256_set1_epi32(0x3F800000), sign_bit));  // ±1.0f
}
#endif

// The vectorized sign path needs 16 indices below 2^32.
inline bool small_indices(int64_t first, int64_t len) { return first + len <= (int64_t{1} << 32); }

// In-place unnormalized Walsh-Hadamard transform of v[0, n), n a power of 2,
// from stage h = `from` on: stages below 16 in registers (when n >= 16 and
// they are due), then the rest two at a time.
void fwht_from(float* __restrict__ v, int64_t n, int64_t from) {
  int64_t h = from;
#if defined(__AVX512F__)
  if (n >= 16 && h == 1) {
    for (int64_t t = 0; t < n; t += 16) {
      _mm512_storeu_ps(v + t, fwht16(_mm512_loadu_ps(v + t)));
    }
    h = 16;
  }
#elif defined(__AVX2__)
  if (n >= 8 && h == 1) {
    for (int64_t t = 0; t < n; t += 8) {
      _mm256_storeu_ps(v + t, fwht8(_mm256_loadu_ps(v + t)));
    }
    h = 8;
  }
#endif
  for (; 4 * h <= n; h *= 4) {
    fwht_stage_pair(v, n, h);
  }
  if (h < n) {
    fwht_stage(v, n, h);
  }
}

void fwht_inplace(float* __restrict__ v, int64_t n) { fwht_from(v, n, 1); }

constexpr int64_t kHashChunk = 2048;
constexpr int64_t kParallelElements = 1 << 16;  // below this much work, one thread

// Sorts each column t < len of the rows x stride matrix m (row-major),
// ascending down the rows, by odd-even transposition sort.
void sort_columns(float* m, int64_t rows, int64_t stride, int64_t len) {
  for (int64_t round = 0; round < rows; ++round) {
    for (int64_t j = round % 2; j + 1 < rows; j += 2) {
      float* __restrict__ upper = m + j * stride;
      float* __restrict__ lower = m + (j + 1) * stride;
      for (int64_t t = 0; t < len; ++t) {
        const float a = upper[t];
        const float b = lower[t];
        upper[t] = a < b ? a : b;
        lower[t] = a < b ? b : a;
      }
    }
  }
}

// Count-sketch hashes of one row for consecutive indices first, first + 1, ...
// (sketch.h's formulas, the same values). Each call to fill() continues
// where the last one stopped.
//
// With AVX-512 the indices go 16 at a time, lane l holding index
// i = first + l + 16k at step k, and no multiplication modulo P is left in
// the loop: the bucket's linear hash h(i) = (a i + b) mod P advances by
// h(i + 16) = h(i) + 16a mod P, and the sign's cubic g(i) by forward
// differences of step 16, g(i + 16) = g(i) + D1(i), D1(i + 16) = D1(i) +
// D2(i), D2(i + 16) = D2(i) + D3 (D3 constant for a cubic), all exact
// modulo P. Values stay below P < 2^31, so a sum fits 32 bits and is
// reduced by min(x, x - P). Lanes are seeded with the direct formulas
// (16 x 4 cubic evaluations), and reseeded whenever a call ends off the
// 16-grid. The bucket ((h c) >> 31) needs one 32 x 32 -> 64-bit multiply
// per lane (even and odd lanes separately). With AVX2 (and not AVX-512)
// the 16 lanes are two 8-lane registers each, stepped the same way (GCC
// vectorizes the plain loops poorly: 9x slower); with neither, every index
// is hashed with the direct formulas.
// The 16 lanes' starting values for index `first`: lane l holds i = first + l; the
// linear hash h(i) and the cubic g(i) with its step-16 forward differences D1, D2, D3.
struct LaneSeeds {
  uint32_t hash[16], poly[16], d1[16], d2[16], d3[16];

  void compute(const CountSketchRow& h, uint64_t first) {
    constexpr uint64_t P = kSketchPrime;
    for (int l = 0; l < 16; ++l) {
      const uint64_t i = first + static_cast<uint64_t>(l);
      hash[l] = static_cast<uint32_t>(mod_mersenne31(mul32x32(h.a, i) + h.b));
      const uint64_t p0 = h.sign_poly(i), p1 = h.sign_poly(i + 16), p2 = h.sign_poly(i + 32);
      const uint64_t p3 = h.sign_poly(i + 48);
      poly[l] = static_cast<uint32_t>(p0);
      d1[l] = static_cast<uint32_t>((p1 + P - p0) % P);
      d2[l] = static_cast<uint32_t>((p2 + 2 * P - 2 * p1 + p0) % P);
      d3[l] = static_cast<uint32_t>((p3 + 3 * p1 + 4 * P - 3 * p2 - p0) % P);
    }
  }
};

#if defined(__AVX2__) && !defined(__AVX512F__)
// For each 8-bit mask, the lanes of its set bits in increasing order, 4 bits
// each from the lowest: the permutation that moves a register's kept lanes
// to its front (AVX2 has no compress-store).
struct CompactTable {
  uint32_t lanes[256];
  constexpr CompactTable() : lanes() {
    for (int mask = 0; mask < 256; ++mask) {
      int at = 0;
      for (int lane = 0; lane < 8; ++lane) {
        if ((mask >> lane) & 1) {
          lanes[mask] |= static_cast<uint32_t>(lane) << (4 * at++);
        }
      }
    }
  }
};
inline constexpr CompactTable kCompactTable{};

// Writes the lanes of bucket and value selected by mask, in lane order, to
// the front of kept_bucket and kept_value (all 8 entries of each are
// written, so both need room for 8); returns how many were selected.
inline int compact8(unsigned mask, __m256i bucket, __m256 value, int32_t* kept_bucket, float* kept_value) {
  const __m256i nibble_shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i order = _mm256_and_si256(
      _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int32_t>(kCompactTable.lanes[mask])), nibble_shifts),
      _mm256_set1_epi32(7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(kept_bucket), _mm256_permutevar8x32_epi32(bucket, order));
  _mm256_storeu_ps(kept_value, _mm256_permutevar8x32_ps(value, order));
  return __builtin_popcount(mask);
}
#endif

class RowHashStream {
 public:
  RowHashStream(const CountSketchRow& h, uint64_t cols, uint64_t first) : h_(h), cols_(cols), next_(first) {
#if defined(__AVX512F__) || defined(__AVX2__)
    seed_lanes();
#endif
  }

  // bucket[t] and value[t] = sign(i) * x[t] (the bare sign when x is null)
  // for the next len indices i.
  void fill(int64_t len, const float* __restrict__ x, int32_t* __restrict__ bucket, float* __restrict__ value) {
    int64_t t = 0;
#if defined(__AVX512F__)
    if (lanes_at_ != next_) {
      seed_lanes();
    }
    for (; t + 16 <= len; t += 16) {
      __m512i b;
      __m512 v;
      step16(x == nullptr ? nullptr : x + t, b, v);
      _mm512_storeu_si512(bucket + t, b);
      _mm512_storeu_ps(value + t, v);
    }
#elif defined(__AVX2__)
    if (lanes_at_ != next_) {
      seed_lanes();
    }
    for (; t + 16 <= len; t += 16) {
      __m256i b[2];
      __m256 v[2];
      step16(x == nullptr ? nullptr : x + t, b, v);
      for (int half = 0; half < 2; ++half) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(bucket + t + 8 * half), b[half]);
        _mm256_storeu_ps(value + t + 8 * half, v[half]);
      }
    }
#endif
    for (; t < len; ++t) {
      const uint64_t at = next_ + static_cast<uint64_t>(t);
      bucket[t] = static_cast<int32_t>(h_.bucket(at, cols_));
      value[t] = x == nullptr ? h_.sign(at) : h_.sign(at) * x[t];
    }
    next_ += static_cast<uint64_t>(len);
  }

  // As fill, but keeps only the indices whose bucket lies in [lo, hi), in
  // index order, packed at the front of kept_bucket / kept_value; returns
  // how many were kept.
  int64_t fill_range(int64_t len, const float* __restrict__ x, int32_t lo, int32_t hi,
                     int32_t* __restrict__ kept_bucket, float* __restrict__ kept_value) {
    int64_t kept = 0;
    int64_t t = 0;
#if defined(__AVX512F__)
    if (lanes_at_ != next_) {
      seed_lanes();
    }
    const __m512i lo_v = _mm512_set1_epi32(lo);
    const __m512i hi_v = _mm512_set1_epi32(hi);
    for (; t + 16 <= len; t += 16) {
      __m512i b;
      __m512 v;
      step16(x + t, b, v);
      const __mmask16 in = _mm512_cmpge_epi32_mask(b, lo_v) & _mm512_cmplt_epi32_mask(b, hi_v);
      _mm512_mask_compressstoreu_epi32(kept_bucket + kept, in, b);
      _mm512_mask_compressstoreu_ps(kept_value + kept, in, v);
      kept += __builtin_popcount(in);
    }
#elif defined(__AVX2__)
    if (lanes_at_ != next_) {
      seed_lanes();
    }
    const __m256i above_v = _mm256_set1_epi32(lo - 1);  // buckets and bounds are below 2^31: signed compares
    const __m256i hi_v = _mm256_set1_epi32(hi);
    for (; t + 16 <= len; t += 16) {
      __m256i b[2];
      __m256 v[2];
      step16(x + t, b, v);
      for (int half = 0; half < 2; ++half) {
        const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(b[half], above_v), _mm256_cmpgt_epi32(hi_v, b[half]));
        kept += compact8(static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(in))), b[half], v[half],
                         kept_bucket + kept, kept_value + kept);
      }
    }
#endif
    for (; t < len; ++t) {
      const uint64_t at = next_ + static_cast<uint64_t>(t);
      const int32_t b = static_cast<int32_t>(h_.bucket(at, cols_));
      if (b >= lo && b < hi) {
        kept_bucket[kept] = b;
        kept_value[kept] = h_.sign(at) * x[t];
        ++kept;
      }
    }
    next_ += static_cast<uint64_t>(len);
    return kept;
  }

 private:
  const CountSketchRow h_;
  const uint64_t cols_;
  uint64_t next_;  // the index the next fill starts at

#if defined(__AVX512F__)
  static inline __m512i add_mod(__m512i x, __m512i y) {
    x = _mm512_add_epi32(x, y);
    return _mm512_min_epu32(x, _mm512_sub_epi32(x, _mm512_set1_epi32(static_cast<int32_t>(kSketchPrime))));
  }

  void seed_lanes() {
    alignas(64) LaneSeeds seeds;  // each array 64 bytes: all aligned for the register loads
    seeds.compute(h_, next_);
    hash_ = _mm512_load_si512(seeds.hash);
    poly_ = _mm512_load_si512(seeds.poly);
    d1_ = _mm512_load_si512(seeds.d1);
    d2_ = _mm512_load_si512(seeds.d2);
    d3_ = _mm512_load_si512(seeds.d3);
    step_a_ = _mm512_set1_epi32(static_cast<int32_t>(mod_mersenne31(16 * h_.a)));
    cols_v_ = _mm512_set1_epi64(static_cast<int64_t>(cols_));
    lanes_at_ = next_;
  }

  // Buckets and signed values of the 16 lanes, then every lane advances by 16.
  inline void step16(const float* x, __m512i& bucket, __m512& value) {
    const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(hash_, cols_v_), 31);
    const __m512i odd = _mm512_slli_epi64(
        _mm512_srli_epi64(_mm512_mul_epu32(_mm512_srli_epi64(hash_, 32), cols_v_), 31), 32);
    bucket = _mm512_mask_blend_epi32(0xAAAA, even, odd);
    const __mmask16 minus = _mm512_test_epi32_mask(poly_, _mm512_set1_epi32(1));
    value = _mm512_mask_blend_ps(minus, _mm512_set1_ps(1.0f), _mm512_set1_ps(-1.0f));
    if (x != nullptr) {
      value = _mm512_mul_ps(value, _mm512_loadu_ps(x));
    }
    hash_ = add_mod(hash_, step_a_);
    poly_ = add_mod(poly_, d1_);
    d1_ = add_mod(d1_, d2_);
    d2_ = add_mod(d2_, d3_);
    lanes_at_ += 16;
  }

  __m512i hash_, poly_, d1_, d2_, d3_, step_a_, cols_v_;
  uint64_t lanes_at_ = 0;  // the index lane 0 holds
#elif defined(__AVX2__)
  static inline __m256i add_mod(__m256i x, __m256i y) {
    x = _mm256_add_epi32(x, y);
    return _mm256_min_epu32(x, _mm256_sub_epi32(x, _mm256_set1_epi32(static_cast<int32_t>(kSketchPrime))));
  }

  // As the AVX-512 seeding: lanes 0-7 in the first register of each pair, 8-15 in the second.
  void seed_lanes() {
    alignas(64) LaneSeeds seeds;  // each array 64 bytes: all aligned for the register loads
    seeds.compute(h_, next_);
    for (int half = 0; half < 2; ++half) {
      hash_[half] = _mm256_load_si256(reinterpret_cast<const __m256i*>(seeds.hash + 8 * half));
      poly_[half] = _mm256_load_si256(reinterpret_cast<const __m256i*>(seeds.poly + 8 * half));
      d1_[half] = _mm256_load_si256(reinterpret_cast<const __m256i*>(seeds.d1 + 8 * half));
      d2_[half] = _mm256_load_si256(reinterpret_cast<const __m256i*>(seeds.d2 + 8 * half));
      d3_[half] = _mm256_load_si256(reinterpret_cast<const __m256i*>(seeds.d3 + 8 * half));
    }
    step_a_ = _mm256_set1_epi32(static_cast<int32_t>(mod_mersenne31(16 * h_.a)));
    cols_v_ = _mm256_set1_epi64x(static_cast<int64_t>(cols_));
    lanes_at_ = next_;
  }

  // The AVX-512 step in two 8-lane halves: buckets and signed values of the 16 lanes (the sign as the bits of
  // ±1.0f, times x), then every lane advances by 16.
  inline void step16(const float* x, __m256i bucket[2], __m256 value[2]) {
    for (int half = 0; half < 2; ++half) {
      const __m256i h = hash_[half];
      const __m256i even = _mm256_srli_epi64(_mm256_mul_epu32(h, cols_v_), 31);
      const __m256i odd = _mm256_slli_epi64(_mm256_srli_epi64(_mm256_mul_epu32(_mm256_srli_epi64(h, 32), cols_v_), 31), 32);
      bucket[half] = _mm256_blend_epi32(even, odd, 0xAA);
      const __m256i sign_bit = _mm256_slli_epi32(_mm256_and_si256(poly_[half], _mm256_set1_epi32(1)), 31);
      value[half] = _mm256_castsi256_ps(_mm256_or_si256(_mm256_set1_epi32(0x3F800000), sign_bit));  // ±1.0f
      if (x != nullptr) {
        value[half] = _mm256_mul_ps(value[half], _mm256_loadu_ps(x + 8 * half));
      }
      hash_[half] = add_mod(h, step_a_);
      poly_[half] = add_mod(poly_[half], d1_[half]);
      d1_[half] = add_mod(d1_[half], d2_[half]);
      d2_[half] = add_mod(d2_[half], d3_[half]);
    }
    lanes_at_ += 16;
  }

  __m256i hash_[2], poly_[2], d1_[2], d2_[2], d3_[2], step_a_, cols_v_;
  uint64_t lanes_at_ = 0;  // the index lane 0 holds
#endif
};

inline float hadamard_scale(int64_t block) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(block))); }

inline float random_sign(uint64_t seed, int64_t i) {
  return (hash32(seed, static_cast<uint64_t>(i)) & 1u) ? -1.0f : 1.0f;
}

std::vector<int64_t> checked_rows(const char* op, const at::Tensor& rows, int64_t block) {
  const at::Tensor r = rows.contiguous();
  const int64_t* p = r.data_ptr<int64_t>();
  std::vector<int64_t> out(p, p + r.numel());
  for (const int64_t row : out) {
    TORCH_CHECK_VALUE(row >= 0 && row < block, op, ": row index ", row, " is outside [0, ", block, ")");
  }
  std::vector<int64_t> sorted = out;
  std::sort(sorted.begin(), sorted.end());
  TORCH_CHECK_VALUE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(), op,
                    ": row indices must be distinct");
  return out;
}

}  // namespace

namespace {

// row[bucket[t]] += value[t] for t = 0 .. n-1, in order. Each cell's line is
// prefetched for writing kPrefetchAhead entries early: the adds into an
// L1/L2-resident row then run about 1.4x faster (1.6 against 2.3 ns per
// entry into a 330 KB row, 1.1 against 1.7 into 32 KB, on the AVX2 machine).
constexpr int64_t kPrefetchAhead = 24;

inline void scatter_add(float* __restrict__ row, const int32_t* __restrict__ bucket, const float* __restrict__ value,
                        int64_t n) {
  int64_t t = 0;
  for (; t + kPrefetchAhead < n; ++t) {
    __builtin_prefetch(row + bucket[t + kPrefetchAhead], 1, 3);
    row[bucket[t]] += value[t];
  }
  for (; t < n; ++t) {
    row[bucket[t]] += value[t];
  }
}

// One row of the sketch on `parts` threads, for rows too few to split by row:
// thread r owns the r-th of `parts` contiguous column ranges of the row. It
// hashes every element (cheap: see RowHashStream), keeps those that fall in
// its range and adds them in index order (random access, on a slice of the
// row that stays in the thread's cache). Every cell receives its values in
// index order, as in the serial loop and the reference: the same bits for
// any thread count, without atomics or a barrier.
void sketch_row_parallel(const CountSketchRow& h, float* row, uint64_t cols, const float* src, int64_t n,
                         int64_t offset, int64_t parts) {
  at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    std::vector<int32_t> kept_bucket(kHashChunk);
    std::vector<float> kept_value(kHashChunk);
    for (int64_t r = first; r < last; ++r) {
      const int32_t lo = static_cast<int32_t>(static_cast<int64_t>(cols) * r / parts);
      const int32_t hi = static_cast<int32_t>(static_cast<int64_t>(cols) * (r + 1) / parts);
      RowHashStream hashes(h, cols, static_cast<uint64_t>(offset));
      for (int64_t begin = 0; begin < n; begin += kHashChunk) {
        const int64_t len = std::min(kHashChunk, n - begin);
        const int64_t kept = hashes.fill_range(len, src + begin, lo, hi, kept_bucket.data(), kept_value.data());
        scatter_add(row, kept_bucket.data(), kept_value.data(), kept);
      }
    }
  });
}

}  // namespace

void count_sketch_add_cpu(const at::Tensor& table, const at::Tensor& x, int64_t seed, int64_t offset) {
  const char* op = "count_sketch_add_";
  check_sketch_table(op, table);
  check_float_vector(op, "x", x);
  check_sketch_range(op, offset, x.numel());
  const int64_t rows = table.size(0);
  const uint64_t cols = static_cast<uint64_t>(table.size(1));
  const float* src = x.data_ptr<float>();
  float* dst = table.data_ptr<float>();
  const int64_t n = x.numel();
  const int64_t threads = at::get_num_threads();
  // With enough work, threads take whole rows as long as every thread gets
  // one; each of the rows % threads rows left over (all rows, when there are
  // fewer rows than threads) then runs on all threads, split by columns, so
  // no thread idles through a last round of whole rows. Small inputs stay on
  // one thread (waking a pool costs more than the work).
  const int64_t parts = std::min<int64_t>({threads, 16, static_cast<int64_t>(cols)});
  int64_t whole_rows = rows;
  if (parts > 1 && n >= kParallelElements) {
    whole_rows = rows - rows % threads;
    for (int64_t j = whole_rows; j < rows; ++j) {
      sketch_row_parallel(CountSketchRow::make(static_cast<uint64_t>(seed), j), dst + j * static_cast<int64_t>(cols),
                          cols, src, n, offset, parts);
    }
  }
  at::parallel_for(0, whole_rows, rows * n < kParallelElements ? whole_rows : 1, [&](int64_t first, int64_t last) {
    std::vector<int32_t> bucket(kHashChunk);
    std::vector<float> value(kHashChunk);
    for (int64_t j = first; j < last; ++j) {
      RowHashStream hashes(CountSketchRow::make(static_cast<uint64_t>(seed), j), cols, static_cast<uint64_t>(offset));
      float* row = dst + j * static_cast<int64_t>(cols);
      for (int64_t begin = 0; begin < n; begin += kHashChunk) {
        const int64_t len = std::min(kHashChunk, n - begin);
        hashes.fill(len, src + begin, bucket.data(), value.data());
        scatter_add(row, bucket.data(), value.data(), len);
      }
    }
  });
}

namespace {

// count_unsketch into out (its length), for both ops; op names the caller in errors.
void count_unsketch_into(const char* op, const at::Tensor& table, int64_t seed, int64_t offset,
                         const at::Tensor& out) {
  check_sketch_table(op, table);
  check_out_vector(op, out, table);
  const int64_t length = out.numel();
  check_sketch_range(op, offset, length);
  const int64_t rows = table.size(0);
  const uint64_t cols = static_cast<uint64_t>(table.size(1));
  const float* cells = table.data_ptr<float>();
  TORCH_CHECK_VALUE(std::all_of(cells, cells + table.numel(), [](float v) { return std::isfinite(v); }), op,
                    ": the table holds NaN or Inf");
  const float* src = table.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t chunks = (length + kHashChunk - 1) / kHashChunk;
  at::parallel_for(0, chunks, std::max<int64_t>(1, kParallelElements / (rows * kHashChunk)),
                   [&](int64_t first, int64_t last) {
    std::vector<int32_t> bucket(kHashChunk);
    std::vector<float> votes(rows * kHashChunk);
    std::vector<RowHashStream> hashes;
    hashes.reserve(rows);
    for (int64_t j = 0; j < rows; ++j) {
      hashes.emplace_back(CountSketchRow::make(static_cast<uint64_t>(seed), j), cols,
                          static_cast<uint64_t>(offset + first * kHashChunk));
    }
    for (int64_t c = first; c < last; ++c) {
      const int64_t begin = c * kHashChunk;
      const int64_t len = std::min(kHashChunk, length - begin);
      for (int64_t j = 0; j < rows; ++j) {
        float* vote = votes.data() + j * kHashChunk;
        hashes[j].fill(len, nullptr, bucket.data(), vote);
        const float* row = src + j * static_cast<int64_t>(cols);
        for (int64_t t = 0; t < len; ++t) {
          vote[t] *= row[bucket[t]];
        }
      }
      sort_columns(votes.data(), rows, kHashChunk, len);
      const float* median = votes.data() + ((rows - 1) / 2) * kHashChunk;
      std::copy(median, median + len, dst + begin);
    }
  });
}

}  // namespace

void count_unsketch_out_cpu(const at::Tensor& table, int64_t seed, int64_t offset, const at::Tensor& out) {
  count_unsketch_into("count_unsketch_out", table, seed, offset, out);
}

at::Tensor count_unsketch_cpu(const at::Tensor& table, int64_t seed, int64_t offset, int64_t length) {
  check_sketch_range("count_unsketch", offset, length);
  at::Tensor out = at::empty({length}, table.options());
  count_unsketch_into("count_unsketch", table, seed, offset, out);
  return out;
}

at::Tensor srht_cpu(const at::Tensor& x, int64_t block, const at::Tensor& rows, int64_t seed) {
  const char* op = "srht";
  check_float_vector(op, "x", x);
  check_srht_args(op, block, rows);
  const std::vector<int64_t> picked = checked_rows(op, rows, block);
  const int64_t d = x.numel();
  const int64_t blocks = (d + block - 1) / block;
  const int64_t m = static_cast<int64_t>(picked.size());
  at::Tensor out = at::empty({blocks, m}, x.options());
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const float scale = hadamard_scale(block);
  at::parallel_for(0, blocks, std::max<int64_t>(1, kParallelElements / block), [&](int64_t first, int64_t last) {
    std::vector<float> v(block);
    for (int64_t b = first; b < last; ++b) {
      const int64_t begin = b * block;
      const int64_t len = std::min(block, d - begin);
      int64_t h_done = 1;
#if defined(__AVX512F__)
      // A whole block of >= 16 elements: signs and the first four stages in
      // one pass over x.
      if (len == block && block >= 16 && small_indices(begin, len)) {
        for (int64_t t = 0; t < block; t += 16) {
          const __m512 signed_x = _mm512_mul_ps(signs16(static_cast<uint64_t>(seed), begin + t),
                                                _mm512_loadu_ps(src + begin + t));
          _mm512_storeu_ps(v.data() + t, fwht16(signed_x));
        }
        h_done = 16;
      }
#elif defined(__AVX2__)
      if (len == block && block >= 8 && small_indices(begin, len)) {  // the same with 8 lanes, three stages
        for (int64_t t = 0; t < block; t += 8) {
          const __m256 signed_x = _mm256_mul_ps(signs8(static_cast<uint64_t>(seed), begin + t),
                                                _mm256_loadu_ps(src + begin + t));
          _mm256_storeu_ps(v.data() + t, fwht8(signed_x));
        }
        h_done = 8;
      }
#endif
      if (h_done == 1) {
        for (int64_t t = 0; t < len; ++t) {
          v[t] = random_sign(static_cast<uint64_t>(seed), begin + t) * src[begin + t];
        }
        std::fill(v.begin() + len, v.end(), 0.0f);
      }
      fwht_from(v.data(), block, h_done);
      for (int64_t r = 0; r < m; ++r) {
        dst[b * m + r] = v[picked[r]] * scale;
      }
    }
  });
  return out;
}

namespace {

// srht_transpose into out (its length), for both ops; op names the caller in errors.
void srht_transpose_into(const char* op, const at::Tensor& y, int64_t block, const at::Tensor& rows, int64_t seed,
                         const at::Tensor& out) {
  check_srht_args(op, block, rows);
  const std::vector<int64_t> picked = checked_rows(op, rows, block);
  const int64_t m = static_cast<int64_t>(picked.size());
  TORCH_CHECK_VALUE(y.scalar_type() == at::kFloat && y.dim() == 2 && y.is_contiguous(), op,
                    ": y must be a contiguous 2-D float32 tensor");
  check_out_vector(op, out, y);
  const int64_t length = out.numel();
  const int64_t blocks = (length + block - 1) / block;
  TORCH_CHECK_VALUE(y.size(0) == blocks && y.size(1) == m, op, ": y must have shape (", blocks, ", ", m,
                    ") for length ", length, ", block ", block, " and ", m, " rows, got ", y.sizes());
  const float* src = y.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const float scale = hadamard_scale(block);
  at::parallel_for(0, blocks, std::max<int64_t>(1, kParallelElements / block), [&](int64_t first, int64_t last) {
    std::vector<float> v(block);
    for (int64_t b = first; b < last; ++b) {
      std::fill(v.begin(), v.end(), 0.0f);
      for (int64_t r = 0; r < m; ++r) {
        v[picked[r]] = src[b * m + r];
      }
      fwht_inplace(v.data(), block);
      const int64_t begin = b * block;
      const int64_t len = std::min(block, length - begin);
      int64_t t = 0;
#if defined(__AVX512F__)
      if (small_indices(begin, len)) {
        const __m512 scale_v = _mm512_set1_ps(scale);
        for (; t + 16 <= len; t += 16) {
          _mm512_storeu_ps(dst + begin + t, _mm512_mul_ps(signs16(static_cast<uint64_t>(seed), begin + t),
                                                          _mm512_mul_ps(_mm512_loadu_ps(v.data() + t), scale_v)));
        }
      }
#elif defined(__AVX2__)
      if (small_indices(begin, len)) {
        const __m256 scale_v = _mm256_set1_ps(scale);
        for (; t + 8 <= len; t += 8) {
          _mm256_storeu_ps(dst + begin + t, _mm256_mul_ps(signs8(static_cast<uint64_t>(seed), begin + t),
                                                          _mm256_mul_ps(_mm256_loadu_ps(v.data() + t), scale_v)));
        }
      }
#endif
      for (; t < len; ++t) {
        dst[begin + t] = random_sign(static_cast<uint64_t>(seed), begin + t) * (v[t] * scale);
      }
    }
  });
}

}  // namespace

at::Tensor srht_transpose_cpu(const at::Tensor& y, int64_t block, const at::Tensor& rows, int64_t length,
                              int64_t seed) {
  TORCH_CHECK_VALUE(length >= 0, "srht_transpose: length must be non-negative, got ", length);
  at::Tensor out = at::empty({length}, y.options());
  srht_transpose_into("srht_transpose", y, block, rows, seed, out);
  return out;
}

void srht_transpose_out_cpu(const at::Tensor& y, int64_t block, const at::Tensor& rows, int64_t seed,
                            const at::Tensor& out) {
  srht_transpose_into("srht_transpose_out", y, block, rows, seed, out);
}

TORCH_LIBRARY_IMPL(commlib, CPU, m) {
  m.impl("count_sketch_add_", &count_sketch_add_cpu);
  m.impl("count_unsketch", &count_unsketch_cpu);
  m.impl("count_unsketch_out", &count_unsketch_out_cpu);
  m.impl("srht", &srht_cpu);
  m.impl("srht_transpose", &srht_transpose_cpu);
  m.impl("srht_transpose_out", &srht_transpose_out_cpu);
}

}  // namespace commlib
