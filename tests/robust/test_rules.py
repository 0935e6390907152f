"""The rules: analytic oracles (notes §6), hand-checked cases, invariances, the non-finite policy, Gram paths."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from commlib.robust import (
    MDA,
    NNM,
    Bulyan,
    CenteredClipping,
    Compose,
    CoordinateMedian,
    FlagAggregator,
    GeometricMedian,
    Krum,
    Meamed,
    Mean,
    MultiKrum,
    Phocas,
    TrimmedMean,
    combine,
    gram,
)

F64 = torch.float64


def rand(n: int, d: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rules(f: int) -> list:
    """Every rule, configured for f Byzantine inputs (n ≥ 4f + 3 covers all requirements)."""
    return [Mean(), CoordinateMedian(), TrimmedMean(f), Meamed(f), Phocas(f), GeometricMedian(), Krum(f),
            MultiKrum(f), MultiKrum(f, m=2), Bulyan(f), CenteredClipping(tau=1e9), MDA(f), FlagAggregator(m=2)]


NAMES = [type(r).__name__ + ("" if not isinstance(r, MultiKrum) or r.m is None else "(m)") for r in rules(1)]


# ---------------------------------------------------------------------------------------------------------
# Oracles 1 and 2: all honest equal; f huge outliers
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(len(NAMES)), ids=NAMES)
@pytest.mark.parametrize("nnm", [False, True])
def test_all_equal_inputs_return_that_vector(i, nnm):
    g = rand(1, 1500, seed=1)[0]
    X = g.repeat(11, 1)
    rule = rules(2)[i]
    agg = Compose([NNM(2)] if nnm else [], rule)
    out = agg(X)
    if isinstance(rule, FlagAggregator):  # FA: (n/m)·g/‖g‖ (norm n/m, even though the rank is 1)
        assert torch.allclose(out, 11 / 2 * g / g.norm(), rtol=1e-9)
    else:
        assert torch.allclose(out, g, rtol=1e-12, atol=1e-12)


def test_centered_clipping_from_zero_with_tau_above_the_norm_returns_g():
    g = rand(1, 500, seed=2)[0]
    assert torch.allclose(CenteredClipping(tau=float(g.norm()) * 1.01)(g.repeat(6, 1)), g, rtol=1e-12)


def outliers(n: int = 10, f: int = 3, d: int = 1000, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    h = rand(1, d, seed)[0]
    return h, torch.cat([h.repeat(n - f, 1), h + 1e6 * rand(f, d, seed + 1)])


@pytest.mark.parametrize("rule", [CoordinateMedian(), TrimmedMean(3), Meamed(3), Phocas(3), Krum(3), MultiKrum(3),
                                  MDA(3)], ids=lambda r: type(r).__name__)
def test_f_huge_outliers_exact_rules_return_h(rule):
    h, X = outliers()
    out = rule(X)
    assert torch.allclose(out, h, rtol=1e-14, atol=0)  # averages of copies of h: h up to rounding
    if isinstance(rule, (CoordinateMedian, Krum)):
        assert torch.equal(out, h)
    assert (Mean()(X) - h).norm() > 1e5  # the mean fails: the test has power


def test_f_huge_outliers_bulyan_returns_h():
    h, X = outliers(n=15, f=3)
    assert torch.allclose(Bulyan(3)(X), h, rtol=1e-14, atol=0)


def test_f_huge_outliers_geometric_median_within_1e6():
    h, X = outliers()
    assert (GeometricMedian()(X) - h).norm() < 1e-6
    assert (combine(X, GeometricMedian().weights_from_gram(gram(X))) - h).norm() < 1e-6


def test_geometric_median_gram_path_leaves_a_medoid_that_is_not_the_median():
    """Workers that share a large component: ``G`` is ~1e8 while the rows are ~50 apart. Started at the medoid,
    Weiszfeld on the coefficients stayed there, since the distance from the medoid to itself (~ν after a step)
    cancels to rounding noise of ``G`` and keeps its weight at 1/ν. The medoid is not the median (Kuhn's
    condition fails), so the Gram path must reach the median the vector path finds."""
    common = 100.0 * torch.randn(10_003, generator=torch.Generator().manual_seed(99), dtype=F64)
    X = torch.stack([common + torch.randn(10_003, generator=torch.Generator().manual_seed(r), dtype=F64)
                     for r in range(4)])
    weights = GeometricMedian().weights_from_gram(gram(X))
    assert float(weights.max()) < 0.3  # all four near 1/4, not one-hot at the medoid
    assert (combine(X, weights) - GeometricMedian()(X)).abs().max() < 1e-4  # the rows differ by ~1 per coordinate


def test_f_huge_outliers_centered_clipping_bound():
    h, X = outliers()
    tau = float(h.norm()) * 1.5
    v = CenteredClipping(tau=tau)(X)
    assert (v - h).norm() <= 3 / 10 * (tau + h.norm()) * (1 + 1e-12)


def test_f_huge_outliers_flag_keeps_the_honest_direction():
    h, X = outliers()
    out = FlagAggregator(m=1)(X)
    assert torch.nn.functional.cosine_similarity(out, h, dim=0) > 0.999


# ---------------------------------------------------------------------------------------------------------
# Hand-checked values
# ---------------------------------------------------------------------------------------------------------


def test_byzfl_parity_on_the_3x3_example():
    X = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=F64)
    for rule in (Mean(), CoordinateMedian(), TrimmedMean(1), GeometricMedian(), CenteredClipping(tau=100.0)):
        assert torch.allclose(rule(X), torch.tensor([4.0, 5, 6], dtype=F64), atol=1e-8), rule
    for rule in (Meamed(1), MDA(1)):
        assert torch.allclose(rule(X), torch.tensor([2.5, 3.5, 4.5], dtype=F64)), rule


def test_median_of_an_even_count_is_the_mean_of_the_middle_pair():
    X = torch.tensor([[1.0, 10.0], [2.0, 0.0], [4.0, -3.0], [100.0, 5.0]])
    assert torch.equal(CoordinateMedian()(X), torch.tensor([3.0, 2.5]))


def test_trimmed_mean_meamed_phocas_by_hand():
    X = torch.tensor([[0.0], [1.0], [2.0], [10.0], [-50.0], [3.0], [4.0]], dtype=F64)  # sorted: -50 0 1 2 3 4 10
    assert TrimmedMean(2)(X).item() == pytest.approx((1 + 2 + 3) / 3)
    # Meamed(2): median 2, the 5 closest: 2, 1, 3, 0, 4
    assert Meamed(2)(X).item() == pytest.approx(2.0)
    # Phocas(1): trimmed mean (0+1+2+3+4)/5 = 2 → the 6 closest to 2: 2 1 3 0 4 10 → 20/6
    assert Phocas(1)(X).item() == pytest.approx(20 / 6)
    # equally close values go lower first: centre 2 (median of 0 1 3 4 + 2), Meamed(2) keeps 3 of {0,1,2,3,4}
    Y = torch.tensor([[0.0], [4.0], [1.0], [3.0], [2.0]], dtype=F64)
    assert Meamed(2)(Y).item() == pytest.approx((1 + 2 + 3) / 3)
    assert Meamed(1)(Y).item() == pytest.approx((1 + 2 + 3 + 0) / 4)


def test_krum_and_multikrum_by_hand():
    # 1-D points; n = 7, f = 2 → 3 neighbours
    pts = torch.tensor([0.0, 1.0, 2.0, 2.5, 10.0, 11.0, 30.0], dtype=F64)
    X = pts[:, None]
    D = (pts[:, None] - pts[None, :]) ** 2
    scores = [sorted(D[i, j].item() for j in range(7) if j != i)[:3] for i in range(7)]
    best = sorted(range(7), key=lambda i: (sum(scores[i]), i))
    assert Krum(2)(X).item() == pts[best[0]].item()
    assert MultiKrum(2)(X).item() == pytest.approx(pts[best[:5]].mean().item())
    assert MultiKrum(2, m=3)(X).item() == pytest.approx(pts[best[:3]].mean().item())


def mda_reference(X: torch.Tensor, f: int) -> torch.Tensor:
    n = X.shape[0]
    def key(s):
        sq = [((X[i] - X[j]) ** 2).sum().item() for i in s for j in s]
        return max(sq), sum(sq)

    best = min(itertools.combinations(range(n), n - f), key=key)
    return X[list(best)].mean(dim=0)


def bulyan_reference(X: torch.Tensor, f: int) -> torch.Tensor:
    remaining, chosen = list(range(X.shape[0])), []
    while len(chosen) < X.shape[0] - 2 * f:
        k = min(max(len(remaining) - f - 2, 2), len(remaining) - 1)
        score = {i: sum(sorted(((X[i] - X[j]) ** 2).sum().item() for j in remaining if j != i)[:k]) for i in remaining}
        pick = min(remaining, key=lambda i: (score[i], i))
        chosen.append(pick)
        remaining.remove(pick)
    S = X[chosen]
    beta = S.shape[0] - 2 * f
    out = []
    for col in S.T.tolist():
        med = sorted(col)[len(col) // 2] if len(col) % 2 else sum(sorted(col)[len(col) // 2 - 1:][:2]) / 2
        out.append(sum(sorted(col, key=lambda v: (abs(v - med), v))[:beta]) / beta)
    return torch.tensor(out, dtype=X.dtype)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 9), f=st.integers(0, 3))
def test_mda_matches_brute_force(seed, n, f):
    f = min(f, (n - 1) // 2)
    X = rand(n, 5, seed)
    assert torch.allclose(MDA(f)(X), mda_reference(X, f), rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), f=st.integers(0, 2), extra=st.integers(0, 3))
def test_bulyan_matches_reference(seed, f, extra):
    n = 4 * f + 3 + extra
    X = rand(n, 6, seed)
    assert torch.allclose(Bulyan(f)(X), bulyan_reference(X, f), rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 12), d=st.integers(2, 40))
def test_geometric_median_satisfies_the_optimality_condition(seed, n, d):
    """Optimality of z for Σᵢ‖z − xᵢ‖: Σᵢ (z − xᵢ)/‖z − xᵢ‖ = 0 away from the data; at a data point x_k,
    ‖Σ_{i≠k} (x_k − xᵢ)/‖x_k − xᵢ‖‖ ≤ 1 (the subgradient condition)."""
    X = rand(n, d, seed)
    z = GeometricMedian(tol=1e-13, max_iter=20000)(X)
    dist = (z - X).norm(dim=1)
    k = int(dist.argmin())
    if dist[k] > 1e-4:
        assert ((z - X) / dist[:, None]).sum(dim=0).norm() < 1e-6 * n
    else:
        others = [i for i in range(n) if i != k]
        pull = ((X[k] - X[others]) / (X[k] - X[others]).norm(dim=1, keepdim=True)).sum(dim=0)
        assert pull.norm() <= 1 + 1e-6
    z2 = combine(X, GeometricMedian(tol=1e-13, max_iter=20000).weights_from_gram(gram(X)))
    assert (z2 - z).norm() < 1e-6 * (1 + z.norm())


def test_centered_clipping_by_hand_and_state():
    X = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, -1.0]], dtype=F64)
    cc = CenteredClipping(tau=1.0)
    # v0 = 0: clip (3,4) to (0.6, 0.8); others unchanged → v = (0.6, 0.8)/3
    v1 = cc(X)
    assert torch.allclose(v1, torch.tensor([0.2, 0.8 / 3], dtype=F64))
    state = cc.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    resumed = CenteredClipping(tau=1.0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(cc(X), resumed(X))
    assert not torch.equal(cc(X), CenteredClipping(tau=1.0)(X))  # the state matters
    cc.reset()
    assert torch.equal(cc(X), v1)


def test_centered_clipping_iterations_converge_towards_the_cluster():
    X = torch.cat([torch.ones(7, 3, dtype=F64), torch.full((2, 3), 100.0, dtype=F64)])
    one, many = CenteredClipping(tau=0.5, iters=1)(X), CenteredClipping(tau=0.5, iters=30)(X)
    assert (many - 1).norm() < (one - 1).norm()


# ---------------------------------------------------------------------------------------------------------
# Invariances
# ---------------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), i=st.integers(0, len(NAMES) - 1), f=st.integers(0, 2), extra=st.integers(0, 3))
def test_every_rule_is_permutation_invariant(seed, i, f, extra):
    n = 4 * f + 4 + extra  # Krum with n − f − 2 = 1 neighbour ties mutual nearest neighbours by index
    X = rand(n, 7, seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a, b = rules(f)[i](X), rules(f)[i](X[perm])
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), (NAMES[i], a, b)


@pytest.mark.parametrize("rule, n", [(MDA(3), 9), (MDA(2), 8), (Bulyan(1), 7), (Bulyan(2), 11)], ids=repr)
def test_permutation_invariant_despite_structural_ties(rule, n):
    """MDA: many subsets share the farthest pair (equal diameters). Bulyan: in its last selections a one-neighbour
    Krum score would tie two mutual nearest neighbours. Neither may let the order of the inputs decide."""
    for seed in range(12):
        X = rand(n, 2, seed)
        want = rule(X)
        for k in range(3):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(100 * seed + k))
            assert torch.allclose(rule(X[perm]), want, rtol=1e-12, atol=1e-12), (seed, k)


TRANSLATION = [CoordinateMedian(), TrimmedMean(2), Meamed(2), Phocas(2), GeometricMedian(), Krum(2), MultiKrum(2),
               Bulyan(2), MDA(2), Mean()]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), i=st.integers(0, len(TRANSLATION) - 1))
def test_translation_equivariance(seed, i):
    X = rand(11, 6, seed)
    t = rand(1, 6, seed + 1)[0] * 5
    rule = TRANSLATION[i]
    a, b = rule(X + t), rule(X) + t
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-6 if isinstance(rule, GeometricMedian) else 1e-9)


def test_repeatable_bits():
    X = rand(11, 300, seed=5, dtype=torch.float32)
    for first, second in zip(rules(2), rules(2)):
        assert torch.equal(first(X), second(X)), first
        if not isinstance(first, CenteredClipping):
            assert torch.equal(first(X), first(X)), first


# ---------------------------------------------------------------------------------------------------------
# Non-finite rows: removed and counted against f; never NaN out
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(len(NAMES)), ids=NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rows_are_removed_and_counted_against_f(i, bad):
    X = rand(11, 40, seed=6)
    Y = X.clone()
    Y[2, 5] = bad
    Y[7] = bad
    out = rules(2)[i](Y)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, rules(0)[i](X[[0, 1, 3, 4, 5, 6, 8, 9, 10]]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("i", range(len(NAMES)), ids=NAMES)
def test_more_bad_rows_than_f_and_all_bad_never_give_nan(i):
    X = rand(11, 40, seed=7)
    X[:9] = float("nan")
    out = rules(2)[i](X)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, X[9:].mean(dim=0), rtol=1e-12) or isinstance(rules(2)[i], FlagAggregator)
    X[:] = float("inf")
    assert torch.equal(rules(2)[i](X), torch.zeros(40, dtype=F64))


def test_rows_whose_norm_overflows_are_dropped_on_the_gram_path():
    X = rand(7, 10, seed=8, dtype=torch.float32)
    Y = X.clone()
    Y[3] = 1e30  # finite, but its squared norm overflows fp32
    out = Krum(1)(Y)
    assert torch.isfinite(out).all()
    assert torch.equal(out, Krum(0)(X[[0, 1, 2, 4, 5, 6]]))


# ---------------------------------------------------------------------------------------------------------
# Gram paths
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", [Krum(2), MultiKrum(2), MultiKrum(2, m=3), MDA(2), GeometricMedian(),
                                  FlagAggregator(m=3, lam=1.0, max_iter=5)], ids=repr)
def test_weights_from_summed_shard_grams_reproduce_the_rule(rule):
    X = rand(9, 1000, seed=9)
    X[4] = float("nan")
    G = sum(gram(s) for s in X.split(300, dim=1))
    w = rule.weights_from_gram(G)
    assert w[4] == 0 and w.sum() > 0
    tol = 1e-7 if isinstance(rule, GeometricMedian) else 1e-12
    assert torch.allclose(combine(X, w), rule(X), rtol=tol, atol=tol)


def test_distance_paths():
    X = rand(9, 30, seed=10)
    D = torch.cdist(X, X) ** 2
    assert torch.equal(Krum(2).weights_from_distances(D), Krum(2).weights_from_gram(gram(X)))
    assert torch.equal(MDA(2).weights_from_distances(D), MDA(2).weights_from_gram(gram(X)))
    assert torch.allclose(MultiKrum(2).weights_from_distances(D), MultiKrum(2).weights_from_gram(gram(X)))


# ---------------------------------------------------------------------------------------------------------
# Argument errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule, n, match", [
    (Krum(2), 6, "needs at least 7"), (MultiKrum(1), 4, "needs at least 5"), (Bulyan(2), 10, "needs at least 11"),
    (TrimmedMean(3), 6, "needs at least 7"), (Meamed(2), 4, "needs at least 5"), (Phocas(1), 2, "needs at least 3"),
    (MDA(3), 6, "needs at least 7"), (MultiKrum(0, m=5), 4, "needs at least 5"),
])
def test_too_few_inputs_for_f(rule, n, match):
    with pytest.raises(ValueError, match=match):
        rule(torch.ones(n, 3))
    if hasattr(rule, "weights_from_gram"):
        with pytest.raises(ValueError, match=match):
            rule.weights_from_gram(torch.eye(n))


@pytest.mark.parametrize("make", [lambda: Krum(-1), lambda: TrimmedMean(True), lambda: Meamed(1.0),
                                  lambda: MultiKrum(1, m=0), lambda: MDA(1, max_subsets=0),
                                  lambda: GeometricMedian(nu=0), lambda: GeometricMedian(tol=-1),
                                  lambda: GeometricMedian(max_iter=0), lambda: CenteredClipping(tau=0),
                                  lambda: CenteredClipping(iters=0), lambda: Phocas("2")])
def test_bad_constructor_arguments(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("X, match", [
    (torch.ones(5), "2-D"), (torch.ones(2, 3, 4), "2-D"), (torch.ones(3, 4, dtype=torch.int32), "floating"),
    (torch.ones(0, 4), "at least one row"), (torch.ones(3, 0), "at least one row"), ([[1.0, 2.0]], "torch.Tensor"),
])
def test_bad_inputs(X, match):
    with pytest.raises(ValueError, match=match):
        Mean()(X)


def test_mda_refuses_too_many_subsets():
    with pytest.raises(ValueError, match="C\\(n, f\\)"):
        MDA(5, max_subsets=100)(torch.ones(12, 2))
    assert math.comb(12, 5) > 100


def test_centered_clipping_rejects_a_centre_of_another_size():
    cc = CenteredClipping()
    cc(torch.ones(3, 4))
    with pytest.raises(ValueError, match="reset"):
        cc(torch.ones(3, 5))
    with pytest.raises(ValueError, match="centre"):
        cc.load_state_dict({"centre": torch.ones(2, 2)})
