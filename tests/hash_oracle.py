"""Plain-Python oracles of ``csrc/hash.h`` (MurmurHash3's finaliser, the counter hash, the stream hash)."""

from __future__ import annotations

M32 = 0xFFFFFFFF


def py_fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def py_hash32(key: int, i: int) -> int:
    key &= 2**64 - 1
    h = py_fmix32(((i & M32) * 0x9E3779B1 + (key & M32)) & M32)
    return py_fmix32(h ^ (key >> 32) ^ (((i >> 32) * 0x85EBCA77) & M32))


def py_stream_hash(seed: int, i: int) -> int:
    seed &= 2**64 - 1
    key32 = py_fmix32((seed & M32) ^ py_fmix32((seed >> 32) ^ 0x5BD1E995))
    return py_fmix32((i * 0x9E3779B1 + key32) & M32)
