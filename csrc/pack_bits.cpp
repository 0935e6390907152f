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
#include "pack_bits.h"

#include <atomic>
#include <cstdint>
#include <cstring>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace commlib {
namespace {

// Work below this many groups of 8 codes (256 KiB of codes) runs on one thread.
constexpr int64_t kGrainGroups = 32768;

// `width`-bit fields of ones every `period` bits across a 64-bit word.
constexpr uint64_t field_mask(int width, int period) {
  uint64_t mask = 0;
  for (int at = 0; at < 64; at += period) {
    mask |= ((width >= 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1)) << at;
  }
  return mask;
}

// The three merge stages for a width B in {1, 2, 4}.
template <int B>
struct Swar {
  static_assert(B == 1 || B == 2 || B == 4, "SWAR packing is for 1, 2 and 4 bits");
  static constexpr uint64_t kLanes = field_mask(B, 8);        // one code per byte lane
  static constexpr uint64_t kPairs = field_mask(2 * B, 16);   // after stage 0
  static constexpr uint64_t kQuads = field_mask(4 * B, 32);   // after stage 1
  static constexpr uint64_t kOctet = field_mask(8 * B, 64);   // after stage 2
  static constexpr int kShift = 8 - B;

  static inline uint64_t pack8(uint64_t x) {
    x = (x | (x >> kShift)) & kPairs;
    x = (x | (x >> (2 * kShift))) & kQuads;
    x = (x | (x >> (4 * kShift))) & kOctet;
    return x;
  }

  static inline uint64_t unpack8(uint64_t x) {
    x = (x | (x << (4 * kShift))) & kQuads;
    x = (x | (x << (2 * kShift))) & kPairs;
    x = (x | (x << kShift)) & kLanes;
    return x;
  }
};

constexpr bool kBigEndianHost =
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    true;
#else
    false;
#endif

inline uint64_t byteswap64(uint64_t x) {
  x = ((x & 0x00FF00FF00FF00FFull) << 8) | ((x >> 8) & 0x00FF00FF00FF00FFull);
  x = ((x & 0x0000FFFF0000FFFFull) << 16) | ((x >> 16) & 0x0000FFFF0000FFFFull);
  return (x << 32) | (x >> 32);
}

// NBYTES bytes at p as a little-endian integer (byte i -> bits 8i .. 8i+7).
template <int NBYTES>
inline uint64_t load_le(const uint8_t* p) {
  uint64_t x = 0;
  std::memcpy(&x, p, NBYTES);
  return kBigEndianHost ? byteswap64(x) : x;
}

// The low NBYTES bytes of x to p, least significant first.
template <int NBYTES>
inline void store_le(uint8_t* p, uint64_t x) {
  x = kBigEndianHost ? byteswap64(x) : x;
  std::memcpy(p, &x, NBYTES);
}

// Packs groups [begin, end); returns the OR of all code bits above B (non-zero
// iff some code does not fit). __restrict__ (codes and out never overlap) and
// local pointers keep the uint8_t stores from forcing reloads every iteration.
template <int B>
uint64_t pack_range(const uint8_t* __restrict__ codes, uint8_t* __restrict__ out, int64_t begin, int64_t end) {
  uint64_t seen = 0;
  for (int64_t g = begin; g < end; ++g) {
    const uint64_t x = load_le<8>(codes + 8 * g);
    seen |= x;
    store_le<B>(out + B * g, Swar<B>::pack8(x));
  }
  return seen & ~Swar<B>::kLanes;
}

template <int B>
void unpack_range(const uint8_t* __restrict__ packed, uint8_t* __restrict__ codes, int64_t begin, int64_t end) {
  for (int64_t g = begin; g < end; ++g) {
    store_le<8>(codes + 8 * g, Swar<B>::unpack8(load_le<B>(packed + B * g)));
  }
}

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

// Codes [first, n) into their bytes, one code at a time; returns the OR of the
// codes' bits above `bits`. The tail bytes are written whole (zero padding).
uint64_t pack_tail(const uint8_t* codes, uint8_t* out, int64_t first, int64_t n, int64_t bits) {
  uint64_t overflow = 0;
  const int64_t first_byte = first * bits / 8;  // first is a multiple of 8: byte aligned
  for (int64_t j = first_byte; j < packed_length(n, bits); ++j) {
    out[j] = 0;
  }
  for (int64_t i = first; i < n; ++i) {
    const uint8_t code = codes[i];
    overflow |= code >> bits;
    const int64_t bit = i * bits;
    out[bit >> 3] = static_cast<uint8_t>(out[bit >> 3] | (code << (bit & 7)));
  }
  return overflow;
}

void unpack_tail(const uint8_t* packed, uint8_t* codes, int64_t first, int64_t n, int64_t bits) {
  const unsigned mask = (1u << bits) - 1;
  for (int64_t i = first; i < n; ++i) {
    const int64_t bit = i * bits;
    codes[i] = static_cast<uint8_t>((packed[bit >> 3] >> (bit & 7)) & mask);
  }
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
