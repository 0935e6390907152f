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
//   stream_key32, hash32_stream
//               a cheaper stream for hot loops whose counters fit 32 bits
//               (QSGD's coins): the 64-bit key is folded once,
//                 k = fmix32(key_lo ^ fmix32(key_hi ^ 0x5BD1E995)),
//               and counter i gets one finaliser round of a Weyl sequence,
//                 h = fmix32(i * 0x9E3779B1 + k)
//               (SplitMix's construction; half hash32's multiplies).
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

COMMLIB_HOST_DEVICE uint32_t stream_key32(uint64_t key) {
  return fmix32(static_cast<uint32_t>(key) ^ fmix32(static_cast<uint32_t>(key >> 32) ^ 0x5BD1E995u));
}

COMMLIB_HOST_DEVICE uint32_t hash32_stream(uint32_t key32, uint32_t i) { return fmix32(i * 0x9E3779B1u + key32); }

COMMLIB_HOST_DEVICE float uniform24(uint32_t h) {
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

}  // namespace commlib
