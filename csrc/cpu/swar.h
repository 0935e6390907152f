// Bit-packing building blocks of the CPU kernels (pack_bits.cpp, qsgd.cpp):
// groups of 8 codes pack into exactly `bits` bytes by SWAR lane merging, and
// the tail (n % 8 codes) one code at a time. Layout: ../pack_bits.h.
#pragma once

#include <cstdint>
#include <cstring>

#include "../pack_bits.h"

namespace commlib {
namespace swar {

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
inline uint64_t pack_range(const uint8_t* __restrict__ codes, uint8_t* __restrict__ out, int64_t begin, int64_t end) {
  uint64_t seen = 0;
  for (int64_t g = begin; g < end; ++g) {
    const uint64_t x = load_le<8>(codes + 8 * g);
    seen |= x;
    store_le<B>(out + B * g, Swar<B>::pack8(x));
  }
  return seen & ~Swar<B>::kLanes;
}

template <int B>
inline void unpack_range(const uint8_t* __restrict__ packed, uint8_t* __restrict__ codes, int64_t begin, int64_t end) {
  for (int64_t g = begin; g < end; ++g) {
    store_le<8>(codes + 8 * g, Swar<B>::unpack8(load_le<B>(packed + B * g)));
  }
}

// Codes [first, n) into their bytes, one code at a time; returns the OR of the
// codes' bits above `bits`. The tail bytes are written whole (zero padding).
inline uint64_t pack_tail(const uint8_t* codes, uint8_t* out, int64_t first, int64_t n, int64_t bits) {
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

inline void unpack_tail(const uint8_t* packed, uint8_t* codes, int64_t first, int64_t n, int64_t bits) {
  const unsigned mask = (1u << bits) - 1;
  for (int64_t i = first; i < n; ++i) {
    const int64_t bit = i * bits;
    codes[i] = static_cast<uint8_t>((packed[bit >> 3] >> (bit & 7)) & mask);
  }
}

// Whether every code of `n` packed at `packed` with B bits (1, 2 or 4) is at
// most max_code; the padding bits after code n - 1 are not read as codes.
// Each B-bit field is moved to a byte lane, where adding 2^B - 1 - max_code
// carries into bit B exactly when the field exceeds max_code (at most
// 2^(B+1) - 2 < 256: no carry leaves the lane). Branch-free over whole words.
template <int B>
inline bool codes_at_most(const uint8_t* packed, int64_t n, unsigned max_code) {
  static_assert(B == 1 || B == 2 || B == 4, "codes_at_most is for 1, 2 and 4 bits");
  constexpr uint64_t kLanes = field_mask(B, 8);
  constexpr uint64_t kCarry = kLanes + field_mask(1, 8);  // bit B of every byte lane: lane mask + 1
  if (max_code >= (1u << B) - 1) {
    return true;
  }
  const uint64_t add = (uint64_t{(1u << B) - 1 - max_code}) * field_mask(1, 8);
  const int64_t whole_bytes = n * B / 8;  // bytes whose every code is below n
  uint64_t over = 0;
  int64_t i = 0;
  for (; i + 8 <= whole_bytes; i += 8) {
    const uint64_t word = load_le<8>(packed + i);
    for (int shift = 0; shift < 8; shift += B) {
      over |= (((word >> shift) & kLanes) + add) & kCarry;
    }
  }
  for (int64_t code = i * 8 / B; code < n; ++code) {  // the last bytes, one code at a time
    const int64_t bit = code * B;
    over |= ((packed[bit >> 3] >> (bit & 7)) & ((1u << B) - 1)) > max_code;
  }
  return over == 0;
}

}  // namespace swar
}  // namespace commlib
