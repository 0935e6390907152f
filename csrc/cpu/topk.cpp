// CPU kernels of commlib::topk_magnitude (exact radix select) and
// commlib::topk_threshold (sampled threshold, one streaming pass). Both
// return exactly the set described in ../topk.h.
//
// topk_magnitude(x, k), two passes over x:
//   1. per chunk (in parallel), a histogram of the top 12 bits of each key,
//      and the largest key (NaN check);
//   2. from the summed histogram, the bin b holding the k-th largest key;
//      per chunk, write the indices of keys in bins above b straight to their
//      final slots ("above", offsets known from the chunk histograms) and the
//      indices in bin b to a candidate list (same);
//   3. radix-select the remaining need = k - |above| among the candidates
//      (select_among: 12, 11 and 8 bits), giving the k-th key T and how many
//      keys equal to T to take (the lowest-index ones);
//   4. merge "above" and the chosen candidates, both in index order.
//
// topk_threshold(x, k, seed), one pass over x (the DGC idea, Lin et al.,
// ICLR 2018, corrected to exactly k):
//   1. draw m = 8192 positions from the counter hash keyed by seed and take
//      the sample's r-th largest key t, with r = 1.05*m*k/d + 4*sqrt(m*k/d)
//      + 16, so that about 1.2k (k = d/10), 1.7k (d/100) or 4.4k (d/1000)
//      keys of x are >= t (the margin is fixed in sample ranks);
//   2. one pass (in parallel over chunks) collects the indices of keys >= t;
//   3. if fewer than k were collected (a bad sample), fall back to
//      topk_magnitude; otherwise every top-k entry is a candidate, so
//      select_among on the candidates gives the exact answer.
// The result never depends on the seed, only the running time does.
//
// Chunks are fixed ranges of x, each written to its own output range, so
// the result does not depend on the number of threads.
#include "../topk.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../hash.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace commlib {
namespace {

constexpr int kBits1 = 12;  // key bits 30..19
constexpr int kShift1 = 31 - kBits1;
constexpr int kBins1 = 1 << kBits1;
constexpr int kBits2 = 11;  // key bits 18..8
constexpr int kShift2 = kShift1 - kBits2;
constexpr int kBins2 = 1 << kBits2;
constexpr int kBins3 = 1 << kShift2;  // key bits 7..0

constexpr int64_t kMinChunk = 1 << 16;
constexpr int64_t kSampleSize = 1 << 13;  // drawing and selecting 2^16 took 2 ms, most of the op at d = 1M
constexpr int64_t kMinThresholdNumel = 1 << 18;
constexpr int64_t kFilterBlock = 4096;

struct Chunks {
  int64_t count;
  int64_t length;
  int64_t begin(int64_t c) const { return c * length; }
  int64_t end(int64_t c, int64_t d) const { return std::min(d, (c + 1) * length); }
};

Chunks make_chunks(int64_t d) {
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(4 * at::get_num_threads(), d / kMinChunk));
  const int64_t length = (d + wanted - 1) / wanted;
  return {(d + length - 1) / length, length};
}

// Runs fn(c) for every chunk c, in parallel.
template <typename Fn>
void for_each_chunk(const Chunks& chunks, const Fn& fn) {
  at::parallel_for(0, chunks.count, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      fn(c);
    }
  });
}

// Appends to `mid` the indices i in [begin, end) with lo <= key(x[i]) < hi,
// and to `high` those with key >= hi (when kSplit; otherwise hi is ignored).
// Both must have room for end - begin more indices. With AVX-512, 16 keys
// are compared at once and the hits written by a compress-store; with AVX2
// (and not AVX-512), 8 keys at once, and the hits of a block written one by
// one from its mask. Either way the branch on "any hit" skips most blocks,
// since hits are rare.
template <bool kSplit>
void filter_range(const float* x, int64_t begin, int64_t end, uint32_t lo, uint32_t hi, int32_t** mid,
                  int32_t** high) {
  int64_t i = begin;
  int32_t* m = *mid;
  int32_t* h = kSplit ? *high : nullptr;
#if defined(__AVX512F__)
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i v_lo = _mm512_set1_epi32(static_cast<int32_t>(lo));
  const __m512i v_hi = _mm512_set1_epi32(static_cast<int32_t>(hi));
  const __m512i step = _mm512_set1_epi32(16);
  __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(begin)),
                                 _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  for (; i + 16 <= end; i += 16) {
    const __m512i key = _mm512_and_si512(_mm512_loadu_si512(x + i), abs_mask);
    const __mmask16 at_least_lo = _mm512_cmpge_epu32_mask(key, v_lo);
    if (at_least_lo != 0) {
      const __mmask16 at_least_hi = kSplit ? _mm512_cmpge_epu32_mask(key, v_hi) : __mmask16{0};
      const __mmask16 middle = at_least_lo & static_cast<__mmask16>(~at_least_hi);
      _mm512_mask_compressstoreu_epi32(m, middle, idx);
      m += __builtin_popcount(middle);
      if (kSplit) {
        _mm512_mask_compressstoreu_epi32(h, at_least_hi, idx);
        h += __builtin_popcount(at_least_hi);
      }
    }
    idx = _mm512_add_epi32(idx, step);
  }
#elif defined(__AVX2__)
  // Keys are below 2^31 and lo, hi may not be, so the comparisons are
  // unsigned: key >= lo exactly when max(key, lo) == key.
  const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  const __m256i v_lo = _mm256_set1_epi32(static_cast<int32_t>(lo));
  const __m256i v_hi = _mm256_set1_epi32(static_cast<int32_t>(hi));
  for (; i + 8 <= end; i += 8) {
    const __m256i key = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), abs_mask);
    const __m256i ge_lo = _mm256_cmpeq_epi32(_mm256_max_epu32(key, v_lo), key);
    unsigned at_least_lo = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(ge_lo)));
    if (at_least_lo != 0) {
      unsigned at_least_hi = 0;
      if (kSplit) {
        const __m256i ge_hi = _mm256_cmpeq_epi32(_mm256_max_epu32(key, v_hi), key);
        at_least_hi = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(ge_hi)));
      }
      for (unsigned middle = at_least_lo & ~at_least_hi; middle != 0; middle &= middle - 1) {
        *m++ = static_cast<int32_t>(i + __builtin_ctz(middle));
      }
      for (; kSplit && at_least_hi != 0; at_least_hi &= at_least_hi - 1) {
        *h++ = static_cast<int32_t>(i + __builtin_ctz(at_least_hi));
      }
    }
  }
#endif
  for (; i < end; ++i) {
    const uint32_t key = magnitude_key(x[i]);
    if (key >= lo) {
      if (kSplit && key >= hi) {
        *h++ = static_cast<int32_t>(i);
      } else {
        *m++ = static_cast<int32_t>(i);
      }
    }
  }
  *mid = m;
  if (kSplit) {
    *high = h;
  }
}

[[noreturn]] void raise_nan(const char* op, const float* x, int64_t d) {
  for (int64_t i = 0; i < d; ++i) {
    if (std::isnan(x[i])) {
      TORCH_CHECK_VALUE(false, op, ": x contains NaN (first at index ", i, "); magnitudes of NaN have no order");
    }
  }
  TORCH_CHECK(false, op, ": internal error, NaN reported but none found");
}

// The first bin, scanning from the top, at which the running count reaches
// `need`; `above` receives the count in the bins above it.
int find_bin(const int64_t* hist, int bins, int64_t need, int64_t* above) {
  int64_t acc = 0;
  for (int b = bins - 1; b >= 0; --b) {
    if (acc + hist[b] >= need) {
      *above = acc;
      return b;
    }
    acc += hist[b];
  }
  TORCH_CHECK(false, "topk: internal error, fewer keys than need (", acc, " < ", need, ")");
}

// The need-th largest key among `keys` (1 <= need <= keys.size()) and the
// number of keys strictly greater than it, by three histogram levels.
std::pair<uint32_t, int64_t> select_among(std::vector<uint32_t> keys, int64_t need) {
  const int widths[3] = {kBits1, kBits2, kShift2};
  const int shifts[3] = {kShift1, kShift2, 0};
  uint32_t prefix = 0;
  int64_t greater = 0;
  std::vector<int64_t> hist(kBins1);
  for (int level = 0; level < 3; ++level) {
    const int bins = 1 << widths[level];
    const uint32_t mask = static_cast<uint32_t>(bins - 1);
    std::fill(hist.begin(), hist.begin() + bins, 0);
    for (const uint32_t key : keys) {
      ++hist[(key >> shifts[level]) & mask];
    }
    int64_t above = 0;
    const int bin = find_bin(hist.data(), bins, need, &above);
    greater += above;
    need -= above;
    prefix |= static_cast<uint32_t>(bin) << shifts[level];
    if (level < 2) {
      size_t kept = 0;
      for (const uint32_t key : keys) {
        if (((key >> shifts[level]) & mask) == static_cast<uint32_t>(bin)) {
          keys[kept++] = key;
        }
      }
      keys.resize(kept);
    }
  }
  return {prefix, greater};
}

// The keys of x at idx; raises if one is NaN.
std::vector<uint32_t> keys_of(const char* op, const float* x, const int32_t* idx, int64_t n) {
  std::vector<uint32_t> keys(n);
  uint32_t largest = 0;
  for (int64_t j = 0; j < n; ++j) {
    keys[j] = magnitude_key(x[idx[j]]);
    largest = std::max(largest, keys[j]);
  }
  if (largest > kInfKey) {
    raise_nan(op, x, static_cast<int64_t>(idx[n - 1]) + 1);
  }
  return keys;
}

std::tuple<at::Tensor, at::Tensor> allocate(const at::Tensor& x, int64_t k) {
  return {at::empty({k}, x.options()), at::empty({k}, x.options().dtype(at::kInt))};
}

void gather_values(const float* x, const int32_t* idx, float* values, int64_t k) {
  at::parallel_for(0, k, 1 << 14, [&](int64_t first, int64_t last) {
    for (int64_t j = first; j < last; ++j) {
      values[j] = x[idx[j]];
    }
  });
}

// Results for k == 0 and k == d, which need no selection; false otherwise.
bool trivial_case(const at::Tensor& x, int64_t k, std::tuple<at::Tensor, at::Tensor>* out) {
  const int64_t d = x.numel();
  if (k != 0 && k != d) {
    return false;
  }
  *out = allocate(x, k);
  const float* src = x.data_ptr<float>();
  if (std::any_of(src, src + d, [](float v) { return std::isnan(v); })) {
    raise_nan("topk", src, d);
  }
  if (k == d && d > 0) {
    std::get<0>(*out).copy_(x);
    int32_t* idx = std::get<1>(*out).data_ptr<int32_t>();
    for (int64_t i = 0; i < d; ++i) {
      idx[i] = static_cast<int32_t>(i);
    }
  }
  return true;
}

std::tuple<at::Tensor, at::Tensor> exact_topk(const at::Tensor& x, int64_t k) {
  const int64_t d = x.numel();
  const float* src = x.data_ptr<float>();
  const Chunks chunks = make_chunks(d);

  // Pass 1: per-chunk histograms of the top bits, and the largest key.
  std::vector<int64_t> hist(chunks.count * kBins1, 0);
  std::vector<uint32_t> largest(chunks.count, 0);
  for_each_chunk(chunks, [&](int64_t c) {
    std::vector<uint32_t> local(kBins1, 0);
    uint32_t top = 0;
    for (int64_t i = chunks.begin(c); i < chunks.end(c, d); ++i) {
      const uint32_t key = magnitude_key(src[i]);
      ++local[key >> kShift1];
      top = std::max(top, key);
    }
    std::copy(local.begin(), local.end(), hist.begin() + c * kBins1);
    largest[c] = top;
  });
  if (*std::max_element(largest.begin(), largest.end()) > kInfKey) {
    raise_nan("topk_magnitude", src, d);
  }
  std::vector<int64_t> total(kBins1, 0);
  for (int64_t c = 0; c < chunks.count; ++c) {
    for (int b = 0; b < kBins1; ++b) {
      total[b] += hist[c * kBins1 + b];
    }
  }
  int64_t above = 0;
  const uint32_t bin = static_cast<uint32_t>(find_bin(total.data(), kBins1, k, &above));

  // Pass 2: indices above the bin go straight to their slots; the bin's own
  // indices become candidates.
  std::vector<int64_t> above_at(chunks.count + 1, 0);
  std::vector<int64_t> cand_at(chunks.count + 1, 0);
  for (int64_t c = 0; c < chunks.count; ++c) {
    const int64_t* h = hist.data() + c * kBins1;
    above_at[c + 1] = above_at[c] + std::accumulate(h + bin + 1, h + kBins1, int64_t{0});
    cand_at[c + 1] = cand_at[c] + h[bin];
  }
  std::vector<int32_t> above_idx(above);
  std::vector<int32_t> cand(cand_at[chunks.count]);
  for_each_chunk(chunks, [&](int64_t c) {
    int32_t* up = above_idx.data() + above_at[c];
    int32_t* at = cand.data() + cand_at[c];
    filter_range<true>(src, chunks.begin(c), chunks.end(c, d), bin << kShift1, (bin + 1) << kShift1, &at, &up);
  });

  // Select the rest among the candidates, then merge in index order.
  const int64_t need = k - above;
  const auto [threshold, greater] = select_among(keys_of("topk_magnitude", src, cand.data(), cand.size()), need);
  int64_t ties = need - greater;
  size_t kept = 0;
  for (const int32_t i : cand) {
    const uint32_t key = magnitude_key(src[i]);
    if (key > threshold || (key == threshold && ties-- > 0)) {
      cand[kept++] = i;
    }
  }
  auto out = allocate(x, k);
  int32_t* idx = std::get<1>(out).data_ptr<int32_t>();
  std::merge(above_idx.begin(), above_idx.end(), cand.begin(), cand.begin() + kept, idx);
  gather_values(src, idx, std::get<0>(out).data_ptr<float>(), k);
  return out;
}

// The key t of step 1 of topk_threshold, or 0 when sampling would not pay.
uint32_t sampled_threshold(const float* x, int64_t d, int64_t k, uint64_t seed) {
  const double expected = static_cast<double>(kSampleSize) * static_cast<double>(k) / static_cast<double>(d);
  const int64_t rank = static_cast<int64_t>(std::ceil(1.05 * expected + 4.0 * std::sqrt(expected) + 16.0));
  if (rank >= kSampleSize / 8) {
    return 0;
  }
  std::vector<uint32_t> sample(kSampleSize);
  for (int64_t j = 0; j < kSampleSize; ++j) {
    const uint64_t pos = (static_cast<uint64_t>(hash32(seed, j)) * static_cast<uint64_t>(d)) >> 32;
    sample[j] = magnitude_key(x[pos]);
  }
  std::nth_element(sample.begin(), sample.begin() + (rank - 1), sample.end(), std::greater<uint32_t>());
  return sample[rank - 1];
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_magnitude_cpu(const at::Tensor& x, int64_t k) {
  check_topk_args("topk_magnitude", x, k);
  std::tuple<at::Tensor, at::Tensor> out;
  if (trivial_case(x, k, &out)) {
    return out;
  }
  return exact_topk(x, k);
}

std::tuple<at::Tensor, at::Tensor> topk_threshold_cpu(const at::Tensor& x, int64_t k, int64_t seed) {
  check_topk_args("topk_threshold", x, k);
  std::tuple<at::Tensor, at::Tensor> out;
  if (trivial_case(x, k, &out)) {
    return out;
  }
  const int64_t d = x.numel();
  const float* src = x.data_ptr<float>();
  const uint32_t threshold = d < kMinThresholdNumel ? 0 : sampled_threshold(src, d, k, static_cast<uint64_t>(seed));
  if (threshold == 0) {
    return exact_topk(x, k);
  }

  // One pass: every index whose key reaches the sampled threshold, collected
  // per chunk in blocks (each block's worst case fits before it is filtered).
  const Chunks chunks = make_chunks(d);
  std::vector<std::vector<int32_t>> found(chunks.count);
  for_each_chunk(chunks, [&](int64_t c) {
    std::vector<int32_t>& mine = found[c];
    mine.resize(2 * k / chunks.count + kFilterBlock);
    int64_t size = 0;
    for (int64_t first = chunks.begin(c); first < chunks.end(c, d); first += kFilterBlock) {
      const int64_t last = std::min(first + kFilterBlock, chunks.end(c, d));
      if (size + (last - first) > static_cast<int64_t>(mine.size())) {
        mine.resize(2 * mine.size());
      }
      int32_t* at = mine.data() + size;
      filter_range<false>(src, first, last, threshold, 0, &at, nullptr);
      size = at - mine.data();
    }
    mine.resize(size);
  });
  std::vector<int32_t> cand;
  for (const auto& part : found) {
    cand.insert(cand.end(), part.begin(), part.end());
  }
  // NaN keys exceed any threshold, so keys_of sees every NaN of x.
  const std::vector<uint32_t> keys = keys_of("topk_threshold", src, cand.data(), cand.size());
  if (static_cast<int64_t>(cand.size()) < k) {
    return exact_topk(x, k);
  }

  const auto [kth, greater] = select_among(keys, k);
  int64_t ties = k - greater;
  out = allocate(x, k);
  int32_t* idx = std::get<1>(out).data_ptr<int32_t>();
  int64_t kept = 0;
  for (const int32_t i : cand) {
    const uint32_t key = magnitude_key(src[i]);
    if (key > kth || (key == kth && ties-- > 0)) {
      idx[kept++] = i;
    }
  }
  gather_values(src, idx, std::get<0>(out).data_ptr<float>(), k);
  return out;
}

TORCH_LIBRARY_IMPL(commlib, CPU, m) {
  m.impl("topk_magnitude", &topk_magnitude_cpu);
  m.impl("topk_threshold", &topk_threshold_cpu);
}

}  // namespace commlib
