// Schemas of the commlib operator library. Kernels register per device in
// cpu/*.cpp (CPU) and cuda/*.cu (CUDA); fake (meta) kernels for
// torch.compile are registered from Python, in commlib/ops/_fake.py.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

TORCH_LIBRARY(commlib, m) {
  // x: contiguous float32, any shape. A 0-dim bool tensor: true when x holds no NaN and no +-Inf (CPU only).
  m.def("all_finite(Tensor x) -> Tensor", {at::Tag::pt2_compliant_tag});
  // codes: 1-D contiguous uint8, every code < 2**bits; bits in {1, 2, 4, 8}.
  // Returns ceil(numel * bits / 8) bytes, little-endian within a byte, tail zero-padded.
  m.def("pack_bits(Tensor codes, int bits) -> Tensor", {at::Tag::pt2_compliant_tag});
  // packed: 1-D contiguous uint8 of exactly ceil(n * bits / 8) bytes. Returns n uint8 codes.
  m.def("unpack_bits(Tensor packed, int bits, int n) -> Tensor", {at::Tag::pt2_compliant_tag});
  // x: 1-D contiguous float32 without NaN, numel < 2**31; 0 <= k <= numel. Returns the k entries of largest
  // |x| (ties to the lower index) as (float32 values, int32 indices), sorted by index.
  m.def("topk_magnitude(Tensor x, int k) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  // Same contract and result as topk_magnitude; seed only picks the sample that estimates the threshold.
  m.def("topk_threshold(Tensor x, int k, int seed) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  // Fused error feedback (see topk.h): e += g, (values, int32 indices) = topk_threshold(e, k, seed), e[indices] = 0.
  m.def("ef_topk_(Tensor(a!) e, Tensor g, int k, int seed) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  // EControl's message (see cpu/feedback.cpp): out = (g - h_local) + (eta * e), each op one float32 rounding.
  // All four contiguous float32 of one shape; out shares no memory with the inputs.
  m.def("econtrol_message(Tensor g, Tensor h_local, Tensor e, float eta, Tensor(a!) out) -> ()",
        {at::Tag::pt2_compliant_tag});
  // EControl's commit with a sparse delta: d = g - h_local; d[indices] -= values; e += d; h_local[indices] += values.
  // e, h_local, g: contiguous float32 of one shape, no shared memory; indices: 1-D int64 flat, strictly
  // increasing within [0, numel); values: float32, one per index.
  m.def("econtrol_commit_(Tensor(a!) e, Tensor(b!) h_local, Tensor g, Tensor indices, Tensor values) -> ()",
        {at::Tag::pt2_compliant_tag});
  // The mean of n sparse rows (rank r's entries at row r of indices (n, k) int32, each row strictly increasing and
  // non-negative, and values (n, k) float32): (union int64 indices, sorted; float32 (row-order sum from 0) / divisor).
  m.def("sparse_mean_rows(Tensor indices, Tensor values, int divisor) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  // x: 1-D contiguous finite float32. Returns (float32 scale per bucket, packed codes); see qsgd.h.
  m.def("qsgd_encode(Tensor x, int bucket_size, int levels, int bits, bool max_norm, int seed) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  // out += dequantized codes (out -= them with subtract: out - v, one rounding, the bits of out - decoded);
  // validates every scale and code before touching out.
  m.def("qsgd_decode_add(Tensor(a!) out, Tensor scales, Tensor packed, int bucket_size, int levels, int bits, "
        "bool subtract=False) -> ()",
        {at::Tag::pt2_compliant_tag});
  // The checks of qsgd_decode_add on a payload of n codes, without decoding it: sizes, every scale finite and
  // non-negative, every code <= 2 * levels (ValueError otherwise).
  m.def("qsgd_check(Tensor scales, Tensor packed, int n, int bucket_size, int levels, int bits) -> ()",
        {at::Tag::pt2_compliant_tag});
  // Count sketch (see sketch.h): table (rows, cols) float32 += sketch of x at global indices offset + [0, numel).
  m.def("count_sketch_add_(Tensor(a!) table, Tensor x, int seed, int offset) -> ()", {at::Tag::pt2_compliant_tag});
  // Median-of-rows estimates of the elements at global indices offset + [0, length).
  m.def("count_unsketch(Tensor table, int seed, int offset, int length) -> Tensor", {at::Tag::pt2_compliant_tag});
  // The same estimates for length = out.numel(), written into out (contiguous 1-D float32, no memory shared with
  // table).
  m.def("count_unsketch_out(Tensor table, int seed, int offset, Tensor(a!) out) -> ()", {at::Tag::pt2_compliant_tag});
  // Blockwise SRHT of 1-D float32 x: (ceil(numel / block), rows.numel()) coefficients.
  m.def("srht(Tensor x, int block, Tensor rows, int seed) -> Tensor", {at::Tag::pt2_compliant_tag});
  // Its transpose: length elements from (ceil(length / block), rows.numel()) coefficients.
  m.def("srht_transpose(Tensor y, int block, Tensor rows, int length, int seed) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // The same for length = out.numel(), written into out (contiguous 1-D float32, no memory shared with y).
  m.def("srht_transpose_out(Tensor y, int block, Tensor rows, int seed, Tensor(a!) out) -> ()",
        {at::Tag::pt2_compliant_tag});
}
