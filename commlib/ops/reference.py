"""Pure-torch reference kernels: the fallback when ``commlib._C`` is absent, the oracle of the C++/CUDA kernels.

Bit layout of :func:`pack_bits` (little-endian within a byte): code ``i`` of
width ``b`` occupies bits ``(i*b) % 8 …`` of byte ``(i*b) // 8``. For ``b = 1``
that is ``numpy.packbits(…, bitorder="little")``. The tail byte is zero-padded.

Randomness inside kernels comes from :func:`hash32`, a counter-based hash
(``csrc/hash.h``) computed here with 32-bit arithmetic in int64 tensors, so
the reference and the kernels draw the same bits for the same counter.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "SUPPORTED_BITS",
    "all_finite",
    "count_sketch_add_",
    "count_sketch_hashes",
    "count_unsketch",
    "econtrol_commit_",
    "econtrol_message",
    "ef_topk_",
    "hash32",
    "hash32_stream",
    "pack_bits",
    "packed_length",
    "sparse_mean_rows",
    "qsgd_check",
    "qsgd_decode_add",
    "qsgd_encode",
    "srht",
    "srht_transpose",
    "stream_key32",
    "topk_magnitude",
    "topk_threshold",
    "uniform24",
    "unpack_bits",
]

SUPPORTED_BITS = (1, 2, 4, 8)


def all_finite(t: Tensor) -> bool:
    """True when floating or complex ``t`` holds no NaN and no ±Inf: one ``aminmax`` pass (NaN reaches the
    min and the max, ±Inf one of them), allocating nothing of ``t``'s size."""
    if t.numel() == 0:
        return True
    if t.is_complex():
        t = torch.view_as_real(t)
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def _check_bits(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    return bits


def packed_length(n: int, bits: int) -> int:
    """Bytes needed to pack ``n`` codes of ``bits`` bits each."""
    _check_bits(bits)
    if n < 0:
        raise ValueError(f"length must be non-negative, got {n}")
    return (n * bits + 7) // 8


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack a 1-D uint8 tensor of codes (each ``< 2**bits``) into ``packed_length(n, bits)`` bytes.

    Steps: pad the codes to a multiple of ``8 // bits``, view them as rows of
    ``8 // bits`` codes, shift code ``j`` of each row left by ``j * bits`` and
    OR the row into one byte.
    """
    _check_bits(bits)
    if codes.dtype != torch.uint8 or codes.dim() != 1:
        raise ValueError(f"pack_bits expects a 1-D uint8 tensor, got {codes.dtype} of shape {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) >= (1 << bits):
        raise ValueError(f"a code does not fit in {bits} bits (max {int(codes.max())})")
    if bits == 8:
        return codes.clone()
    per_byte = 8 // bits
    n = codes.numel()
    pad = (-n) % per_byte
    padded = torch.cat([codes, codes.new_zeros(pad)]) if pad else codes
    rows = padded.view(-1, per_byte).to(torch.int32)
    shifts = torch.arange(per_byte, dtype=torch.int32, device=codes.device) * bits
    return (rows << shifts).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes of ``packed`` as a uint8 tensor."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"unpack_bits expects a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if packed.numel() != packed_length(n, bits):
        raise ValueError(f"{n} codes of {bits} bits need {packed_length(n, bits)} bytes, got {packed.numel()}")
    if bits == 8:
        return packed.clone()
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.int32, device=packed.device) * bits
    codes = (packed.to(torch.int32).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n].to(torch.uint8)


def _check_topk(x: Tensor, k: int) -> None:
    if x.dim() != 1:
        raise ValueError(f"topk expects a 1-D tensor, got shape {tuple(x.shape)}")
    d = x.numel()
    if d > _INT32_MAX:
        raise ValueError(f"topk: indices are int32, so x may have at most 2**31 - 1 elements, got {d}")
    if not 0 <= k <= d:
        raise ValueError(f"topk: k must be in [0, {d}], got {k}")
    if x.is_floating_point() and bool(torch.isnan(x).any()):
        first = int(torch.isnan(x).nonzero()[0, 0])
        raise ValueError(f"topk: x contains NaN (first at index {first}); magnitudes of NaN have no order")


def topk_magnitude(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` entries of 1-D ``x`` largest in magnitude, as ``(values, int32 indices)`` sorted by index.

    Ties at the k-th magnitude go to the lower index, so the selected set is a
    function of ``x`` alone (``torch.topk`` leaves tie order unspecified);
    ``-0.0`` ties with ``+0.0``, infinities are the largest magnitudes, and a
    NaN raises ``ValueError``. Steps: find the k-th largest magnitude ``t``
    (``kthvalue``), keep every entry above ``t``, then fill up with the
    lowest-index entries equal to ``t``.
    """
    _check_topk(x, k)
    d = x.numel()
    if k == 0:
        return x.new_empty(0), torch.empty(0, dtype=torch.int32, device=x.device)
    if k == d:
        return x.clone(), torch.arange(d, dtype=torch.int32, device=x.device)
    mag = x.abs()
    t = torch.kthvalue(mag, d - k + 1).values
    above = (mag > t).nonzero().squeeze(1)
    ties = (mag == t).nonzero().squeeze(1)[: k - above.numel()]
    idx = torch.cat([above, ties]).sort().values
    return x[idx], idx.to(torch.int32)


def topk_threshold(x: Tensor, k: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Same contract and result as :func:`topk_magnitude`.

    The kernel estimates the k-th magnitude from a sample drawn with ``seed``
    and selects in one streaming pass, then corrects to exactly ``k``; the
    seed changes only its running time, never its result, so the reference
    is :func:`topk_magnitude`.
    """
    return topk_magnitude(x, k)


def ef_topk_(e: Tensor, g: Tensor, k: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """One error-feedback step with top-k (EF14: Seide et al. 2014; Stich et al. 2018), ``e`` updated in place.

    Steps: 1. ``u = e + g``, written into ``e``; 2. ``(values, indices) =
    topk_magnitude(u, k)`` (the contract of :func:`topk_magnitude`; ``seed``
    only steers the kernel's sampled threshold); 3. ``e[indices] = 0``, so
    ``e = u − C(u)``. A NaN in ``u`` raises ``ValueError`` after step 1.
    """
    if g.shape != e.shape or g.dtype != e.dtype:
        raise ValueError(f"ef_topk_: g must match e, got {g.dtype} {tuple(g.shape)} and {e.dtype} {tuple(e.shape)}")
    _check_topk(e, k)  # shape and k, before e is touched
    e.add_(g)
    values, indices = topk_magnitude(e, k)
    e.index_fill_(0, indices.long(), 0.0)
    return values, indices


def econtrol_message(g: Tensor, h_local: Tensor, e: Tensor, eta: float, out: Tensor) -> Tensor:
    """EControl's message ``u = (g − hᵢ) + (η·e)`` (Gao, Islamov, Stich, ICLR 2024), written into ``out``.

    Three float32 roundings in this order: ``d = g − hᵢ``, ``t = η·e`` (``η`` rounded to float32,
    as torch does for a float32 op), ``u = d + t`` (no fused multiply-add). ``out`` must not share
    memory with the inputs.
    """
    t = torch.mul(e, eta)
    return torch.sub(g, h_local, out=out).add_(t)


def check_sorted_flat_indices(op: str, indices: Tensor, numel: int) -> None:
    """Raise ``ValueError`` unless 1-D int64 ``indices`` are strictly increasing within ``[0, numel)``."""
    if indices.dtype != torch.int64 or indices.dim() != 1:
        raise ValueError(f"{op}: indices must be a 1-D int64 tensor, got {indices.dtype} {tuple(indices.shape)}")
    if indices.numel() and (int(indices[0]) < 0 or int(indices[-1]) >= numel
                            or not bool((indices[1:] > indices[:-1]).all())):
        raise ValueError(f"{op}: indices must be strictly increasing within [0, {numel})")


def econtrol_commit_(e: Tensor, h_local: Tensor, g: Tensor, indices: Tensor, values: Tensor) -> None:
    """EControl's commit with a sparse ``Δ`` (flat ``indices``, ``values``): ``e ← e + ((g − hᵢ) − Δ)``; ``hᵢ += Δ``.

    Steps: 1. ``d = g − hᵢ``; 2. ``d[indices] −= values``; 3. ``e += d``; 4. ``hᵢ[indices] += values``
    (``hᵢ`` read by step 1 before step 4 moves it). Off the kept entries ``d − 0 = d``, so the bits
    are those of the dense update with ``Δ`` zero there. ``e`` and ``hᵢ`` are contiguous.
    """
    check_sorted_flat_indices("econtrol_commit_", indices, e.numel())
    d = torch.sub(g, h_local).view(-1)
    d[indices] = d[indices] - values
    e.add_(d.view_as(e))
    h_flat = h_local.view(-1)
    h_flat[indices] = h_flat[indices] + values


def sparse_mean_rows(indices: Tensor, values: Tensor, divisor: int) -> tuple[Tensor, Tensor]:
    """The mean of ``n`` sparse rows: ``(union, mean)`` without a dense tensor of the full length.

    Row ``r`` holds rank ``r``'s entries (``indices[r]`` int32, strictly increasing, non-negative;
    ``values[r]`` float32). ``union`` (int64) is every index any row holds, sorted; ``mean`` at an
    index is ``((0 + v_first) + … + v_last) / divisor`` over the rows holding it, in row order: the
    bits of the dense decode (zeros, every row added in rank order, then divided).
    """
    if indices.dim() != 2 or indices.dtype != torch.int32 or values.dtype != torch.float32:
        raise ValueError(f"sparse_mean_rows: needs (n, k) int32 indices and float32 values, got "
                         f"{indices.dtype} {tuple(indices.shape)} and {values.dtype} {tuple(values.shape)}")
    if values.shape != indices.shape:
        raise ValueError(f"sparse_mean_rows: indices {tuple(indices.shape)} and values {tuple(values.shape)} differ")
    if divisor < 1:
        raise ValueError(f"sparse_mean_rows: divisor must be positive, got {divisor}")
    if indices.numel() and (bool((indices < 0).any()) or not bool((indices[:, 1:] > indices[:, :-1]).all())):
        raise ValueError("sparse_mean_rows: every row must be strictly increasing and non-negative")
    union, position = torch.unique(indices.long(), sorted=True, return_inverse=True)
    total = torch.zeros(union.numel(), dtype=torch.float32, device=values.device)
    for row, vals in zip(position, values):
        total[row] = total[row] + vals
    return union, total.div_(divisor)


_INT32_MAX = 2**31 - 1
_M32 = 0xFFFFFFFF


def _mul32(a: Tensor, c: int) -> Tensor:
    """``(a * c) mod 2**32`` for int64 ``a`` in ``[0, 2**32)``, in two 16-bit halves so no product overflows."""
    return (a * (c & 0xFFFF) + ((a * (c >> 16)) & 0xFFFF) * 65536) & _M32


def _fmix32(h: Tensor) -> Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def hash32(key: int, counters: Tensor) -> Tensor:
    """The 32-bit random word of each non-negative int64 counter under a 64-bit ``key`` (``csrc/hash.h``).

    ``h = fmix32(lo32(i)·0x9E3779B1 + lo32(key))``, then
    ``fmix32(h ^ hi32(key) ^ hi32(i)·0x85EBCA77)``, all mod 2**32, with
    MurmurHash3's finaliser ``fmix32``. Returned as int64 in ``[0, 2**32)``.
    """
    key &= 2**64 - 1
    i = counters.to(torch.int64)
    h = _fmix32((_mul32(i & _M32, 0x9E3779B1) + (key & _M32)) & _M32)
    return _fmix32(h ^ (key >> 32) ^ _mul32(i >> 32, 0x85EBCA77))


def stream_key32(key: int) -> int:
    """A 64-bit key folded to 32 bits for :func:`hash32_stream`.

    ``fmix32(lo32(key) ^ fmix32(hi32(key) ^ 0x5BD1E995))``.
    """
    key &= 2**64 - 1
    inner = int(_fmix32(torch.tensor([(key >> 32) ^ 0x5BD1E995], dtype=torch.int64)))
    return int(_fmix32(torch.tensor([(key & _M32) ^ inner], dtype=torch.int64)))


def hash32_stream(key32: int, counters: Tensor) -> Tensor:
    """One finaliser round of a Weyl sequence: ``fmix32(i·0x9E3779B1 + key32)`` for counters ``i < 2**32``.

    The cheaper stream of ``csrc/hash.h`` (SplitMix's construction) for hot
    loops, QSGD's coins among them. Returned as int64 in ``[0, 2**32)``.
    """
    return _fmix32((_mul32(counters.to(torch.int64), 0x9E3779B1) + key32) & _M32)


def uniform24(h: Tensor) -> Tensor:
    """``h >> 8`` as float32 in ``[0, 1)``: 24 random bits, exact in float32."""
    return (h >> 8).to(torch.float32) * (1.0 / 16777216.0)


def _check_qsgd_config(bucket_size: int, levels: int, bits: int) -> None:
    if bucket_size < 1:
        raise ValueError(f"qsgd: bucket_size must be positive, got {bucket_size}")
    if bits not in (2, 4, 8):
        raise ValueError(f"qsgd: bits must be one of (2, 4, 8), got {bits}")
    if not 1 <= levels <= (2**bits - 1) // 2:
        raise ValueError(f"qsgd: levels must be in [1, {(2**bits - 1) // 2}] for {bits}-bit codes, got {levels}")


def _check_float_vector(op: str, name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor) or t.dtype != torch.float32 or t.dim() != 1:
        what = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{op}: {name} must be a 1-D float32 tensor, got {what}")


def qsgd_encode(
    x: Tensor, bucket_size: int, levels: int, bits: int, max_norm: bool, seed: int
) -> tuple[Tensor, Tensor]:
    """QSGD quantize + pack: ``(float32 scale per bucket, packed codes)`` of 1-D float32 ``x``.

    Per bucket of ``bucket_size`` elements (the last one shorter), with
    ``s = levels``: ``norm = sqrt(Σ x²)`` in float64 (or ``max|x|`` with
    ``max_norm``); ``scale = float32(norm)``; a pre-scale ``pre = 2**64`` when
    ``s/norm ≥ 2**100`` (a tiny norm, whose ratio would overflow float32), else 1;
    ``ratio = float32(s/(norm·pre))``; in float32 ``y = min((|x|·pre)·ratio, s)``;
    ``level = floor(y) + [uniform24(hash32_stream(stream_key32(seed), i)) < y − floor(y)]``;
    ``code = s ∓ level`` (minus for negative ``x``), packed with ``bits`` bits.
    An all-zero bucket has scale 0 and codes ``s``. Non-finite input raises.
    """
    _check_qsgd_config(bucket_size, levels, bits)
    _check_float_vector("qsgd_encode", "x", x)
    n = x.numel()
    if n > _M32:
        raise ValueError(f"qsgd_encode: at most 2**32 - 1 elements, got {n}")
    if not bool(torch.isfinite(x).all()):
        first = int((~torch.isfinite(x)).nonzero()[0, 0])
        raise ValueError(f"qsgd_encode: x[{first}] = {float(x[first])} is not finite")
    bucket_size = min(bucket_size, max(n, 1))  # a bucket longer than x is one bucket of all of x
    n_buckets = -(-n // bucket_size)
    mags = torch.cat([x.abs(), x.new_zeros(n_buckets * bucket_size - n)]).view(n_buckets, bucket_size).double()
    norm = mags.amax(dim=1) if max_norm else (mags * mags).sum(dim=1).sqrt()
    scales = norm.float()
    if not bool(torch.isfinite(scales).all()):
        raise ValueError("qsgd_encode: a bucket's norm overflows float32")
    safe_norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    pre = torch.where(float(levels) / safe_norm >= 2.0**100, 2.0**64, 1.0)
    ratio = torch.where(norm > 0, float(levels) / (safe_norm * pre), 0.0).float()
    scaled = (mags.float() * pre.float().unsqueeze(1)) * ratio.unsqueeze(1)
    y = scaled.clamp_(max=float(levels)).reshape(-1)[:n]
    whole = y.floor()
    coin = uniform24(hash32_stream(stream_key32(seed), torch.arange(n, device=x.device)))
    level = whole.to(torch.int64) + (coin < y - whole).to(torch.int64)
    codes = torch.where(x < 0, levels - level, levels + level).to(torch.uint8)
    return scales, pack_bits(codes, bits)


def _qsgd_codes(op: str, scales: Tensor, packed: Tensor, n: int, bucket_size: int, levels: int, bits: int) -> Tensor:
    """The ``n`` codes of a QSGD payload, unpacked, after the decoder's checks (``ValueError`` naming ``op``)."""
    _check_qsgd_config(bucket_size, levels, bits)
    _check_float_vector(op, "scales", scales)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{op}: n must be a non-negative integer, got {n!r}")
    n_buckets = -(-n // bucket_size)
    if scales.numel() != n_buckets:
        raise ValueError(
            f"{op}: {n} elements in buckets of {min(bucket_size, max(n, 1))} need {n_buckets} scales, "
            f"got {scales.numel()}"
        )
    if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
        raise ValueError(f"{op}: every scale must be finite and non-negative")
    codes = unpack_bits(packed, bits, n)
    if n and int(codes.max()) > 2 * levels:
        raise ValueError(f"{op}: a code exceeds 2 * levels = {2 * levels}")
    return codes


def qsgd_check(scales: Tensor, packed: Tensor, n: int, bucket_size: int, levels: int, bits: int) -> None:
    """The checks of :func:`qsgd_decode_add` on a payload of ``n`` codes, without decoding it: sizes,
    every scale finite and non-negative, every code ``≤ 2s`` (``ValueError``)."""
    _qsgd_codes("qsgd_check", scales, packed, n, bucket_size, levels, bits)


def qsgd_decode_add(out: Tensor, scales: Tensor, packed: Tensor, bucket_size: int, levels: int, bits: int,
                    subtract: bool = False) -> None:
    """``out += float32(scale/s)·(code − s)`` per element: the inverse of :func:`qsgd_encode`, accumulated
    (``subtract``: ``out −=`` the same values, one rounding each).

    Validates first (:func:`qsgd_check`: sizes, every scale finite and non-negative, every code
    ``≤ 2s``; ``ValueError``), so a malformed payload leaves ``out`` untouched.
    """
    _check_float_vector("qsgd_decode_add", "out", out)
    n = out.numel()
    codes = _qsgd_codes("qsgd_decode_add", scales, packed, n, bucket_size, levels, bits)
    step = (scales / float(levels)).repeat_interleave(min(bucket_size, max(n, 1)))[:n]
    values = (codes.to(torch.float32) - float(levels)) * step
    if subtract:
        out.sub_(values)
    else:
        out.add_(values)


SKETCH_PRIME = 2**31 - 1


def _mod_p(x: Tensor) -> Tensor:
    """``x mod (2**31 − 1)`` for non-negative int64 ``x < 2**62``, by two Mersenne folds (``csrc/sketch.h``)."""
    x = (x & SKETCH_PRIME) + (x >> 31)
    x = (x & SKETCH_PRIME) + (x >> 31)
    return torch.where(x >= SKETCH_PRIME, x - SKETCH_PRIME, x)


def count_sketch_hashes(seed: int, row: int) -> tuple[int, int, int, int, int, int]:
    """Row ``row``'s hash coefficients ``(a, b, c0, c1, c2, c3)`` (``csrc/sketch.h``).

    ``w_t = hash32(seed, 8·row + 1 + t)``; ``a = 1 + w_0 mod (P − 1)``, ``b = w_1 mod P``,
    ``c_t = w_{t+2} mod P`` with ``P = 2**31 − 1``.
    """
    w = [int(v) for v in hash32(seed, torch.arange(8 * row + 1, 8 * row + 7))]
    p = SKETCH_PRIME
    return 1 + w[0] % (p - 1), w[1] % p, w[2] % p, w[3] % p, w[4] % p, w[5] % p


def _buckets_and_signs(seed: int, rows: int, cols: int, idx: Tensor) -> tuple[Tensor, Tensor]:
    """``bucket_j(i)`` (int64) and ``sign_j(i)`` (±1 float32) for every row ``j`` and global index in ``idx``."""
    buckets, signs = [], []
    for j in range(rows):
        a, b, c0, c1, c2, c3 = count_sketch_hashes(seed, j)
        buckets.append((_mod_p(a * idx + b) * cols) >> 31)
        g = _mod_p(_mod_p(_mod_p(c3 * idx + c2) * idx + c1) * idx + c0)
        signs.append(1.0 - 2.0 * (g & 1).to(torch.float32))
    return torch.stack(buckets), torch.stack(signs)


def _check_sketch(table: Tensor, offset: int, length: int) -> None:
    if not isinstance(table, Tensor) or table.dim() != 2 or min(table.shape) < 1 or not table.is_floating_point():
        got = getattr(table, "shape", type(table).__name__)
        raise ValueError(f"count sketch: table must be a 2-D float (rows, cols) tensor, got {got}")
    if offset < 0 or length < 0:
        raise ValueError(f"count sketch: offset and length must be non-negative, got {offset}, {length}")
    if table.shape[0] > 64:
        raise ValueError(f"count sketch: at most 64 rows, got {table.shape[0]}")
    if offset + length > SKETCH_PRIME:
        raise ValueError(f"count sketch: global indices must stay below 2**31 - 1, got {offset} + {length}")


def count_sketch_add_(table: Tensor, x: Tensor, seed: int, offset: int = 0) -> None:
    """``table[j, bucket_j(i)] += sign_j(i)·x_i`` for global indices ``i = offset + t`` (Charikar et al., 2002).

    Row by row, in index order (``index_add_``). Linear in ``x``: sketches of
    several tensors at disjoint offsets add up to the sketch of their concatenation.
    """
    if not isinstance(x, Tensor) or x.dim() != 1:
        raise ValueError("count_sketch_add_: x must be a 1-D tensor")
    _check_sketch(table, offset, x.numel())
    rows, cols = table.shape
    idx = torch.arange(offset, offset + x.numel(), device=x.device)
    buckets, signs = _buckets_and_signs(seed, rows, cols, idx)
    for j in range(rows):
        table[j].index_add_(0, buckets[j], signs[j].to(table.dtype) * x.to(table.dtype))


def count_unsketch(table: Tensor, seed: int, offset: int, length: int) -> Tensor:
    """Estimates of the elements at global indices ``offset + [0, length)``: the median over rows.

    ``median_j sign_j(i)·table[j, bucket_j(i)]``; for an even number of rows the
    lower of the two middle values (``torch.median``). The table must be finite.
    """
    _check_sketch(table, offset, length)
    if not bool(torch.isfinite(table).all()):
        raise ValueError("count_unsketch: the table holds NaN or Inf")
    rows, cols = table.shape
    idx = torch.arange(offset, offset + length, device=table.device)
    buckets, signs = _buckets_and_signs(seed, rows, cols, idx)
    votes = signs.to(table.dtype) * torch.gather(table, 1, buckets)
    return votes.median(dim=0).values if length else table.new_empty(0)


def _fwht_rows(v: Tensor) -> Tensor:
    """Unnormalized Walsh–Hadamard transform of each row of ``v`` (rows of length 2**q), stage by stage."""
    blocks, size = v.shape
    h = 1
    while h < size:
        pairs = v.reshape(blocks, size // (2 * h), 2, h)
        lo, hi = pairs[:, :, 0, :], pairs[:, :, 1, :]
        v = torch.stack([lo + hi, lo - hi], dim=2).reshape(blocks, size)
        h *= 2
    return v


def _random_signs(seed: int, n: int, device: torch.device) -> Tensor:
    return 1.0 - 2.0 * (hash32(seed, torch.arange(n, device=device)) & 1).to(torch.float32)


def _check_srht(block: int, rows: Tensor) -> None:
    if block < 1 or block > 2**24 or block & (block - 1):
        raise ValueError(f"srht: block must be a power of two in [1, 2**24], got {block}")
    if not isinstance(rows, Tensor) or rows.dtype != torch.int64 or rows.dim() != 1:
        raise ValueError("srht: rows must be a 1-D int64 tensor")
    if not 1 <= rows.numel() <= block:
        raise ValueError(f"srht: rows must hold 1 to block = {block} row indices, got {rows.numel()}")
    if int(rows.min()) < 0 or int(rows.max()) >= block:
        raise ValueError(f"srht: a row index is outside [0, {block})")
    if rows.unique().numel() != rows.numel():
        raise ValueError("srht: row indices must be distinct")


def _hadamard_scale(block: int) -> float:
    return float(torch.tensor(1.0 / math.sqrt(block), dtype=torch.float32))


def srht(x: Tensor, block: int, rows: Tensor, seed: int) -> Tensor:
    """Blockwise subsampled randomized Hadamard transform: ``(ceil(d/block), m)`` coefficients.

    Per block of ``block`` elements (``x`` zero-padded): multiply by random
    signs ``±1`` (the parity of ``hash32(seed, i)``), apply ``H/√block`` (fast
    Walsh–Hadamard), keep the ``m`` entries at ``rows`` (distinct).
    """
    _check_float_vector("srht", "x", x)
    _check_srht(block, rows)
    d = x.numel()
    blocks = -(-d // block)
    v = torch.cat([x * _random_signs(seed, d, x.device), x.new_zeros(blocks * block - d)]).view(blocks, block)
    return _fwht_rows(v)[:, rows] * _hadamard_scale(block)


def srht_transpose(y: Tensor, block: int, rows: Tensor, length: int, seed: int) -> Tensor:
    """The transpose of :func:`srht`: scatter each block's ``m`` coefficients to ``rows``, apply ``H/√block``, signs."""
    _check_srht(block, rows)
    if length < 0:
        raise ValueError(f"srht_transpose: length must be non-negative, got {length}")
    blocks = -(-length // block)
    if not isinstance(y, Tensor) or y.dtype != torch.float32 or tuple(y.shape) != (blocks, rows.numel()):
        raise ValueError(f"srht_transpose: y must be a float32 tensor of shape {(blocks, rows.numel())}")
    z = y.new_zeros(blocks, block)
    z[:, rows] = y
    v = (_fwht_rows(z) * _hadamard_scale(block)).reshape(-1)[:length]
    return _random_signs(seed, length, y.device) * v
