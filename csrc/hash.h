// Counter-based hashing shared by the CPU and CUDA kernels and mirrored
// bit for bit by commlib/ops/reference.py (which does the same 32-bit
// arithmetic in int64 tensors).
//
//   fmix32      MurmurHash3's 32-bit finaliser (a bijection with full
//               avalanche).
//   hash32      the random word for counter i under a 64-bit key:
//                 h = fmix32((uint32)i * 0x9E3779B1 + key_lo)
//                 h = fmix32(h ^ key_hi ^ (uint32)(i >> 32) * 0x85EBCA77)
//   uniform24   h >> 8 as a float in [0, 1) with 24 random bits (exact in
//               float32, so CPU, CUDA and the reference compare it alike).
//
// Stateless: the value for counter i does not depend on how the work is
// split across threads or blocks, which is what makes the kernels'
// randomness deterministic and identical across backends.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define COMMLIB_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define COMMLIB_HOST_DEVICE inline
#endif

namespace commlib {

COMMLIB_HOST_DEVICE uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

COMMLIB_HOST_DEVICE uint32_t hash32(uint64_t key, uint64_t i) {
  const uint32_t key_lo = static_cast<uint32_t>(key);
  const uint32_t key_hi = static_cast<uint32_t>(key >> 32);
  uint32_t h = fmix32(static_cast<uint32_t>(i) * 0x9E3779B1u + key_lo);
  return fmix32(h ^ key_hi ^ (static_cast<uint32_t>(i >> 32) * 0x85EBCA77u));
}

// hash32(key, i) for a counter i < 2**32, with the key split once by the
// caller (the high-counter term is then zero): cheaper in vectorized loops.
COMMLIB_HOST_DEVICE uint32_t hash32_small(uint32_t key_lo, uint32_t key_hi, uint32_t i) {
  return fmix32(fmix32(i * 0x9E3779B1u + key_lo) ^ key_hi);
}

COMMLIB_HOST_DEVICE float uniform24(uint32_t h) {
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

}  // namespace commlib
