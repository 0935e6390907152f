"""Top-k by magnitude: the kernels (exact radix select, sampled threshold) against the reference and a sort oracle.

The oracle is independent of both implementations: a stable descending sort of ``|x|`` lists the entries in the
order "larger magnitude first, lower index first among ties"; its first ``k`` indices, sorted, are the contract's set.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import commlib.ops as ops
from commlib.ops import reference

needs_extension = pytest.mark.skipif(ops.backend() == "reference", reason="commlib._C is not loaded")

INF = float("inf")
TINY = 1.4e-45  # the smallest float32 subnormal
# Values whose float32 bit patterns differ in the lowest mantissa bits only.
ONE_ULPS = torch.tensor([0x3F800000, 0x3F800001, 0x3F800002, 0x3F800003], dtype=torch.int32).view(torch.float32)
SPECIAL = [0.0, -0.0, TINY, -TINY, 1e-40, -1e-40, 1.0, -1.0, 2.0, -2.0, INF, -INF, 3.4e38, -3.4e38]
SPECIAL += [float(v) for v in ONE_ULPS] + [-float(v) for v in ONE_ULPS]


def oracle(x: torch.Tensor, k: int) -> torch.Tensor:
    """The contract's indices (int64, sorted), from a stable sort: no kthvalue, no radix, no threshold."""
    order = torch.sort(x.abs(), descending=True, stable=True).indices
    return order[:k].sort().values


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def assert_result(got: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, idx: torch.Tensor) -> None:
    """``got`` holds exactly the entries ``x[idx]`` (bit for bit: -0.0 stays -0.0) and int32 indices ``idx``."""
    values, indices = got
    assert values.dtype == x.dtype and indices.dtype == torch.int32
    assert indices.shape == values.shape == idx.shape
    assert torch.equal(indices.long(), idx), "selected set differs"
    if x.dtype == torch.float32:
        assert torch.equal(bits(values), bits(x[idx])), "values are not x[indices] bit for bit"
    else:
        assert torch.equal(values, x[idx])


def kernels(x: torch.Tensor, k: int, seed: int = 0) -> list[tuple[str, tuple[torch.Tensor, torch.Tensor]]]:
    return [
        ("magnitude", torch.ops.commlib.topk_magnitude(x, k)),
        ("threshold", torch.ops.commlib.topk_threshold(x, k, seed)),
    ]


# ---------------------------------------------------------------- contract, worked examples (every path)

PATHS = [("reference", reference.topk_magnitude), ("reference-threshold", reference.topk_threshold)]
PATHS += [("wrapper", ops.topk_magnitude), ("wrapper-threshold", ops.topk_threshold)]


@pytest.mark.parametrize("fn", [p[1] for p in PATHS], ids=[p[0] for p in PATHS])
def test_worked_examples(fn) -> None:
    x = torch.tensor([1.0, -1.0, 1.0, -1.0])
    assert fn(x, 2)[1].tolist() == [0, 1]  # ties to the lower index
    x = torch.tensor([0.5, -2.0, 2.0, -0.5, 2.0])
    assert fn(x, 2)[1].tolist() == [1, 2]
    assert fn(x, 4)[1].tolist() == [0, 1, 2, 4]
    x = torch.tensor([-0.0, 0.0, 0.0])  # -0.0 ties with +0.0
    values, idx = fn(x, 1)
    assert idx.tolist() == [0] and bits(values).tolist() == [bits(torch.tensor([-0.0])).item()]
    x = torch.tensor([1.0, INF, 3.4e38, -INF, 0.0])  # infinities are the largest magnitudes
    assert fn(x, 2)[1].tolist() == [1, 3]
    assert fn(x, 3)[1].tolist() == [1, 2, 3]
    x = torch.tensor([TINY, 0.0, -TINY, -0.0])  # subnormals beat zeros
    assert fn(x, 2)[1].tolist() == [0, 2]
    x = torch.cat([ONE_ULPS, -ONE_ULPS]).flip(0)  # one ulp apart: [-(1+3u), -(1+2u), -(1+u), -1, 1+3u, 1+2u, 1+u, 1]
    assert fn(x, 3)[1].tolist() == [0, 1, 4]
    assert fn(x, 5)[1].tolist() == [0, 1, 2, 4, 5]
    assert fn(x, 0)[1].tolist() == [] and fn(x, 8)[1].tolist() == list(range(8))


@pytest.mark.parametrize("fn", [p[1] for p in PATHS], ids=[p[0] for p in PATHS])
@pytest.mark.parametrize("d", [1, 3, 1000])
def test_nan_raises(fn, d: int) -> None:
    for where in sorted({0, d // 2, d - 1}):
        x = torch.arange(d, dtype=torch.float32)
        x[where] = float("nan")
        for k in sorted({1, max(1, d // 2), d}):  # k = 0: test_nan_raises_for_k_zero
            with pytest.raises(ValueError, match=f"NaN \\(first at index {where}\\)"):
                fn(x, k)


def _raw_magnitude(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.commlib.topk_magnitude(x, k)


def _raw_threshold(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.commlib.topk_threshold(x, k, 0)


K_ZERO_PATHS = PATHS + ([] if ops.backend() == "reference" else [("kernel", _raw_magnitude)])
K_ZERO_PATHS += [] if ops.backend() == "reference" else [("kernel-threshold", _raw_threshold)]


@pytest.mark.parametrize("fn", [p[1] for p in K_ZERO_PATHS], ids=[p[0] for p in K_ZERO_PATHS])
def test_nan_raises_for_k_zero(fn) -> None:
    """The contract: a NaN anywhere raises, whatever k; the reference raises for k = 0 too.

    Fails with the kernel (raw op and wrapper): ``trivial_case`` in csrc/cpu/topk.cpp returns an empty result for
    k = 0 without looking for NaN.
    """
    for d in (3, 300_000):
        x = torch.ones(d)
        x[d // 2] = float("nan")
        with pytest.raises(ValueError, match=f"NaN \\(first at index {d // 2}\\)"):
            fn(x, 0)


# ---------------------------------------------------------------- small inputs: kernel == reference == oracle

tie_rich = st.lists(st.sampled_from(SPECIAL), min_size=0, max_size=200)
any_float = st.lists(st.floats(allow_nan=False, width=32), min_size=0, max_size=200)


@needs_extension
@settings(max_examples=250, deadline=None)
@given(values=st.one_of(tie_rich, any_float), k_frac=st.floats(0.0, 1.0), seed=st.integers(-(2**63), 2**63 - 1))
def test_kernel_equals_reference_small(values: list[float], k_frac: float, seed: int) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    k = round(k_frac * x.numel())
    expected = oracle(x, k)
    assert_result(reference.topk_magnitude(x, k), x, expected)
    for _, got in kernels(x, k, seed):
        assert_result(got, x, expected)


# ---------------------------------------------------------------- large inputs: the threshold path (numel >= 262144)


#: How many positions the threshold kernel samples (``kSampleSize`` in ``csrc/cpu/topk.cpp``).
SAMPLE_SIZE = 1 << 13


def _sampled_positions(d: int, seed: int) -> torch.Tensor:
    """The positions the threshold kernel samples (``csrc/cpu/topk.cpp``), from the reference's hash."""
    return (reference.hash32(seed, torch.arange(SAMPLE_SIZE)) * d) >> 32


def _threshold_boundary(d: int) -> int:
    """The smallest k for which the kernel skips sampling (its rank reaches SAMPLE_SIZE/8): near 0.104·d."""
    k = d // 10
    while True:
        e = SAMPLE_SIZE * k / d
        if math.ceil(1.05 * e + 4.0 * math.sqrt(e) + 16.0) >= SAMPLE_SIZE // 8:
            return k
        k += 1


def big_input(kind: str, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(d + len(kind))
    sign = torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0)
    if kind == "randn":
        return torch.randn(d, generator=g)
    if kind == "all_equal":
        return torch.full((d,), -3.0)
    if kind == "signed_zeros":  # only +0.0 and -0.0, and a few ones
        x = 0.0 * sign
        x[:: d // 7] = 1.0
        return x
    if kind == "mostly_zeros":
        x = torch.randn(d, generator=g)
        x[torch.rand(d, generator=g) < 0.95] = 0.0
        return x * sign
    if kind == "subnormals":
        return torch.randint(0, 1 << 23, (d,), generator=g, dtype=torch.int32).view(torch.float32) * sign
    if kind == "infinities":
        x = torch.randn(d, generator=g)
        x[::1001] = INF
        x[7::997] = -INF
        return x
    if kind == "low_mantissa_bits":  # 1.0 .. 1.0 + 3 ulp, both signs: four distinct magnitudes, massive ties
        base = torch.full((d,), 0x3F800000, dtype=torch.int32)
        return (base + torch.randint(0, 4, (d,), generator=g, dtype=torch.int32)).view(torch.float32) * sign
    if kind == "ties_at_threshold":  # 30% of the entries share the magnitude at ranks ~0.09·d .. 0.39·d
        x = torch.randn(d, generator=g)
        x[torch.rand(d, generator=g) < 0.3] = 1.5
        return x * sign
    if kind == "heavy_tailed":
        return torch.empty(d).cauchy_(generator=g)
    if kind == "sorted":
        return torch.randn(d, generator=g).abs().sort().values
    if kind == "reversed":
        return torch.randn(d, generator=g).abs().sort(descending=True).values
    if kind == "sample_trap":  # huge values exactly where seed 0 samples: the sampled threshold is too high
        x = torch.randn(d, generator=g) * 1e-3
        pos = _sampled_positions(d, 0)
        x[pos] = 1000.0 + torch.arange(pos.numel(), dtype=torch.float32)
        return x
    raise AssertionError(kind)


BIG_KINDS = [
    "randn",
    "all_equal",
    "signed_zeros",
    "mostly_zeros",
    "subnormals",
    "infinities",
    "low_mantissa_bits",
    "ties_at_threshold",
    "heavy_tailed",
    "sorted",
    "reversed",
    "sample_trap",
]


def big_ks(d: int) -> list[int]:
    """k = 1, a small k, k on both sides of the kernel's sampling boundary (~0.104·d), d/8, and k = d - 1."""
    b = _threshold_boundary(d)
    return sorted({1, d // 1000, b - 1, b, d // 8, d - 1})


def _top_set(order: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` entries of ``order`` in increasing order, in O(d) (no sort per k)."""
    mask = torch.zeros(order.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.nonzero().squeeze(1)


# Every kind at 300,000; the kinds most likely to trouble the sample or the radix passes at 1,000,003 too.
BIG_CASES = [(kind, 300_000) for kind in BIG_KINDS]
BIG_CASES += [(kind, 1_000_003) for kind in ("randn", "all_equal", "ties_at_threshold", "sample_trap")]


@needs_extension
@pytest.mark.parametrize("kind, d", BIG_CASES)
def test_kernel_equals_oracle_large(kind: str, d: int) -> None:
    x = big_input(kind, d)
    order = torch.sort(x.abs(), descending=True, stable=True).indices
    for k in big_ks(d):
        expected = _top_set(order, k)
        results = [("magnitude", torch.ops.commlib.topk_magnitude(x, k))]
        for seed in (0, -1) if k < _threshold_boundary(d) else (0,):
            results.append((f"threshold seed={seed}", torch.ops.commlib.topk_threshold(x, k, seed)))
        for name, got in results:
            try:
                assert_result(got, x, expected)
            except AssertionError as exc:
                raise AssertionError(f"{name}, k={k}: {exc}") from exc


def test_reference_equals_oracle_large() -> None:
    """The reference (kthvalue, then ties in index order) agrees with the oracle on a big input too."""
    d = 300_000
    x = big_input("ties_at_threshold", d)
    for k in (1, d // 8):  # d/8 falls among the ties
        assert_result(reference.topk_magnitude(x, k), x, oracle(x, k))


@needs_extension
def test_nan_in_large_input_raises() -> None:
    """A NaN far from the sample, on the threshold path and the exact one, and at the very end."""
    d = 300_000
    sampled = set(_sampled_positions(d, 0).tolist())
    where = next(i for i in range(d // 3, d) if i not in sampled)
    for pos in (where, d - 1):
        x = torch.randn(d, generator=torch.Generator().manual_seed(pos))
        x[pos] = float("nan")
        for k in (1, 1000, d // 2):
            for op, args in (("topk_magnitude", (x, k)), ("topk_threshold", (x, k, 0))):
                with pytest.raises(ValueError, match=f"first at index {pos}"):
                    getattr(torch.ops.commlib, op)(*args)


@needs_extension
def test_thread_count_does_not_change_result() -> None:
    d = 1_000_003
    x = big_input("ties_at_threshold", d)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append([kernels(x, k, 5) for k in (1000, d // 8)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            for (_, (va, ia)), (_, (vb, ib)) in zip(a, b):
                assert torch.equal(ia, ib) and torch.equal(bits(va), bits(vb))


# ---------------------------------------------------------------- the dispatching wrapper


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64])
@pytest.mark.parametrize("fn", [ops.topk_magnitude, ops.topk_threshold])
def test_wrapper_other_dtypes_use_reference(fn, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-5, 6, (301,), generator=g).to(dtype)
    for k in (0, 1, 57, 300, 301):
        values, idx = fn(x, k)
        ref_values, ref_idx = reference.topk_magnitude(x, k)
        assert values.dtype == dtype and torch.equal(values, ref_values) and torch.equal(idx, ref_idx)
        assert torch.equal(idx.long(), oracle(x, k))


@pytest.mark.parametrize("fn", [ops.topk_magnitude, ops.topk_threshold])
def test_wrapper_non_contiguous(fn) -> None:
    x = torch.randn(2 * 5001, generator=torch.Generator().manual_seed(2))[::2]
    assert not x.is_contiguous()
    assert_result(fn(x, 100), x, oracle(x, 100))


# ---------------------------------------------------------------- torch.library contract


@needs_extension
@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch >= 2.4")
def test_opcheck() -> None:
    x = torch.randn(1001, generator=torch.Generator().manual_seed(3))
    for k in (0, 10, 1001):
        torch.library.opcheck(torch.ops.commlib.topk_magnitude.default, (x, k))
        torch.library.opcheck(torch.ops.commlib.topk_threshold.default, (x, k, 3))


@needs_extension
def test_meta_shapes() -> None:
    x = torch.empty(50, device="meta")
    for fn in (ops.topk_magnitude, ops.topk_threshold):
        values, idx = fn(x, 7)
        assert values.device.type == "meta" and values.shape == (7,) and values.dtype == torch.float32
        assert idx.shape == (7,) and idx.dtype == torch.int32


@needs_extension
def test_torch_compile_fullgraph() -> None:
    def both(x: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        return (*ops.topk_magnitude(x, k), *ops.topk_threshold(x, k, 9))

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager", dynamic=True)
    for d in (100, 333):
        x = torch.randn(d, generator=torch.Generator().manual_seed(d))
        got = compiled(x, 17)
        expected = oracle(x, 17)
        assert_result(got[:2], x, expected)
        assert_result(got[2:], x, expected)
