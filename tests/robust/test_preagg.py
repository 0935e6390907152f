"""Pre-aggregators (NNM, ARC, clipping, bucketing), their Gram-space matrices, and Compose."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from commlib.robust import (
    ARC,
    MDA,
    NNM,
    Bucketing,
    Clipping,
    Compose,
    CoordinateMedian,
    FlagAggregator,
    GeometricMedian,
    Krum,
    Mean,
    MultiKrum,
    TrimmedMean,
    combine,
    gram,
    mix,
    transform_gram,
)

F64 = torch.float64


def rand(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_nnm_byzfl_parity():
    X = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=F64)
    want = torch.tensor([[2.5, 3.5, 4.5], [2.5, 3.5, 4.5], [5.5, 6.5, 7.5]], dtype=F64)
    assert torch.equal(NNM(1)(X), want)


def test_nnm_by_brute_force():
    X = rand(8, 5, seed=1)
    f = 3
    D = torch.cdist(X, X)
    want = torch.stack([X[D[i].argsort()[: 8 - f]].mean(dim=0) for i in range(8)])
    assert torch.allclose(NNM(f)(X), want, rtol=1e-12, atol=1e-12)


def test_arc_clips_the_k_largest_to_the_next_norm():
    norms = torch.tensor([1.0, 9.0, 3.0, 7.0, 2.0, 5.0, 4.0, 8.0, 6.0, 10.0], dtype=F64)
    X = rand(10, 6, seed=2)
    X = X / X.norm(dim=1, keepdim=True) * norms[:, None]
    f = 2
    k = math.floor(2 * f / 10 * (10 - f))  # 3: norms 10, 9, 8 are clipped to 7
    assert k == 3
    out = ARC(f)(X)
    want = torch.minimum(norms, torch.tensor(7.0, dtype=F64))
    assert torch.allclose(out.norm(dim=1), want, rtol=1e-12)
    assert torch.allclose(torch.nn.functional.cosine_similarity(out, X, dim=1), torch.ones(10, dtype=F64))
    assert torch.equal(ARC(0)(X), X)


def test_static_clipping():
    X = rand(6, 4, seed=3) * torch.tensor([0.1, 1.0, 5.0, 0.5, 20.0, 0.0], dtype=F64)[:, None]
    out = Clipping(c=1.0)(X)
    assert torch.allclose(out.norm(dim=1), X.norm(dim=1).clamp_max(1.0), rtol=1e-12)
    small = X.norm(dim=1) <= 1.0
    assert torch.equal(out[small], X[small])


def test_bucketing_is_seeded_by_step_and_partitions_the_inputs():
    X = rand(10, 3, seed=4)
    b = Bucketing(s=3, seed=7)
    W0, W0b, W1 = b.matrix_from_gram(gram(X), 0), b.matrix_from_gram(gram(X), 0), b.matrix_from_gram(gram(X), 1)
    assert torch.equal(W0, W0b) and not torch.equal(W0, W1)
    assert W0.shape == (4, 10)
    assert torch.equal((W0 > 0).sum(dim=0), torch.ones(10, dtype=torch.int64))  # each input in one bucket
    assert torch.allclose(W0.sum(dim=1), torch.ones(4, dtype=F64))
    assert sorted((W0 > 0).sum(dim=1).tolist()) == [1, 3, 3, 3]
    out = b(X, step=0)
    for row, w in zip(out, W0):
        assert torch.allclose(row, X[w > 0].mean(dim=0))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 10), f=st.integers(0, 3),
       which=st.sampled_from(["nnm", "arc", "clip"]))
def test_per_row_preaggregators_are_permutation_equivariant(seed, n, f, which):
    f = min(f, n - 1)
    X = rand(n, 5, seed) * torch.linspace(0.2, 3.0, n, dtype=F64)[:, None]
    pre = {"nnm": NNM(f), "arc": ARC(f), "clip": Clipping(1.0)}[which]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(pre(X)[perm], pre(X[perm]), rtol=1e-12, atol=1e-12)


def test_non_finite_rows_pass_through_and_do_not_contaminate():
    X = rand(7, 4, seed=5)
    X[2] = float("nan")
    X[5, 1] = float("inf")
    for pre in (NNM(2), ARC(2), Clipping(0.5)):
        out = pre(X)
        keep = [0, 1, 3, 4, 6]
        assert torch.isfinite(out[keep]).all(), pre
        assert torch.isnan(out[2]).all() and torch.isinf(out[5, 1]), pre
    # NNM on the five finite rows with f reduced by the two bad ones: each mixes 5 − 0 = 5 rows
    assert torch.allclose(NNM(2)(X)[[0, 1, 3, 4, 6]], X[[0, 1, 3, 4, 6]].mean(dim=0).expand(5, -1))
    out = Bucketing(s=2)(X)
    W = Bucketing(s=2).matrix_from_gram(gram(X))
    tainted = (W[:, [2, 5]] > 0).any(dim=1)
    assert not torch.isfinite(out[tainted]).all(dim=1).any()
    assert torch.isfinite(out[~tainted]).all()


def test_mix_never_multiplies_a_bad_row_by_zero():
    X = torch.tensor([[1.0, 2.0], [float("inf"), 0.0]])
    W = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=F64)
    out = mix(X, W)
    assert torch.equal(out[0], X[0])
    assert torch.isinf(out[1, 0])


@pytest.mark.parametrize("rule", [Krum(2), MultiKrum(2), MDA(2), GeometricMedian(), FlagAggregator(m=2, max_iter=3)],
                         ids=repr)
@pytest.mark.parametrize("pres", [[NNM(2)], [ARC(2)], [Clipping(2.0)], [Bucketing(s=2, seed=3)],
                                  [Clipping(3.0), NNM(1)]], ids=repr)
def test_compose_gram_path_equals_the_direct_path(rule, pres):
    X = rand(14, 200, seed=6) * torch.linspace(0.5, 3.0, 14, dtype=F64)[:, None]
    X[3] = float("nan")
    pipeline = Compose(pres, rule)
    G = sum(gram(s) for s in X.split(64, dim=1))
    w = pipeline.weights_from_gram(G, step=5)
    assert w[3] == 0
    tol = 1e-6 if isinstance(rule, GeometricMedian) else 1e-10
    assert torch.allclose(combine(X, w), pipeline(X, step=5), rtol=tol, atol=tol)


def test_transform_gram_is_w_g_wt_and_marks_bad_outputs():
    X = rand(5, 8, seed=7)
    W = torch.rand(3, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.allclose(transform_gram(W, gram(X)), gram(W @ X), rtol=1e-12)
    X[1] = float("inf")
    W[0, 1] = 0.0
    G2 = transform_gram(W, gram(X))
    assert torch.isfinite(G2[0, 0]) and torch.isnan(G2[1, 1]) and torch.isnan(G2[0, 1])


def test_compose_runs_in_order_and_checks_types():
    X = rand(9, 6, seed=8)
    pipeline = Compose([Clipping(1.0), NNM(2)], TrimmedMean(2))
    assert torch.allclose(pipeline(X), TrimmedMean(2)(NNM(2)(Clipping(1.0)(X))))
    with pytest.raises(ValueError, match="PreAggregator"):
        Compose([Mean()], Mean())
    with pytest.raises(ValueError, match="Aggregator"):
        Compose([], NNM(1))
    with pytest.raises(ValueError, match="Gram-based"):
        Compose([NNM(1)], CoordinateMedian()).weights_from_gram(gram(X))


@pytest.mark.parametrize("make", [lambda: NNM(-1), lambda: ARC(1.5), lambda: Clipping(0.0), lambda: Clipping(-2),
                                  lambda: Bucketing(s=0), lambda: Bucketing(seed=-1)])
def test_bad_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        NNM(1)(torch.ones(4))
    with pytest.raises(ValueError, match="square"):
        NNM(1).matrix_from_gram(torch.ones(2, 3))
