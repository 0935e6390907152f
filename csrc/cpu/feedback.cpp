// CPU kernels of error feedback with a sparse compressor (contracts in ../ops.cpp; pure-torch twins in
// commlib/ops/reference.py, which they equal bit for bit):
//
//   econtrol_message   out = (g - h) + (eta * e)                       one pass (EControl's u, Gao et al. 2024)
//   econtrol_commit_   e += (g - h) - delta;  h += delta               one pass; delta sparse (sorted flat indices)
//   sparse_mean_rows   the mean of n sparse rows, summed in row order  chunk by chunk of the index range, in a
//                      (their union, no dense d-sized tensor)           cache-resident accumulator and bitmap
//
// Every float operation is one rounding, in the order written (the build passes -ffp-contract=off), so the
// results are those of the separate torch ops and do not depend on the thread count or the chunking.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace commlib {
namespace {

constexpr int64_t kGrain = int64_t{1} << 16;  // elements per parallel chunk, at least
constexpr int kChunkBits = 12;                 // sparse_mean_rows sums indices [c * 4096, (c + 1) * 4096) at a time
constexpr int64_t kChunk = int64_t{1} << kChunkBits;
constexpr int64_t kMeanParts = 64;             // ranges of chunks summed independently (in parallel)

void check_dense(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
  TORCH_CHECK_VALUE(t.sizes() == like.sizes(), op, ": ", name, " has shape ", t.sizes(), ", expected ",
                    like.sizes());
}

bool overlap(const at::Tensor& a, const at::Tensor& b) {
  const auto* a_lo = static_cast<const char*>(a.data_ptr());
  const auto* b_lo = static_cast<const char*>(b.data_ptr());
  return a_lo < b_lo + b.nbytes() && b_lo < a_lo + a.nbytes();
}

// out[i] = (g[i] - h[i]) + (eta * e[i]) over [begin, end); restrict: the four do not overlap (checked).
void message_range(float* __restrict__ out, const float* __restrict__ g, const float* __restrict__ h,
                   const float* __restrict__ e, float eta, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float d = g[i] - h[i];
    const float t = eta * e[i];
    out[i] = d + t;
  }
}

void econtrol_message_cpu(const at::Tensor& g, const at::Tensor& h, const at::Tensor& e, double eta,
                          const at::Tensor& out) {
  for (auto [name, t] : {std::pair{"g", &g}, std::pair{"h_local", &h}, std::pair{"e", &e}, std::pair{"out", &out}}) {
    check_dense("econtrol_message", name, *t, g);
  }
  TORCH_CHECK_VALUE(!overlap(out, g) && !overlap(out, h) && !overlap(out, e),
                    "econtrol_message: out must not share memory with g, h_local or e");
  const float* gp = g.data_ptr<float>();
  const float* hp = h.data_ptr<float>();
  const float* ep = e.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float eta_f = static_cast<float>(eta);  // torch's scalar for a float32 op
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
    message_range(op, gp, hp, ep, eta_f, begin, end);
  });
}

// e[i] += g[i] - h[i] over [begin, end): the stretch between two kept entries.
inline void add_difference(float* __restrict__ e, const float* __restrict__ g, const float* __restrict__ h,
                           int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    e[i] = e[i] + (g[i] - h[i]);
  }
}

// Strictly increasing within [0, n): else the kernel would write out of bounds or twice.
void check_sorted_indices(const char* op, const int64_t* idx, int64_t k, int64_t n) {
  for (int64_t t = 0; t < k; ++t) {
    TORCH_CHECK_VALUE(idx[t] >= 0 && idx[t] < n, op, ": index ", idx[t], " at position ", t, " is outside [0, ", n,
                      ")");
    TORCH_CHECK_VALUE(t == 0 || idx[t] > idx[t - 1], op, ": indices must be strictly increasing, got ", idx[t - 1],
                      " then ", idx[t]);
  }
}

void econtrol_commit_cpu(const at::Tensor& e, const at::Tensor& h, const at::Tensor& g, const at::Tensor& indices,
                         const at::Tensor& values) {
  check_dense("econtrol_commit_", "g", g, e);
  check_dense("econtrol_commit_", "e", e, e);
  check_dense("econtrol_commit_", "h_local", h, e);
  TORCH_CHECK_VALUE(!overlap(e, h) && !overlap(e, g) && !overlap(h, g),
                    "econtrol_commit_: e, h_local and g must not share memory");
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kLong && indices.dim() == 1 && indices.is_contiguous(),
                    "econtrol_commit_: indices must be a contiguous 1-D int64 tensor");
  TORCH_CHECK_VALUE(values.scalar_type() == at::kFloat && values.dim() == 1 && values.is_contiguous(),
                    "econtrol_commit_: values must be a contiguous 1-D float32 tensor");
  TORCH_CHECK_VALUE(values.numel() == indices.numel(), "econtrol_commit_: ", indices.numel(), " indices but ",
                    values.numel(), " values");
  const int64_t n = e.numel();
  const int64_t k = indices.numel();
  const int64_t* idx = indices.data_ptr<int64_t>();
  const float* val = values.data_ptr<float>();
  check_sorted_indices("econtrol_commit_", idx, k, n);
  float* ep = e.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    int64_t t = std::lower_bound(idx, idx + k, begin) - idx;  // first kept entry in this chunk
    int64_t i = begin;
    for (; t < k && idx[t] < end; ++t) {
      const int64_t kept = idx[t];
      add_difference(ep, gp, hp, i, kept);
      const float d = (gp[kept] - hp[kept]) - val[t];  // the old h, then h moves by the kept value
      hp[kept] = hp[kept] + val[t];
      ep[kept] = ep[kept] + d;
      i = kept + 1;
    }
    add_difference(ep, gp, hp, i, end);
  });
}

// The union and mean of the rows' entries with indices in chunks [chunk_begin, chunk_end), written to out_idx and
// out_val in index order; returns how many. Chunk by chunk (only chunks some row has entries in): every row in rank
// order adds its entries into a zeroed chunk-sized accumulator and marks them in a bitmap; the marked positions are
// then emitted in order, divided, and cleared. So each union entry is (0 + v_first + ... + v_last) / divisor.
int64_t mean_of_chunks(const int32_t* key, const float* val, int64_t rows, int64_t k, int64_t chunk_begin,
                       int64_t chunk_end, float divisor, int64_t* out_idx, float* out_val) {
  std::vector<int64_t> pos(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = key + r * k;
    pos[r] = std::lower_bound(row, row + k, chunk_begin << kChunkBits) - row;
  }
  std::vector<float> acc(kChunk, 0.0f);
  std::vector<uint64_t> marked(kChunk / 64, 0);
  int64_t written = 0;
  while (true) {
    int64_t chunk = chunk_end;  // the next chunk holding an entry: the least pending index's
    for (int64_t r = 0; r < rows; ++r) {
      if (pos[r] < k) {
        chunk = std::min<int64_t>(chunk, key[r * k + pos[r]] >> kChunkBits);
      }
    }
    if (chunk >= chunk_end) {
      return written;
    }
    const int64_t base = chunk << kChunkBits;
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t* row = key + r * k;
      const float* row_val = val + r * k;
      int64_t p = pos[r];
      for (; p < k && row[p] < base + kChunk; ++p) {
        const int64_t j = row[p] - base;
        acc[j] = acc[j] + row_val[p];
        marked[j >> 6] |= uint64_t{1} << (j & 63);
      }
      pos[r] = p;
    }
    for (int64_t w = 0; w < kChunk / 64; ++w) {
      for (uint64_t word = marked[w]; word != 0; word &= word - 1) {
        const int64_t j = w * 64 + __builtin_ctzll(word);
        out_idx[written] = base + j;
        out_val[written++] = acc[j] / divisor;
        acc[j] = 0.0f;
      }
      marked[w] = 0;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> sparse_mean_rows_cpu(const at::Tensor& indices, const at::Tensor& values,
                                                        int64_t divisor) {
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kInt && indices.dim() == 2 && indices.is_contiguous(),
                    "sparse_mean_rows: indices must be a contiguous 2-D int32 tensor (one row per rank)");
  TORCH_CHECK_VALUE(values.scalar_type() == at::kFloat && values.dim() == 2 && values.is_contiguous(),
                    "sparse_mean_rows: values must be a contiguous 2-D float32 tensor (one row per rank)");
  TORCH_CHECK_VALUE(values.sizes() == indices.sizes(), "sparse_mean_rows: indices ", indices.sizes(),
                    " and values ", values.sizes(), " differ in shape");
  TORCH_CHECK_VALUE(divisor >= 1, "sparse_mean_rows: divisor must be positive, got ", divisor);
  const int64_t rows = indices.size(0);
  const int64_t k = indices.size(1);
  const int32_t* key = indices.data_ptr<int32_t>();
  const float* val = values.data_ptr<float>();
  int64_t top = -1;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = key + r * k;
    for (int64_t t = 0; t < k; ++t) {
      TORCH_CHECK_VALUE(row[t] >= 0, "sparse_mean_rows: negative index ", row[t], " in row ", r);
      TORCH_CHECK_VALUE(t == 0 || row[t] > row[t - 1], "sparse_mean_rows: row ", r,
                        " is not strictly increasing (", row[t - 1], " then ", row[t], ")");
    }
    if (k > 0) {
      top = std::max<int64_t>(top, row[k - 1]);
    }
  }
  // Fixed parts of the chunk range (not the thread count's): each part's output is the same on any thread. A part
  // writes at the offset its entries would have without duplicates, then the parts are moved together: no
  // intermediate buffers (on CPU, fresh memory costs its page faults, often more than the sums).
  const int64_t chunks = top < 0 ? 0 : (top >> kChunkBits) + 1;
  const int64_t parts = std::min<int64_t>(chunks, kMeanParts);
  std::vector<int64_t> offset(parts + 1, 0);
  for (int64_t q = 0; q < parts; ++q) {
    const int64_t end_index = (chunks * (q + 1) / parts) << kChunkBits;
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t* row = key + r * k;
      offset[q + 1] += std::lower_bound(row, row + k, end_index) - row;  // entries below the part's end
    }
  }
  at::Tensor out_idx = at::empty({rows * k}, indices.options().dtype(at::kLong));
  at::Tensor out_val = at::empty({rows * k}, values.options());
  int64_t* oi = out_idx.data_ptr<int64_t>();
  float* ov = out_val.data_ptr<float>();
  std::vector<int64_t> written(parts, 0);
  const float scale = static_cast<float>(divisor);
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      written[q] = mean_of_chunks(key, val, rows, k, chunks * q / parts, chunks * (q + 1) / parts, scale,
                                  oi + offset[q], ov + offset[q]);
    }
  });
  int64_t unique = 0;
  for (int64_t q = 0; q < parts; ++q) {  // left moves: every destination lies at or before its source
    std::memmove(oi + unique, oi + offset[q], written[q] * sizeof(int64_t));
    std::memmove(ov + unique, ov + offset[q], written[q] * sizeof(float));
    unique += written[q];
  }
  out_idx.resize_({unique});
  out_val.resize_({unique});
  return {out_idx, out_val};
}

}  // namespace

TORCH_LIBRARY_IMPL(commlib, CPU, m) {
  m.impl("econtrol_message", &econtrol_message_cpu);
  m.impl("econtrol_commit_", &econtrol_commit_cpu);
  m.impl("sparse_mean_rows", &sparse_mean_rows_cpu);
}

}  // namespace commlib
