"""QSGD encode / decode_add: the native kernels against the reference, and the quantizer's statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hash_oracle import py_stream_hash
from hypothesis import given, settings
from hypothesis import strategies as st

import commlib.ops as ops
from commlib.ops import reference

needs_extension = pytest.mark.skipif(ops.backend() == "reference", reason="commlib._C is not loaded")

# Every valid (bits, levels): 2s + 1 codes must fit in `bits` bits.
VALID_CONFIGS = [(bits, levels) for bits in (2, 4, 8) for levels in range(1, (2**bits - 1) // 2 + 1)]
SOME_CONFIGS = [(2, 1), (4, 1), (4, 3), (4, 7), (8, 1), (8, 5), (8, 127)]
TINY = 1.4e-45


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def codes_of(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    return reference.unpack_bits(packed, bits, n)


def spread_data(n: int, seed: int) -> torch.Tensor:
    """Gaussian entries times log-normal magnitudes (8 decades), with runs of +0.0 and -0.0 and a few subnormals."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(3 * torch.randn(n, generator=g))
    if n >= 40:
        x[5:20] = 0.0
        x[20:30] = -0.0
        x[30:33] = torch.tensor([TINY, -3e-42, 1e-39])
    return x


def kernel_encode(x, bucket_size, levels, bits, max_norm, seed):
    return torch.ops.commlib.qsgd_encode(x, bucket_size, levels, bits, max_norm, seed)


def assert_encode_parity(x: torch.Tensor, bucket_size: int, levels: int, bits: int, max_norm: bool, seed: int):
    """Kernel and reference agree: scales to rtol 1e-6 (an l2 norm may differ in its last bit), codes bit for bit
    whenever the scales agree, and decoding one payload into the same ``out`` gives the same bits on both paths."""
    k_scales, k_packed = kernel_encode(x, bucket_size, levels, bits, max_norm, seed)
    r_scales, r_packed = reference.qsgd_encode(x, bucket_size, levels, bits, max_norm, seed)
    n_buckets = -(-x.numel() // bucket_size)
    assert k_scales.dtype == torch.float32 and k_scales.shape == (n_buckets,)
    assert k_packed.dtype == torch.uint8 and k_packed.shape == (ops.packed_length(x.numel(), bits),)
    torch.testing.assert_close(k_scales, r_scales, rtol=1e-6, atol=0)
    if torch.equal(bits_of(k_scales), bits_of(r_scales)):
        assert torch.equal(k_packed, r_packed), "same scales, different codes"
    if max_norm:  # no sum involved: the scales are max|x| exactly
        assert torch.equal(bits_of(k_scales), bits_of(r_scales))
    codes = codes_of(k_packed, bits, x.numel())
    assert x.numel() == 0 or int(codes.max()) <= 2 * levels
    g = torch.Generator().manual_seed(seed & 0xFFFF)
    out_k = torch.randn(x.numel(), generator=g)
    out_r = out_k.clone()
    torch.ops.commlib.qsgd_decode_add(out_k, k_scales, k_packed, bucket_size, levels, bits)
    reference.qsgd_decode_add(out_r, k_scales, k_packed, bucket_size, levels, bits)
    assert torch.equal(bits_of(out_k), bits_of(out_r)), "decode differs"
    # subtract: out − v, one rounding, on both paths; the bits of subtracting the decoded tensor
    base = torch.randn(x.numel(), generator=g)
    sub_k, sub_r, decoded = base.clone(), base.clone(), torch.zeros(x.numel())
    torch.ops.commlib.qsgd_decode_add(sub_k, k_scales, k_packed, bucket_size, levels, bits, True)
    reference.qsgd_decode_add(sub_r, k_scales, k_packed, bucket_size, levels, bits, subtract=True)
    reference.qsgd_decode_add(decoded, k_scales, k_packed, bucket_size, levels, bits)
    assert torch.equal(bits_of(sub_k), bits_of(sub_r)), "subtracting decode differs"
    assert torch.equal(bits_of(sub_r), bits_of(base - decoded)), "subtract is not out − decoded"
    return k_scales, k_packed


# ---------------------------------------------------------------- kernel == reference


@needs_extension
@pytest.mark.parametrize("max_norm", [False, True])
def test_every_valid_config(max_norm: bool) -> None:
    x = spread_data(203, seed=1)
    for bits, levels in VALID_CONFIGS:
        assert_encode_parity(x, 7, levels, bits, max_norm, seed=levels * 31 + bits)


GRID = [(n, bs) for n in (0, 1, 7, 9, 1001) for bs in (1, 3, 7, 128, 1000)]
GRID += [(70_001, bs) for bs in (1, 7, 1000)]  # several parallel blocks of whole buckets


@needs_extension
@pytest.mark.parametrize("n, bucket_size", GRID)
def test_kernel_equals_reference(n: int, bucket_size: int) -> None:
    x = spread_data(n, seed=n + bucket_size)
    for bits, levels in SOME_CONFIGS if n < 10_000 else [(2, 1), (4, 7), (8, 127)]:
        for max_norm in (False, True):
            assert_encode_parity(x, bucket_size, levels, bits, max_norm, seed=n * 7 + levels)


finite32 = st.floats(min_value=-(2.0**100), max_value=2.0**100, allow_nan=False, width=32)


@needs_extension
@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(finite32, max_size=300),
    bucket_size=st.sampled_from([1, 2, 3, 5, 7, 8, 16, 128, 1000]),
    config=st.sampled_from(VALID_CONFIGS),
    max_norm=st.booleans(),
    seed=st.integers(0, 2**64 - 1),
)
def test_kernel_equals_reference_property(values, bucket_size, config, max_norm, seed) -> None:
    bits, levels = config
    x = torch.tensor(values, dtype=torch.float32)
    scales, packed = assert_encode_parity(x, bucket_size, levels, bits, max_norm, ops._as_int64(seed))
    # the wrapper takes any 64-bit seed and gives the raw op's bytes
    w_scales, w_packed = ops.qsgd_encode(x, bucket_size, levels, bits, max_norm, seed)
    assert torch.equal(bits_of(w_scales), bits_of(scales)) and torch.equal(w_packed, packed)


# ---------------------------------------------------------------- edge cases, on every path

ENCODERS = [("reference", reference.qsgd_encode), ("wrapper", ops.qsgd_encode)]


# ---------------------------------------------------------------- plain-Python oracle of csrc/qsgd.h

def py_codes(x: list[float], bucket_size: int, levels: int, max_norm: bool, seed: int) -> list[int]:
    """csrc/qsgd.h's formulas, element by element, with numpy float32 scalars for the float32 steps."""
    codes = []
    for start in range(0, len(x), bucket_size):
        bucket = [float(np.float32(v)) for v in x[start : start + bucket_size]]
        norm = max(abs(v) for v in bucket) if max_norm else math.sqrt(math.fsum(v * v for v in bucket))
        pre = 2.0**64 if norm > 0 and levels / norm >= 2.0**100 else 1.0
        ratio = np.float32(levels / (norm * pre)) if norm > 0 else np.float32(0.0)
        for j, v in enumerate(bucket):
            y = min((np.float32(abs(v)) * np.float32(pre)) * ratio, np.float32(levels))
            coin = np.float32(py_stream_hash(seed, start + j) >> 8) * np.float32(1.0 / 16777216.0)
            level = int(np.floor(y)) + int(coin < y - np.floor(y))
            codes.append(levels - level if v < 0 else levels + level)
    return codes


def test_reference_stream_hash_matches_python() -> None:
    counters = [0, 1, 2, 12345, 2**31 - 1, 2**32 - 1]
    for seed in (0, 1, 2**32 - 1, 2**32, 2**63 + 12345, 2**64 - 1, -1):
        got = reference.hash32_stream(reference.stream_key32(seed), torch.tensor(counters)).tolist()
        assert got == [py_stream_hash(seed, i) for i in counters]


@pytest.mark.parametrize("encode", [e[1] for e in ENCODERS], ids=[e[0] for e in ENCODERS])
@pytest.mark.parametrize("max_norm", [False, True])
def test_codes_match_python_oracle(encode, max_norm: bool) -> None:
    """Every code equals the plain-Python oracle's: ordinary, zero, negative-zero and tiny (pre-scaled) buckets;
    l2 sums of powers of two, so the norm is exact on every path."""
    x = [0.5, -0.25, 0.125, 0.0, 1.0, -0.0, 0.0, 0.0, -2.0**-140, 2.0**-140, 0.0, 2.0**-130, 3.0, -1.0, 0.75, 0.5]
    xt = torch.tensor(x)
    for bits, levels in ((2, 1), (4, 7), (8, 127)):
        for seed in (0, 5, -3, 2**40 + 1):
            _, packed = encode(xt, 4, levels, bits, max_norm, seed)
            assert codes_of(packed, bits, len(x)).tolist() == py_codes(x, 4, levels, max_norm, seed), (bits, seed)
if ops.backend() != "reference":
    ENCODERS.append(("kernel", kernel_encode))
DECODERS = [("reference", reference.qsgd_decode_add), ("wrapper", ops.qsgd_decode_add)]
if ops.backend() != "reference":
    DECODERS.append(("kernel", lambda *a: torch.ops.commlib.qsgd_decode_add(*a)))


@pytest.mark.parametrize("encode", [e[1] for e in ENCODERS], ids=[e[0] for e in ENCODERS])
@pytest.mark.parametrize("max_norm", [False, True])
@pytest.mark.parametrize("bs", [8, 16, 48])  # 16 | bs: the kernel packs in registers
@pytest.mark.parametrize("bits, levels", [(2, 1), (4, 3), (4, 7), (8, 100)])
def test_zero_buckets(encode, max_norm: bool, bs: int, bits: int, levels: int) -> None:
    """All-zero buckets (+0 and -0, whole and a short last one) get scale 0 and every code = levels."""
    x = torch.cat([torch.zeros(bs), torch.randn(bs), torch.full((bs,), -0.0), torch.randn(bs), torch.zeros(7)])
    scales, packed = encode(x, bs, levels, bits, max_norm, 11)
    assert scales[[0, 2, 4]].tolist() == [0.0, 0.0, 0.0] and bool((scales[[1, 3]] > 0).all())
    codes = codes_of(packed, bits, x.numel())
    zero = torch.cat([torch.arange(bs), torch.arange(2 * bs, 3 * bs), torch.arange(4 * bs, x.numel())])
    assert codes[zero].tolist() == [levels] * zero.numel()
    if x.numel() * bits % 8:
        assert int(packed[-1]) >> (x.numel() * bits % 8) == 0, "padding bits of the last byte must be zero"
    out = torch.ones(x.numel())
    ops.qsgd_decode_add(out, scales, packed, bs, levels, bits)
    assert out[zero].tolist() == [1.0] * zero.numel()


@pytest.mark.parametrize("encode", [e[1] for e in ENCODERS], ids=[e[0] for e in ENCODERS])
@pytest.mark.parametrize("max_norm", [False, True])
def test_subnormal_buckets(encode, max_norm: bool) -> None:
    """Tiny norms: s/norm would overflow float32, so such a bucket is pre-scaled by 2**64 (exact); the codes are
    valid, the scales finite and positive, and decoding stays within one quantization step."""
    g = torch.Generator().manual_seed(4)
    raw = torch.randint(1, 1 << 23, (64,), generator=g, dtype=torch.int32).view(torch.float32)
    x = torch.cat([raw * torch.where(torch.rand(64, generator=g) < 0.5, -1.0, 1.0), torch.tensor([TINY, -TINY])])
    for bits, levels in ((2, 1), (4, 7), (8, 127)):
        for bs in (1, 2, 16):
            scales, packed = encode(x, bs, levels, bits, max_norm, 5)
            assert bool(torch.isfinite(scales).all()) and bool((scales > 0).all())
            codes = codes_of(packed, bits, x.numel())
            assert int(codes.max()) <= 2 * levels
            out = torch.zeros(x.numel())
            ops.qsgd_decode_add(out, scales, packed, bs, levels, bits)
            step = scales.repeat_interleave(bs)[: x.numel()].double() / levels
            assert bool(((out.double() - x.double()).abs() <= step + 2 * TINY).all())


@pytest.mark.parametrize("encode", [e[1] for e in ENCODERS], ids=[e[0] for e in ENCODERS])
def test_norm_overflow_raises(encode) -> None:
    x = torch.tensor([3e38, -3e38, 1.0])
    with pytest.raises(ValueError, match="overflows float32"):
        encode(x, 2, 3, 4, False, 0)
    scales, packed = encode(x, 2, 3, 4, True, 0)  # the max norm does not overflow
    assert scales.tolist() == [pytest.approx(3e38, rel=1e-6), 1.0]
    assert codes_of(packed, 4, 3).tolist() == [6, 0, 6]
    big = spread_data(70_001, seed=8)
    big[-2:] = 3e38  # only the last bucket, far into the last block
    with pytest.raises(ValueError, match="overflows float32"):
        encode(big, 128, 3, 4, False, 0)


@pytest.mark.parametrize("encode", [e[1] for e in ENCODERS], ids=[e[0] for e in ENCODERS])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_raises(encode, bad: float) -> None:
    for n, where in ((1, 0), (9, 8), (70_001, 40_000), (70_001, 70_000)):
        x = torch.ones(n)
        x[where] = bad
        for max_norm in (False, True):
            with pytest.raises(ValueError, match=rf"x\[{where}\] = -?(nan|inf) is not finite"):
                encode(x, 7, 3, 4, max_norm, 0)


@pytest.mark.parametrize("encode", [e[1] for e in ENCODERS], ids=[e[0] for e in ENCODERS])
@pytest.mark.parametrize("max_norm", [False, True])
def test_bucket_larger_than_tensor(encode, max_norm: bool) -> None:
    """A bucket size past the tensor's length is valid (one short bucket) and means one bucket of all elements.

    Fails: with bucket_size = 2**40 the kernel raises MemoryError (it sizes its work blocks by the bucket, not the
    tensor) and the reference a RuntimeError (it pads the tensor to a whole bucket); with 2**63 - 1 the kernel
    returns no scales at all ((n + bucket_size - 1) overflows int64).
    """
    x = spread_data(10, seed=3)
    expected = encode(x, 10, 3, 4, max_norm, 7)
    for bucket_size in (11, 2**20, 2**40, 2**63 - 1):
        scales, packed = encode(x, bucket_size, 3, 4, max_norm, 7)
        assert torch.equal(scales, expected[0]) and torch.equal(packed, expected[1]), bucket_size


# ---------------------------------------------------------------- statistics: unbiased, variance bound

STAT_SAMPLES = 600
STAT_CONFIGS = [(2, 1, False, 32), (4, 3, True, 32), (8, 20, False, 96), (4, 7, False, 5)]


def quantize_many(encode, x: torch.Tensor, bits: int, levels: int, max_norm: bool, bs: int) -> torch.Tensor:
    outs = torch.zeros(STAT_SAMPLES, x.numel())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny calls: spare them the thread pool's wake-ups
    try:
        for seed in range(STAT_SAMPLES):
            scales, packed = encode(x, bs, levels, bits, max_norm, seed)
            ops.qsgd_decode_add(outs[seed], scales, packed, bs, levels, bits)
    finally:
        torch.set_num_threads(threads)
    return outs.double()


def stat_vector() -> torch.Tensor:
    g = torch.Generator().manual_seed(12)
    x = torch.randn(96, generator=g) * torch.exp(torch.randn(96, generator=g))
    x[40:48] = 0.0
    x[60] = 5 * x.abs().max()  # one dominating entry in its bucket
    return x


STAT_ENCODERS = [e for e in ENCODERS if e[0] != "wrapper"]  # the wrapper is one of the two


@pytest.mark.parametrize("encode", [e[1] for e in STAT_ENCODERS], ids=[e[0] for e in STAT_ENCODERS])
@pytest.mark.parametrize("config", STAT_CONFIGS, ids=lambda c: f"bits{c[0]}-s{c[1]}-{'max' if c[2] else 'l2'}-b{c[3]}")
def test_unbiased_and_variance(encode, config) -> None:
    """Over many seeds: E Q(x) = x, the per-element variance is (scale/s)²·p(1−p), and the total is within
    min(d_b/s², √d_b/s)·‖x_b‖² per bucket (Lemma 3.1 of Alistarh et al.).

    Deterministic (fixed seeds); the thresholds hold with overwhelming probability for a correct quantizer.
    """
    bits, levels, max_norm, bs = config
    x = stat_vector()
    samples = quantize_many(encode, x, bits, levels, max_norm, bs)
    xd = x.double()
    scales, _ = encode(x, bs, levels, bits, max_norm, 0)
    step = scales.double().repeat_interleave(bs)[: x.numel()] / levels
    y = xd.abs() / torch.where(step > 0, step, torch.ones_like(step))
    p = y - y.floor()
    var = step**2 * p * (1 - p)  # the exact per-element variance of one quantization
    # unbiased: the squared error of the mean of N samples is about Σ var / N (a sum of ~96 independent terms)
    err2 = float((samples.mean(0) - xd).pow(2).sum())
    assert err2 <= 3 * float(var.sum()) / STAT_SAMPLES + 1e-12 * float(xd.pow(2).sum())
    # the per-element variance matches (scale/s)²·p(1−p)
    emp = (samples - xd).pow(2).mean(0)
    assert float(emp.sum()) == pytest.approx(float(var.sum()), rel=0.15)
    # the variance bound, bucket by bucket
    for b in range(0, x.numel(), bs):
        d_b = min(bs, x.numel() - b)
        bound = min(d_b / levels**2, math.sqrt(d_b) / levels) * float(xd[b : b + bs].pow(2).sum())
        assert float(emp[b : b + bs].sum()) <= 1.25 * bound + 1e-30


# ---------------------------------------------------------------- determinism


@needs_extension
def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    x = spread_data(10_000, seed=6)
    a = kernel_encode(x, 128, 3, 4, False, 42)
    b = kernel_encode(x, 128, 3, 4, False, 42)
    c = kernel_encode(x, 128, 3, 4, False, 43)
    d = kernel_encode(x, 128, 3, 4, False, 42 + 2**32)  # the high half of the seed matters
    assert torch.equal(a[1], b[1]) and torch.equal(bits_of(a[0]), bits_of(b[0]))
    assert not torch.equal(a[1], c[1]) and not torch.equal(a[1], d[1])
    assert torch.equal(a[0], c[0])  # the seed only moves the rounding, never the scales


@needs_extension
def test_thread_count_does_not_change_bytes() -> None:
    n = 200_003
    x = spread_data(n, seed=9)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            row = []
            for bs, max_norm in ((128, False), (7, True), (1000, False)):
                scales, packed = kernel_encode(x, bs, 5, 4, max_norm, 1234)
                out = torch.zeros(n)
                torch.ops.commlib.qsgd_decode_add(out, scales, packed, bs, 5, 4)
                row.append((bits_of(scales), packed, bits_of(out)))
            results.append(row)
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
    scales, packed = reference.qsgd_encode(x, 128, 5, 4, False, 1234)
    torch.testing.assert_close(scales, results[0][0][0].view(torch.float32), rtol=1e-6, atol=0)
    if torch.equal(bits_of(scales), results[0][0][0]):
        assert torch.equal(packed, results[0][0][1])


# ---------------------------------------------------------------- torch.library contract


@needs_extension
@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch >= 2.4")
def test_opcheck() -> None:
    for n, bs, bits, levels, max_norm in ((0, 3, 2, 1, False), (1001, 7, 4, 3, False), (257, 128, 8, 100, True)):
        x = spread_data(n, seed=n)
        torch.library.opcheck(torch.ops.commlib.qsgd_encode.default, (x, bs, levels, bits, max_norm, 5))
        scales, packed = kernel_encode(x, bs, levels, bits, max_norm, 5)
        args = (torch.randn(n), scales, packed, bs, levels, bits)
        torch.library.opcheck(torch.ops.commlib.qsgd_decode_add.default, args)


@needs_extension
def test_meta_shapes() -> None:
    x = torch.empty(1001, device="meta")
    scales, packed = ops.qsgd_encode(x, 7, 3, 4, False, 0)
    assert scales.device.type == "meta" and scales.shape == (143,) and scales.dtype == torch.float32
    assert packed.shape == (501,) and packed.dtype == torch.uint8
    ops.qsgd_decode_add(torch.empty(1001, device="meta"), scales, packed, 7, 3, 4)


@needs_extension
def test_torch_compile_fullgraph() -> None:
    def round_trip(x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scales, packed = ops.qsgd_encode(x, 7, 3, 4, False, 21)
        ops.qsgd_decode_add(out, scales, packed, 7, 3, 4)
        return scales, packed

    compiled = torch.compile(round_trip, fullgraph=True, backend="aot_eager", dynamic=True)
    for n in (100, 333):
        x = spread_data(n, seed=n)
        out_c, out_e = torch.ones(n), torch.ones(n)
        got, expected = compiled(x, out_c), round_trip(x, out_e)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert torch.equal(bits_of(out_c), bits_of(out_e))
