// CPU kernels of the sketching ops (math in ../sketch.h).
//
// count_sketch_add_: rows are independent, so threads take whole rows and
//   each row is accumulated in index order (the same order as the
//   reference's per-row index_add_).
// count_unsketch: in parallel over chunks of elements; the r signed counters
//   of a chunk are stored row-major (r rows of the chunk's length), sorted
//   column-wise by odd-even transposition (r rounds of compare-exchanges
//   between neighbouring rows, each a vectorized min/max over the chunk), and
//   the lower median's row copied out. The table must be finite, so min/max
//   order like a sort.
// srht / srht_transpose: in parallel over blocks; each block is transformed
//   in a thread-local buffer with the iterative butterfly (stage h pairs
//   element t with t + h inside runs of 2h), whose inner loop over a run is
//   contiguous and vectorizes for h >= 8.
#include "../sketch.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace commlib {
namespace {

void check_float_vector(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.is_contiguous(), op, ": ", name, " must be a contiguous 1-D tensor");
}

// In-place unnormalized Walsh-Hadamard transform of v[0, n), n a power of 2.
void fwht_inplace(float* __restrict__ v, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2) {
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
}

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

#if defined(__AVX512F__)
// The Mersenne reduction of sketch.h on 8 lanes: two folds, then min(x, x - P)
// (x - P wraps around to a huge value when x < P).
inline __m512i mod_mersenne31_x8(__m512i x) {
  const __m512i p = _mm512_set1_epi64(static_cast<int64_t>(kSketchPrime));
  x = _mm512_add_epi64(_mm512_and_si512(x, p), _mm512_srli_epi64(x, 31));
  x = _mm512_add_epi64(_mm512_and_si512(x, p), _mm512_srli_epi64(x, 31));
  return _mm512_min_epu64(x, _mm512_sub_epi64(x, p));
}

// (c * i + d) mod P on 8 lanes; c and i < 2^31, so one 32 x 32 -> 64-bit multiply.
inline __m512i mul_add_mod_x8(__m512i c, __m512i i, __m512i d) {
  return mod_mersenne31_x8(_mm512_add_epi64(_mm512_mul_epu32(c, i), d));
}
#endif

// Buckets and signed values of len consecutive global indices first.. of one
// row: value[t] = sign(first + t) * x[t], or the bare sign when x is null.
// With AVX-512, 8 indices at a time with vpmuludq (32 x 32 -> 64-bit
// products); the scalar loop finishes the chunk, and both compute sketch.h's
// formulas exactly.
void hash_chunk(const CountSketchRow& h, uint64_t cols, uint64_t first, int64_t len, const float* __restrict__ x,
                int32_t* __restrict__ bucket, float* __restrict__ value) {
  int64_t t = 0;
#if defined(__AVX512F__)
  const __m512i a = _mm512_set1_epi64(static_cast<int64_t>(h.a));
  const __m512i b = _mm512_set1_epi64(static_cast<int64_t>(h.b));
  const __m512i c0 = _mm512_set1_epi64(static_cast<int64_t>(h.c0));
  const __m512i c1 = _mm512_set1_epi64(static_cast<int64_t>(h.c1));
  const __m512i c2 = _mm512_set1_epi64(static_cast<int64_t>(h.c2));
  const __m512i c3 = _mm512_set1_epi64(static_cast<int64_t>(h.c3));
  const __m512i n_cols = _mm512_set1_epi64(static_cast<int64_t>(cols));
  const __m512i one = _mm512_set1_epi64(1);
  const __m256 plus = _mm256_set1_ps(1.0f);
  const __m256 minus = _mm256_set1_ps(-1.0f);
  __m512i i = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(first)),
                               _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  const __m512i eight = _mm512_set1_epi64(8);
  for (; t + 8 <= len; t += 8) {
    const __m512i hashed = mul_add_mod_x8(a, i, b);
    const __m512i bkt = _mm512_srli_epi64(_mm512_mul_epu32(hashed, n_cols), 31);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bucket + t), _mm512_cvtepi64_epi32(bkt));
    __m512i g = mul_add_mod_x8(c3, i, c2);
    g = mul_add_mod_x8(g, i, c1);
    g = mul_add_mod_x8(g, i, c0);
    const __mmask8 odd = _mm512_test_epi64_mask(g, one);
    __m256 sign = _mm256_mask_blend_ps(odd, plus, minus);
    if (x != nullptr) {
      sign = _mm256_mul_ps(sign, _mm256_loadu_ps(x + t));
    }
    _mm256_storeu_ps(value + t, sign);
    i = _mm512_add_epi64(i, eight);
  }
#endif
  for (; t < len; ++t) {
    const uint64_t at = first + static_cast<uint64_t>(t);
    bucket[t] = static_cast<int32_t>(h.bucket(at, cols));
    value[t] = x == nullptr ? h.sign(at) : h.sign(at) * x[t];
  }
}

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
  // Small inputs stay on one thread: waking a pool costs more than the work.
  at::parallel_for(0, rows, rows * n < kParallelElements ? rows : 1, [&](int64_t first, int64_t last) {
    std::vector<int32_t> bucket(kHashChunk);
    std::vector<float> value(kHashChunk);
    for (int64_t j = first; j < last; ++j) {
      const CountSketchRow h = CountSketchRow::make(static_cast<uint64_t>(seed), j);
      float* row = dst + j * static_cast<int64_t>(cols);
      for (int64_t begin = 0; begin < n; begin += kHashChunk) {
        const int64_t len = std::min(kHashChunk, n - begin);
        hash_chunk(h, cols, static_cast<uint64_t>(offset + begin), len, src + begin, bucket.data(), value.data());
        for (int64_t t = 0; t < len; ++t) {
          row[bucket[t]] += value[t];
        }
      }
    }
  });
}

at::Tensor count_unsketch_cpu(const at::Tensor& table, int64_t seed, int64_t offset, int64_t length) {
  const char* op = "count_unsketch";
  check_sketch_table(op, table);
  check_sketch_range(op, offset, length);
  const int64_t rows = table.size(0);
  const uint64_t cols = static_cast<uint64_t>(table.size(1));
  const float* cells = table.data_ptr<float>();
  TORCH_CHECK_VALUE(std::all_of(cells, cells + table.numel(), [](float v) { return std::isfinite(v); }), op,
                    ": the table holds NaN or Inf");
  at::Tensor out = at::empty({length}, table.options());
  std::vector<CountSketchRow> hashes(rows);
  for (int64_t j = 0; j < rows; ++j) {
    hashes[j] = CountSketchRow::make(static_cast<uint64_t>(seed), j);
  }
  const float* src = table.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t chunks = (length + kHashChunk - 1) / kHashChunk;
  at::parallel_for(0, chunks, std::max<int64_t>(1, kParallelElements / (rows * kHashChunk)),
                   [&](int64_t first, int64_t last) {
    std::vector<int32_t> bucket(kHashChunk);
    std::vector<float> votes(rows * kHashChunk);
    for (int64_t c = first; c < last; ++c) {
      const int64_t begin = c * kHashChunk;
      const int64_t len = std::min(kHashChunk, length - begin);
      for (int64_t j = 0; j < rows; ++j) {
        float* vote = votes.data() + j * kHashChunk;
        hash_chunk(hashes[j], cols, static_cast<uint64_t>(offset + begin), len, nullptr, bucket.data(), vote);
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
      for (int64_t t = 0; t < len; ++t) {
        v[t] = random_sign(static_cast<uint64_t>(seed), begin + t) * src[begin + t];
      }
      std::fill(v.begin() + len, v.end(), 0.0f);
      fwht_inplace(v.data(), block);
      for (int64_t r = 0; r < m; ++r) {
        dst[b * m + r] = v[picked[r]] * scale;
      }
    }
  });
  return out;
}

at::Tensor srht_transpose_cpu(const at::Tensor& y, int64_t block, const at::Tensor& rows, int64_t length,
                              int64_t seed) {
  const char* op = "srht_transpose";
  check_srht_args(op, block, rows);
  const std::vector<int64_t> picked = checked_rows(op, rows, block);
  const int64_t m = static_cast<int64_t>(picked.size());
  TORCH_CHECK_VALUE(length >= 0, op, ": length must be non-negative, got ", length);
  const int64_t blocks = (length + block - 1) / block;
  TORCH_CHECK_VALUE(y.scalar_type() == at::kFloat && y.dim() == 2 && y.is_contiguous(), op,
                    ": y must be a contiguous 2-D float32 tensor");
  TORCH_CHECK_VALUE(y.size(0) == blocks && y.size(1) == m, op, ": y must have shape (", blocks, ", ", m,
                    ") for length ", length, ", block ", block, " and ", m, " rows, got ", y.sizes());
  at::Tensor out = at::empty({length}, y.options());
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
      for (int64_t t = 0; t < len; ++t) {
        dst[begin + t] = random_sign(static_cast<uint64_t>(seed), begin + t) * (v[t] * scale);
      }
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(commlib, CPU, m) {
  m.impl("count_sketch_add_", &count_sketch_add_cpu);
  m.impl("count_unsketch", &count_unsketch_cpu);
  m.impl("srht", &srht_cpu);
  m.impl("srht_transpose", &srht_transpose_cpu);
}

}  // namespace commlib
