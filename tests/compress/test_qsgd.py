"""QSGD: unbiasedness and the variance bound by Monte Carlo, code range, zero buckets, determinism."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from commlib.comm.local import run_lockstep
from commlib.compress import QSGD, TensorContext

SAMPLES = 400

configs = st.builds(
    QSGD,
    levels=st.sampled_from([1, 2, 3, 7, 20, 127]),
    bucket_size=st.sampled_from([1, 5, 16, 128]),
    norm=st.sampled_from(["l2", "max"]),
)
finite32 = st.floats(min_value=-100, max_value=100, allow_nan=False, allow_subnormal=False, width=32)
vectors = st.lists(finite32, min_size=1, max_size=150).map(lambda v: torch.tensor(v, dtype=torch.float32))


def exchange_all(compressors, xs, key="w", step=0, seed=0):
    n = len(xs)
    pairs = enumerate(zip(compressors, xs, strict=True))
    return run_lockstep([c.exchange(x, TensorContext(key, step, seed, r, n)) for r, (c, x) in pairs])


def samples(c: QSGD, x: torch.Tensor, seed: int) -> torch.Tensor:
    """``SAMPLES`` independent quantizations of ``x`` (one per step), float64, stacked."""
    return torch.stack([c.compress(x, TensorContext("w", step, seed, 0, 1)).double() for step in range(SAMPLES)])


@settings(max_examples=25, deadline=None)
@given(c=configs, x=vectors, seed=st.integers(0, 2**31))
def test_unbiased(c, x, seed):
    # E‖mean of N samples − x‖² ≤ bound·‖x‖²/N; the sum of many independent terms rarely exceeds 25× its mean
    norm2 = float(x.double().pow(2).sum())
    err2 = float((samples(c, x, seed).mean(0) - x.double()).pow(2).sum())
    assert err2 <= 25 * c.variance_bound(x.numel()) * norm2 / SAMPLES + 1e-9 * norm2


@settings(max_examples=25, deadline=None)
@given(c=configs, x=vectors, seed=st.integers(0, 2**31))
def test_variance_bound(c, x, seed):
    norm2 = float(x.double().pow(2).sum())
    var = float((samples(c, x, seed) - x.double()).pow(2).sum(1).mean())
    assert var <= 1.25 * c.variance_bound(x.numel()) * norm2 + 1e-9 * norm2


def test_variance_bound_is_nearly_tight_for_spread_vectors():
    # every element 1/√d of the norm, s = 1: each rounds up with p = 1/√d, so E‖Q−x‖² ≈ (√d − 1)·‖x‖²
    c = QSGD(levels=1, bucket_size=128)
    x = torch.ones(128)
    var = float((samples(c, x, 0) - 1).pow(2).sum(1).mean())
    assert 0.8 * c.variance_bound(128) * 128 <= var <= c.variance_bound(128) * 128


@settings(max_examples=40, deadline=None)
@given(c=configs, x=vectors, seed=st.integers(0, 2**31))
def test_one_level_per_element(c, x, seed):
    """Q(x_i) is sign(x_i)·scale·l/s with l ∈ {floor(y_i), floor(y_i)+1}: same sign, within one step of x_i."""
    q = c.compress(x, TensorContext("w", 0, seed, 0, 1)).double()
    xd = x.double()
    pad = (-x.numel()) % c.bucket_size
    buckets = torch.cat([xd, xd.new_zeros(pad)]).view(-1, c.bucket_size)
    scale = buckets.norm(dim=1) if c.norm == "l2" else buckets.abs().amax(dim=1)
    step = (scale / c.s).repeat_interleave(c.bucket_size)[: x.numel()]
    assert bool((q * xd >= 0).all())
    assert bool(((q - xd).abs() <= step * (1 + 1e-5)).all())


def test_level_mapping():
    assert [(QSGD(bits=b).s, QSGD(bits=b).code_bits) for b in (2, 4, 8)] == [(1, 2), (7, 4), (127, 8)]
    assert [QSGD(levels=s).code_bits for s in (1, 2, 7, 8, 127)] == [2, 4, 4, 8, 8]


def test_zero_buckets_give_zero_without_nan():
    c = QSGD(bits=4, bucket_size=4)
    x = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -2.0, 0.0, 3.0, 0.0, 0.0])
    ctx = TensorContext("w", 0, 0, 0, 1)
    payload = c.encode(x, ctx)
    scales = payload[:12].clone().view(torch.float32)
    assert scales[0] == 0 and scales[2] == 0
    q = c.compress(x, ctx)
    assert bool(torch.isfinite(q).all())
    assert not bool(q[:4].any()) and not bool(q[8:].any())
    zero = c.compress(torch.zeros(3, 5), ctx)
    assert zero.shape == (3, 5) and not bool(zero.any())


def test_max_norm_keeps_the_largest_element_exactly():
    c = QSGD(bits=2, bucket_size=8, norm="max")
    x = torch.tensor([0.5, -4.0, 1.0, 3.0, 0.0, 0.0, 2.0, -1.0, 7.0])
    q = c.compress(x, TensorContext("w", 3, 1, 0, 1))
    assert q[1] == -4.0 and q[8] == 7.0


@pytest.mark.parametrize("d", [1, 7, 129, 1000])
@pytest.mark.parametrize("c", [QSGD(bits=2), QSGD(bits=8, bucket_size=64), QSGD(levels=5, bucket_size=10, norm="max")])
def test_round_trip_odd_lengths_and_exchange(d, c):
    g = torch.Generator().manual_seed(d)
    xs = [torch.randn(d, generator=g) for _ in range(3)]
    contexts = [TensorContext("w", 4, 9, r, 3) for r in range(3)]
    payload = c.encode(xs[0], contexts[0])
    assert payload.numel() == c.payload_bytes(xs[0].shape) == c.wire_bytes(xs[0].shape).total
    out = exchange_all([c] * 3, xs, step=4, seed=9)
    expected = torch.zeros(d)
    for x, ctx in zip(xs, contexts, strict=True):
        expected += c.compress(x, ctx)
    assert all(torch.equal(o, out[0]) for o in out)
    torch.testing.assert_close(out[0], expected / 3, rtol=0, atol=0)


def test_empty_tensor():
    c = QSGD(bits=4)
    assert not c.compressible(torch.Size([0]))
    assert c.wire_bytes(torch.Size([0, 4])).total == 0
    ctx = TensorContext("w", 0, 0, 0, 1)
    assert c.compress(torch.zeros(0, 4), ctx).shape == (0, 4)


def test_determinism_and_per_rank_streams():
    c = QSGD(bits=4, bucket_size=32)
    x = torch.randn(500, generator=torch.Generator().manual_seed(0))
    first = c.encode(x, TensorContext("w", 3, 5, 1, 4))
    again = QSGD(bits=4, bucket_size=32).encode(x.clone(), TensorContext("w", 3, 5, 1, 4))
    assert torch.equal(first, again)
    for other in (TensorContext("w", 3, 5, 2, 4), TensorContext("w", 4, 5, 1, 4), TensorContext("w", 3, 6, 1, 4)):
        assert not torch.equal(first, c.encode(x, other))
    xs = [torch.randn(40, 9, generator=torch.Generator().manual_seed(r)) for r in range(3)]
    a = exchange_all([c] * 3, xs, step=2, seed=1)
    b = exchange_all([QSGD(bits=4, bucket_size=32)] * 3, [x.clone() for x in xs], step=2, seed=1)
    assert all(torch.equal(u.view(torch.int32), v.view(torch.int32)) for u, v in zip(a, b, strict=True))


def test_wire_bytes_fields():
    wb = QSGD(bits=4, bucket_size=128).wire_bytes(torch.Size([10, 30]))
    assert (wb.values, wb.indices, wb.scales) == (150, 0, 4 * 3)
    wb = QSGD(levels=1, bucket_size=7).wire_bytes(torch.Size([15]))
    assert (wb.values, wb.scales) == (4, 12)
