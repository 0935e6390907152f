"""TopK: contraction, exact k, tie-break to the lower index, exchange = mean of the local C(x_r)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from commlib.comm.local import run_lockstep
from commlib.compress import TensorContext, TopK

finite32 = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)
vectors = st.lists(finite32, min_size=1, max_size=300).map(lambda v: torch.tensor(v, dtype=torch.float32))
densities = st.floats(min_value=1e-3, max_value=1.0)


def exchange_all(compressors, xs, key="w", step=0, seed=0):
    n = len(xs)
    pairs = enumerate(zip(compressors, xs, strict=True))
    return run_lockstep([c.exchange(x, TensorContext(key, step, seed, r, n)) for r, (c, x) in pairs])


@settings(max_examples=60, deadline=None)
@given(x=vectors, density=densities)
def test_contraction(x, density):
    c = TopK(density=density)
    k, d = c.count(x.numel()), x.numel()
    err = (c.compress(x).double() - x.double()).pow(2).sum()
    bound = (1 - k / d) * x.double().pow(2).sum()
    assert err <= bound * (1 + 1e-12) + 1e-300


@settings(max_examples=60, deadline=None)
@given(x=vectors, density=densities)
def test_exactly_k_entries_kept(x, density):
    c = TopK(density=density)
    values, idx = c.select(x)
    k = c.count(x.numel())
    assert idx.numel() == k == values.numel()
    assert idx.unique().numel() == k
    assert torch.equal(values, x[idx])
    kept = torch.zeros(x.numel(), dtype=torch.bool)
    kept[idx] = True
    dense = c.compress(x)
    assert torch.equal(dense[kept], x[kept])
    assert torch.equal(dense[~kept], torch.zeros(x.numel() - k))


@settings(max_examples=60, deadline=None)
@given(
    x=st.lists(st.sampled_from([-2.0, -1.0, 0.0, 1.0, 2.0]), min_size=1, max_size=60).map(torch.tensor),
    k=st.integers(min_value=1, max_value=60),
)
def test_ties_go_to_the_lower_index(x, k):
    k = min(k, x.numel())
    _, idx = TopK(k=k).select(x)
    expected = sorted(range(x.numel()), key=lambda i: (-abs(float(x[i])), i))[:k]
    assert idx.tolist() == sorted(expected)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), d=st.integers(1, 200), density=densities, seed=st.integers(0, 2**31))
def test_exchange_is_mean_of_local_compressions(n, d, density, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(d, generator=g) for _ in range(n)]
    c = TopK(density=density)
    out = exchange_all([c] * n, xs)
    expected = torch.zeros(d)
    for x in xs:
        expected += c.compress(x)
    assert all(torch.equal(o, out[0]) for o in out)
    torch.testing.assert_close(out[0], expected / n, rtol=0, atol=0)


@pytest.mark.parametrize("d", [1, 7, 129, 1000])
def test_round_trip_odd_lengths(d):
    x = torch.randn(d, generator=torch.Generator().manual_seed(d))
    c = TopK(density=0.1)
    ctx = TensorContext("w", 0, 0, 0, 1)
    out = torch.zeros(d)
    c.decode_add(c.encode(x, ctx), out, ctx)
    assert torch.equal(out, c.compress(x))
    assert int((out != 0).sum()) == c.count(d)


def test_empty_tensor_is_not_compressible():
    assert not TopK(density=0.5).compressible(torch.Size([0]))
    assert not TopK(k=3).compressible(torch.Size([2]))
    assert TopK(k=3).compressible(torch.Size([3]))
