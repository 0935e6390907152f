"""Flag Aggregator: Gram form vs a direct SVD of the stacked columns, the notes' analytic oracles, invariances."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from commlib.robust import FlagAggregator, Mean, combine, flag_weights, gram

F64 = torch.float64


def rand(n: int, d: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def flag_svd(X: torch.Tensor, m: int, lam: float, iters: int, eps: float = 1e-7, tol: float = 1e-10) -> torch.Tensor:
    """Independent oracle: the authors' IRLS written in ℝᵈ — an SVD of the stacked d × (n + n(n−1)) matrix
    of columns a_i·x̂_i and c·b_ij·(x̂_i − x̂_j), weights a = (s + ε)^(−1/4), output (1/m)·U Uᵀ Σ x̂_i."""
    n = X.shape[0]
    xh = X / X.norm(dim=1, keepdim=True)
    pairs = list(itertools.permutations(range(n), 2))
    c = lam / (n * (n - 1))
    a = torch.ones(n, dtype=F64)
    b = torch.ones(len(pairs), dtype=F64)
    best, best_obj = None, float("inf")
    for _ in range(iters):
        cols = [a[i] * xh[i] for i in range(n)]
        if lam > 0:
            cols += [c * b[k] * (xh[i] - xh[j]) for k, (i, j) in enumerate(pairs)]
        U, S, _ = torch.linalg.svd(torch.stack(cols, dim=1), full_matrices=False)
        r = min(m, int((S**2 > S[0] ** 2 * 1e-12).sum()))
        U = U[:, :r]
        proj = xh @ U
        sq = (proj**2).sum(dim=1)
        obj = float((1 - sq).clamp_min(0).sqrt().sum())
        if obj >= best_obj:
            break
        dec = best_obj - obj
        best, best_obj = U, obj
        if obj <= tol or dec <= tol:
            break
        a = ((1 - sq).abs() + eps) ** -0.25
        b = torch.stack([((1 - ((proj[i] - proj[j]) ** 2).sum()).abs() + eps) ** -0.25 for i, j in pairs])
    return best @ (best.T @ xh.sum(dim=0)) / m


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("lam", [0.0, 3.0, 40.0])
@pytest.mark.parametrize("iters", [1, 6])
def test_gram_form_equals_direct_svd(m, lam, iters):
    X = rand(6, 300, seed=10 * m + iters) * torch.linspace(0.5, 4.0, 6, dtype=F64)[:, None]
    X[3] += 2.0 * X[0]  # correlated rows, so the weights are far from uniform
    out = FlagAggregator(m=m, lam=lam, max_iter=iters)(X)
    ref = flag_svd(X, m, lam, iters)
    assert torch.allclose(out, ref, rtol=0, atol=1e-10), (out - ref).abs().max()


def test_irls_moves_away_from_the_flag_mean():
    X = rand(6, 300, seed=3)
    X[3] += 2.0 * X[0]
    one, many = FlagAggregator(m=2, max_iter=1)(X), FlagAggregator(m=2, max_iter=10)(X)
    assert (one - many).norm() > 1e-3 * one.norm()


@pytest.mark.parametrize("m", [1, 2, 3])
def test_all_equal_inputs_give_n_over_m_times_the_unit_vector(m):
    g = rand(1, 2000, seed=1)[0] * 7.0
    X = g.repeat(10, 1)
    assert torch.allclose(FlagAggregator(m=m)(X), 10 / m * unit(g), rtol=1e-10, atol=1e-12)
    assert torch.allclose(FlagAggregator(m=m, rescale=True)(X), g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("iters", [1, 10])
def test_orthogonal_attackers_m_decides_what_survives(iters):
    n, f, d = 10, 3, 1000
    h = rand(1, d, seed=2)[0]
    b = rand(1, d, seed=3)[0]
    b = unit(b - (b @ h) / (h @ h) * h)  # unit b ⊥ h
    X = torch.cat([h.repeat(n - f, 1), (1e6 * b).repeat(f, 1)])
    hh = unit(h)
    expected = {1: (n - f) * hh, 2: ((n - f) * hh + f * b) / 2, 3: ((n - f) * hh + f * b) / 3}
    for m, want in expected.items():
        out = FlagAggregator(m=m, max_iter=iters)(X)
        assert torch.allclose(out, want, rtol=1e-6, atol=1e-9), (m, (out - want).norm())


@pytest.mark.parametrize("c", [0.5, 3.0, 1e6])
def test_sign_flip_flag_keeps_direction_mean_flips(c):
    n, f = 10, 4
    g = rand(1, 1000, seed=4)[0]
    X = torch.cat([g.repeat(n - f, 1), (-c * g).repeat(f, 1)])
    assert torch.allclose(FlagAggregator(m=1)(X), (n - 2 * f) * unit(g), rtol=1e-6, atol=1e-9)
    mean = Mean()(X)
    assert torch.allclose(mean, ((n - f) - f * c) / n * g, rtol=1e-9)
    assert (mean @ g > 0) == (f * c < n - f)


def test_m_at_least_n_independent_inputs_is_the_scaled_sum_of_units():
    X = rand(5, 400, seed=5)
    for m in (5, 7):
        want = (X / X.norm(dim=1, keepdim=True)).sum(dim=0) / m
        assert torch.allclose(FlagAggregator(m=m)(X), want, rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 8), m=st.integers(1, 4), lam=st.sampled_from([0.0, 5.0]),
       iters=st.sampled_from([1, 4]))
def test_invariant_to_positive_rescaling_of_each_input(seed, n, m, lam, iters):
    X = rand(n, 64, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    scales = torch.exp(4 * torch.rand(n, 1, generator=gen, dtype=F64) - 2)
    agg = FlagAggregator(m=m, lam=lam, max_iter=iters)
    a, b = agg(X), agg(scales * X)
    assert torch.allclose(a, b, rtol=1e-8, atol=1e-9 * (1 + a.norm())), (a - b).abs().max()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 8), m=st.integers(1, 3), iters=st.sampled_from([1, 4]))
def test_permutation_invariant(seed, n, m, iters):
    X = rand(n, 50, seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    agg = FlagAggregator(m=m, lam=2.0, max_iter=iters)
    a, b = agg(X), agg(X[perm])
    assert torch.allclose(a, b, rtol=1e-8, atol=1e-9 * (1 + a.norm()))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8), m=st.integers(1, 4))
def test_output_norm_at_most_n_over_m_and_in_the_span(seed, n, m):
    X = rand(n, 40, seed)
    w = FlagAggregator(m=m).weights_from_gram(gram(X))
    out = combine(X, w)
    assert out.norm() <= n / m * (1 + 1e-9)
    assert torch.allclose(out, w @ X, rtol=1e-12, atol=1e-12)


def test_weights_from_summed_shard_grams_reproduce_the_output():
    X = rand(7, 900, seed=6)
    shards = X.split(250, dim=1)
    G = sum(gram(s) for s in shards)
    agg = FlagAggregator(m=2, lam=1.0, max_iter=5)
    assert torch.allclose(combine(X, agg.weights_from_gram(G)), agg(X), rtol=1e-10, atol=1e-12)
    assert torch.equal(flag_weights(G, 2, 1.0, 5), agg.weights_from_gram(G))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 0.0])
def test_zero_and_non_finite_rows_are_excluded(bad):
    X = rand(6, 100, seed=7)
    Y = X.clone()
    Y[[1, 4]] = bad
    agg = FlagAggregator(m=2, max_iter=4)
    out = agg(Y)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, agg(X[[0, 2, 3, 5]]), rtol=1e-12, atol=1e-12)
    w = agg.weights_from_gram(gram(Y))
    assert w[1] == 0 and w[4] == 0


def test_all_rows_bad_gives_zero():
    X = torch.full((3, 5), float("nan"), dtype=F64)
    assert torch.equal(FlagAggregator()(X), torch.zeros(5, dtype=F64))
    assert torch.equal(FlagAggregator()(torch.zeros(3, 5)), torch.zeros(5))


def test_fp32_is_close_to_fp64_and_repeatable():
    X = rand(8, 5000, seed=8)
    agg = FlagAggregator(m=2, max_iter=5)
    a = agg(X.float())
    assert a.dtype == torch.float32
    assert torch.allclose(a.double(), agg(X), rtol=1e-4, atol=1e-5)
    assert torch.equal(a, agg(X.float()))


@pytest.mark.parametrize("kwargs, match", [
    ({"m": 0}, "m"), ({"m": 1.5}, "m"), ({"lam": -1.0}, "lam"), ({"lam": float("inf")}, "lam"),
    ({"max_iter": 0}, "max_iter"), ({"tol": 0.0}, "tol"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlagAggregator(**kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        FlagAggregator()(torch.ones(5))
    with pytest.raises(ValueError, match="floating"):
        FlagAggregator()(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="square"):
        flag_weights(torch.ones(3, 4))
