"""Sketch families: linearity, adjointness, E[RᵀRg] = g, relative error √(d/s − 1), orthonormal rows and P² = P."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from commlib.compress import TensorContext
from commlib.compress.sketch import BlockSRHTOperator, Sketch
from commlib.errors import WireFormatError
from commlib.ops import reference

FAMILIES = [("srht", 1), ("countsketch", 1), ("countsketch", 3), ("gaussian", 1)]


pytestmark = pytest.mark.usefixtures("one_thread")


def ctx(step: int = 0, key: str = "w", seed: int = 0, rank: int = 0, world: int = 1) -> TensorContext:
    return TensorContext(key, step, seed, rank, world)


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 300), rows=st.integers(1, 5), cols=st.integers(1, 40), seed=st.integers(0, 2**62),
       split=st.integers(0, 300))
def test_count_sketch_is_exactly_linear_in_fp64(d, rows, cols, seed, split):
    """Reference ops, fp64, integer-valued inputs: S(a) + S(b) == S(a + b) bit for bit, and disjoint offsets add up."""
    gen = torch.Generator().manual_seed(seed % 2**32)
    a = torch.randint(-1000, 1000, (d,), generator=gen).double()
    b = torch.randint(-1000, 1000, (d,), generator=gen).double()
    sa, sb, sab = (torch.zeros(rows, cols, dtype=torch.float64) for _ in range(3))
    reference.count_sketch_add_(sa, a, seed)
    reference.count_sketch_add_(sb, b, seed)
    reference.count_sketch_add_(sab, a + b, seed)
    assert torch.equal(sa + sb, sab)
    cut = min(split, d)
    parts = torch.zeros(rows, cols, dtype=torch.float64)
    reference.count_sketch_add_(parts, a[:cut], seed, 0)
    reference.count_sketch_add_(parts, a[cut:], seed, cut)
    assert torch.equal(parts, sa)


@pytest.mark.parametrize("family, rows", FAMILIES)
@pytest.mark.parametrize("d", [1, 100, 5000])
def test_operators_are_linear_and_adjoint(family, rows, d):
    c = Sketch(ratio=8, family=family, rows=rows, block=1024)
    op = c.operator(d, ctx(step=3))
    gen = torch.Generator().manual_seed(d)
    a, b = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    y = torch.randn(op.size, generator=gen)
    torch.testing.assert_close(op.apply(a + b), op.apply(a) + op.apply(b), rtol=1e-4, atol=1e-4)
    lhs, rhs = float(op.apply(a).double() @ y.double()), float(a.double() @ op.transpose(y).double())
    assert math.isclose(lhs, rhs, rel_tol=1e-4, abs_tol=1e-3)
    assert op.size == c.sketch_size(d) and c.wire_bytes(torch.Size([d])).total == 4 * op.size


def _estimates(c: Sketch, g: torch.Tensor, trials: int) -> torch.Tensor:
    return torch.stack([c.compress(g, ctx(step=t)).double() for t in range(trials)])


@pytest.mark.parametrize("family, rows", FAMILIES)
def test_monte_carlo_unbiased(family, rows):
    """E[RᵀRg] = g: along g (a z-test on ⟨RᵀRg, g⟩/‖g‖²) and in norm (‖mean − g‖ at the predicted √((d/s − 1)/T))."""
    d, trials = 2048, 300
    g = torch.randn(d, generator=torch.Generator().manual_seed(7))
    c = Sketch(ratio=16, family=family, rows=rows, block=1024)
    est = _estimates(c, g, trials)
    along = est @ g.double() / g.double().pow(2).sum()
    z = (along.mean() - 1) / (along.std() / math.sqrt(trials))
    assert abs(float(z)) < 4
    ratio = d / c.sketch_size(d)
    err = float((est.mean(0) - g.double()).norm() / g.double().norm())
    assert err < 1.25 * math.sqrt((ratio - 1) / trials)


@pytest.mark.parametrize("family, rows", FAMILIES)
@pytest.mark.parametrize("ratio", [20, 100])
def test_relative_error_matches_theory(family, rows, ratio):
    """‖RᵀRg − g‖/‖g‖ ≈ √(d/s − 1) within 10% (root mean square over trials)."""
    d, trials = 16384, 12
    g = torch.randn(d, generator=torch.Generator().manual_seed(ratio))
    c = Sketch(ratio=ratio, family=family, rows=rows)
    est = _estimates(c, g, trials)
    rms = float(((est - g.double()).pow(2).sum(1) / g.double().pow(2).sum()).mean().sqrt())
    theory = math.sqrt(d / c.sketch_size(d) - 1)
    assert abs(rms / theory - 1) < 0.10, (rms, theory)


def test_srht_orthonormal_rows_and_projection():
    """RRᵀ = I (d a multiple of the block), so P = RᵀR has P² = P, and E‖Pg − g‖² = (1 − s/d)‖g‖²."""
    d = 512
    c = Sketch(ratio=8, family="srht", mode="projection", block=128)
    op = c.operator(d, ctx(step=1))
    eye = torch.eye(op.size)
    rrt = torch.stack([op.apply(op.transpose(e)) for e in eye])
    torch.testing.assert_close(rrt, eye, rtol=0, atol=1e-5)
    assert op.orthonormal
    g = torch.randn(d, generator=torch.Generator().manual_seed(0))
    p = c.compress(g, ctx(step=1))
    torch.testing.assert_close(c.compress(p, ctx(step=1)), p, rtol=0, atol=1e-5)
    residual = torch.stack([(c.compress(g, ctx(step=t)) - g).pow(2).sum() for t in range(200)]).mean()
    assert abs(float(residual / g.pow(2).sum()) - (1 - op.size / d)) < 0.02


@pytest.mark.parametrize("d", [1, 3, 700])
def test_srht_padded_tail_is_still_a_contraction(d):
    """With a zero-padded last block R is a column submatrix of orthonormal rows: ‖Rx‖ ≤ ‖x‖ and ‖(I − P)x‖ ≤ ‖x‖."""
    c = Sketch(ratio=4, family="srht", mode="projection", block=256)
    for step in range(5):
        x = torch.randn(d, generator=torch.Generator().manual_seed(step))
        op = c.operator(d, ctx(step=step))
        assert float(op.apply(x).norm()) <= float(x.norm()) * (1 + 1e-5)
        assert float((c.compress(x, ctx(step=step)) - x).norm()) <= float(x.norm()) * (1 + 1e-5)


@pytest.mark.parametrize("family, rows", FAMILIES)
def test_sketch_is_fresh_per_step_key_seed_and_the_same_on_every_rank(family, rows):
    c = Sketch(ratio=10, family=family, rows=rows)
    x = torch.randn(3000, generator=torch.Generator().manual_seed(1))
    base = c.encode(x, ctx(step=5, seed=7, rank=0, world=4))
    assert torch.equal(base, Sketch(ratio=10, family=family, rows=rows).encode(x, ctx(step=5, seed=7, rank=3, world=4)))
    for other in (ctx(step=6, seed=7), ctx(step=5, seed=8), ctx(step=5, seed=7, key="v")):
        assert not torch.equal(base, c.encode(x, other))


def test_unbiased_srht_is_sqrt_ratio_times_orthonormal():
    rows = torch.tensor([1, 5, 9, 30])
    ortho = BlockSRHTOperator(100, 32, rows, 11, orthonormal=True)
    scaled = BlockSRHTOperator(100, 32, rows, 11, orthonormal=False)
    x = torch.randn(100, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(scaled.apply(x), ortho.apply(x) * math.sqrt(8))
    assert ortho.unbiased_scale == 8 and scaled.unbiased_scale == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 0.5}, "ratio"), ({"ratio": float("nan")}, "ratio"), ({"ratio": True}, "ratio"),
    ({"family": "dct"}, "family"), ({"mode": "biased"}, "mode"),
    ({"family": "countsketch", "mode": "projection"}, "orthonormal"), ({"block": 1000}, "power of two"),
    ({"block": 0}, "block"), ({"rows": 65}, "rows"),
])
def test_bad_configuration_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sketch(**kwargs)


@pytest.mark.parametrize("family, rows", FAMILIES)
def test_malformed_sketch_raises_wire_format_error(family, rows):
    c = Sketch(ratio=10, family=family, rows=rows)
    s = c.sketch_size(500)
    for bad in (torch.zeros(s + 1), torch.zeros(s, dtype=torch.float64), torch.zeros(s - 1)):
        with pytest.raises(WireFormatError):
            c.decode(bad, torch.Size([500]), ctx())
    with pytest.raises(ValueError, match="elements"):
        c.operator(500, ctx()).apply(torch.zeros(499))


@pytest.mark.parametrize("d", [5, 1000, 5000])
def test_ratio_one_keeps_every_row(d):
    """ratio = 1: R is orthogonal on the padded blocks, so RᵀR = I on ℝ^d (no compression, ragged d included)."""
    c = Sketch(ratio=1, mode="projection", block=1024)
    x = torch.randn(d, generator=torch.Generator().manual_seed(d))
    torch.testing.assert_close(c.compress(x, ctx(step=2)), x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family, rows", FAMILIES)
@pytest.mark.parametrize("d", [1, 777])
def test_transpose_into_out_is_the_fresh_transpose(family, rows, d):
    """``transpose(y, out=buf)`` fills every element of ``buf`` (NaN before) with the bits of ``transpose(y)``."""
    c = Sketch(ratio=4, family=family, rows=rows, block=64)
    op = c.operator(d, ctx(step=2))
    y = op.apply(torch.randn(d, generator=torch.Generator().manual_seed(d)))
    buf = torch.full((d,), float("nan"))
    assert op.transpose(y, out=buf) is buf
    assert torch.equal(buf.view(torch.int32), op.transpose(y).view(torch.int32))
    with pytest.raises(ValueError, match="out must"):
        op.transpose(y, out=torch.zeros(d + 1))
