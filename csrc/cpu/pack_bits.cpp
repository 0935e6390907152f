// CPU kernels of commlib::pack_bits and commlib::unpack_bits.
//
// Both work on groups of 8 codes, which pack into exactly `bits` bytes:
//
//   pack, for each group g (in parallel over groups):
//     1. load codes 8g .. 8g+7 as one 64-bit word, code k in byte lane k;
//     2. OR the word into a running accumulator (range check, step 5);
//     3. merge neighbouring lanes three times ("SWAR"): after stage s the
//        fields of width bits * 2^(s+1) sit every 8 * 2^(s+1) bits, so after
//        stage 2 the 8 codes are 8 * bits contiguous bits at bit 0;
//     4. store the low `bits` bytes at out[bits * g];
//     5. after the loop, any accumulator bit above `bits` in a lane means a
//        code >= 2**bits: rescan (error path only) and raise naming it.
//   unpack runs the three stages backwards on `bits` loaded bytes.
//   The last n % 8 codes (the tail) are handled one code at a time.
//   bits == 8 is a copy.
//
// Words are loaded and stored little-endian (byte-swapped on a big-endian
// host), so the bytes do not depend on the host's byte order.
#include "../pack_bits.h"

#include "swar.h"

#include <atomic>
#include <cstdint>
#include <cstring>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace commlib {
namespace {

using swar::pack_range;
using swar::pack_tail;
using swar::unpack_range;
using swar::unpack_tail;

// Work below this many groups of 8 codes (256 KiB of codes) runs on one thread.
constexpr int64_t kGrainGroups = 32768;

// Packs the first 8 * groups codes in parallel; returns pack_range's overflow bits.
template <int B>
uint64_t pack_groups(const uint8_t* codes, uint8_t* out, int64_t groups) {
  std::atomic<uint64_t> overflow{0};
  at::parallel_for(0, groups, kGrainGroups, [&](int64_t begin, int64_t end) {
    overflow.fetch_or(pack_range<B>(codes, out, begin, end), std::memory_order_relaxed);
  });
  return overflow.load(std::memory_order_relaxed);
}

template <int B>
void unpack_groups(const uint8_t* packed, uint8_t* codes, int64_t groups) {
  at::parallel_for(0, groups, kGrainGroups,
                   [&](int64_t begin, int64_t end) { unpack_range<B>(packed, codes, begin, end); });
}

// Error path only: name the first code that does not fit.
[[noreturn]] void raise_code_too_large(const uint8_t* codes, int64_t n, int64_t bits) {
  for (int64_t i = 0; i < n; ++i) {
    if (codes[i] >> bits) {
      TORCH_CHECK_VALUE(false, "pack_bits: code ", static_cast<int>(codes[i]), " at index ", i, " does not fit in ",
                        bits, " bits (codes must be < ", (1 << bits), ")");
    }
  }
  TORCH_CHECK(false, "pack_bits: internal error, range check failed but every code fits");
}

}  // namespace

at::Tensor pack_bits_cpu(const at::Tensor& codes, int64_t bits) {
  check_pack_args(codes, bits);
  const int64_t n = codes.numel();
  at::Tensor out = at::empty({packed_length(n, bits)}, codes.options());
  if (n == 0) {
    return out;
  }
  if (bits == 8) {
    out.copy_(codes);
    return out;
  }
  const uint8_t* src = codes.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int64_t groups = n / 8;
  uint64_t overflow = 0;
  switch (bits) {
    case 1: overflow = pack_groups<1>(src, dst, groups); break;
    case 2: overflow = pack_groups<2>(src, dst, groups); break;
    case 4: overflow = pack_groups<4>(src, dst, groups); break;
    default: TORCH_CHECK(false, "pack_bits: unreachable bits ", bits);
  }
  overflow |= pack_tail(src, dst, 8 * groups, n, bits);
  if (overflow != 0) {
    raise_code_too_large(src, n, bits);
  }
  return out;
}

at::Tensor unpack_bits_cpu(const at::Tensor& packed, int64_t bits, int64_t n) {
  check_unpack_args(packed, bits, n);
  at::Tensor out = at::empty({n}, packed.options());
  if (n == 0) {
    return out;
  }
  if (bits == 8) {
    out.copy_(packed);
    return out;
  }
  const uint8_t* src = packed.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int64_t groups = n / 8;
  switch (bits) {
    case 1: unpack_groups<1>(src, dst, groups); break;
    case 2: unpack_groups<2>(src, dst, groups); break;
    case 4: unpack_groups<4>(src, dst, groups); break;
    default: TORCH_CHECK(false, "unpack_bits: unreachable bits ", bits);
  }
  unpack_tail(src, dst, 8 * groups, n, bits);
  return out;
}

TORCH_LIBRARY_IMPL(commlib, CPU, m) {
  m.impl("pack_bits", &pack_bits_cpu);
  m.impl("unpack_bits", &unpack_bits_cpu);
}

}  // namespace commlib
