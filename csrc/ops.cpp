// Schemas of the commlib operator library. Kernels register per device in
// pack_bits.cpp (CPU) and cuda/pack_bits.cu (CUDA); fake (meta) kernels for
// torch.compile are registered from Python, in commlib/ops/_fake.py.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

TORCH_LIBRARY(commlib, m) {
  // codes: 1-D contiguous uint8, every code < 2**bits; bits in {1, 2, 4, 8}.
  // Returns ceil(numel * bits / 8) bytes, little-endian within a byte, tail zero-padded.
  m.def("pack_bits(Tensor codes, int bits) -> Tensor", {at::Tag::pt2_compliant_tag});
  // packed: 1-D contiguous uint8 of exactly ceil(n * bits / 8) bytes. Returns n uint8 codes.
  m.def("unpack_bits(Tensor packed, int bits, int n) -> Tensor", {at::Tag::pt2_compliant_tag});
}
