"""RandK: shared indices on every rank, exchange = mean of the local C(x_r), unbiased scaling, determinism."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from commlib.comm.local import run_lockstep
from commlib.compress import RandK, TensorContext

densities = st.floats(min_value=1e-3, max_value=1.0)


def exchange_all(compressors, xs, key="w", step=0, seed=0):
    n = len(xs)
    pairs = enumerate(zip(compressors, xs, strict=True))
    return run_lockstep([c.exchange(x, TensorContext(key, step, seed, r, n)) for r, (c, x) in pairs])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5),
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(torch.Size),
    density=densities,
    unbiased=st.booleans(),
    step=st.integers(0, 10**6),
    seed=st.integers(0, 2**31),
)
def test_shared_indices_and_exchange_is_mean_of_local_compressions(n, shape, density, unbiased, step, seed):
    c = RandK(density=density, unbiased=unbiased)
    contexts = [TensorContext("layer.w", step, seed, r, n) for r in range(n)]
    idx = [c.indices(shape.numel(), ctx) for ctx in contexts]
    assert all(torch.equal(i, idx[0]) for i in idx)
    assert idx[0].numel() == c.count(shape.numel()) == idx[0].unique().numel()
    assert bool((idx[0][1:] > idx[0][:-1]).all())

    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(shape, generator=g) for _ in range(n)]
    out = exchange_all([c] * n, xs, key="layer.w", step=step, seed=seed)
    expected = torch.zeros(shape)
    for x, ctx in zip(xs, contexts, strict=True):
        expected += c.compress(x, ctx)
    assert all(torch.equal(o, out[0]) for o in out)
    torch.testing.assert_close(out[0], expected / n, rtol=0, atol=0)
    kept = torch.zeros(shape.numel(), dtype=torch.bool)
    kept[idx[0]] = True
    scale = shape.numel() / c.count(shape.numel()) if unbiased else 1.0
    mean = sum(xs) / n
    torch.testing.assert_close(out[0].reshape(-1)[kept], mean.reshape(-1)[kept] * scale, rtol=1e-5, atol=1e-6)
    assert not bool(out[0].reshape(-1)[~kept].any())


def test_unbiased_scaling_averages_to_x():
    d, steps = 50, 4000
    x = torch.randn(d, generator=torch.Generator().manual_seed(1))
    c = RandK(density=0.2, unbiased=True)
    total = torch.zeros(d, dtype=torch.float64)
    for step in range(steps):
        total += c.compress(x, TensorContext("w", step, 0, 0, 1)).double()
    # per coordinate: Var = (d/k - 1)·x_i² = 4·x_i²; allow 6 standard errors
    err = (total / steps - x.double()).abs()
    assert bool((err <= 6 * (4 * x.double() ** 2 / steps).sqrt() + 1e-9).all())


def test_indices_change_with_step_key_and_seed_but_not_rank():
    c = RandK(density=0.1)
    base = c.indices(1000, TensorContext("w", 5, 7, 0, 4))
    assert torch.equal(base, c.indices(1000, TensorContext("w", 5, 7, 3, 4)))
    for ctx in (TensorContext("w", 6, 7, 0, 4), TensorContext("v", 5, 7, 0, 4), TensorContext("w", 5, 8, 0, 4)):
        assert not torch.equal(base, c.indices(1000, ctx))


def test_determinism_across_runs():
    xs = [torch.randn(33, 17, generator=torch.Generator().manual_seed(r)) for r in range(3)]
    c = RandK(density=0.05)
    first = exchange_all([c] * 3, xs, step=11, seed=4)
    second = exchange_all([RandK(density=0.05)] * 3, [x.clone() for x in xs], step=11, seed=4)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("d", [1, 7, 129, 1000])
def test_round_trip_odd_lengths(d):
    x = torch.randn(d, generator=torch.Generator().manual_seed(d))
    c = RandK(density=0.3)
    ctx = TensorContext("w", 2, 0, 0, 1)
    payload = c.encode(x, ctx)
    assert payload.dtype == torch.float32 and payload.numel() == c.count(d)
    out = c.decode(payload, x.shape, ctx)
    idx = c.indices(d, ctx)
    assert torch.equal(out[idx], x[idx])
    assert int((out != 0).sum()) == c.count(d)


def test_wire_bytes_are_values_only():
    c = RandK(density=0.01)
    wb = c.wire_bytes(torch.Size([100, 30]))
    assert (wb.values, wb.indices, wb.scales) == (4 * 30, 0, 0)
    assert not c.compressible(torch.Size([0, 3]))
    assert c.compressible(torch.Size([1]))


@pytest.mark.parametrize("n, k", [(20, 3), (20, 10)])
def test_uniform_subset_is_uniform(n, k):
    """Every coordinate is kept with probability k/n (chi-square style bound), in both sampling regimes."""
    from commlib.compress.randk import uniform_subset

    trials = 4000
    counts = torch.zeros(n)
    for t in range(trials):
        idx = uniform_subset(n, k, torch.Generator().manual_seed(t))
        assert idx.numel() == k and idx.unique().numel() == k and bool((idx[1:] > idx[:-1]).all())
        counts[idx] += 1
    expected = trials * k / n
    assert float(((counts - expected) ** 2 / expected).sum()) < 3 * n  # ~n ± √(2n) under uniformity
    assert float((counts - expected).abs().max()) < 5 * expected**0.5
