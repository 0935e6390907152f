"""Attacks: formulas, maximality of MinMax/MinSum, the optimal attacks' line search, seeded randomness."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from commlib.robust import (
    ALIE,
    IPM,
    NNM,
    CenteredClipping,
    CoordinateMedian,
    Drop,
    Gaussian,
    Krum,
    LabelFlip,
    Mean,
    Mimic,
    MinMax,
    MinSum,
    NonFinite,
    OptimalALIE,
    OptimalIPM,
    SignFlip,
    TrimmedMean,
    Uniform,
    alie_z,
    flip_labels,
    line_maximize,
)

F64 = torch.float64


def honest(h: int = 7, d: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randn(h, d, generator=torch.Generator().manual_seed(seed), dtype=F64) + 1.0


def test_sign_flip_ipm_mimic():
    H = honest()
    mu = H.mean(dim=0)
    assert torch.equal(SignFlip()(H, 3), (-mu).expand(3, -1))
    assert torch.allclose(IPM(2.0)(H, 2), (-2.0 * mu).expand(2, -1))
    assert torch.equal(Mimic(4)(H, 2), H[4].expand(2, -1))
    X = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert torch.equal(IPM(3.0)(X, 1), torch.tensor([[-12.0, -15.0, -18.0]]))  # ByzFL parity


def test_alie_z_and_vector():
    assert alie_z(15, 3) == pytest.approx(NormalDist().inv_cdf(10 / 15))
    assert alie_z(15, 3) == pytest.approx(0.4307, abs=1e-4)
    assert alie_z(14, 4) == pytest.approx(NormalDist().inv_cdf(10 / 14))
    H = honest()
    z = alie_z(10, 3)
    assert torch.allclose(ALIE()(H, 3), (H.mean(0) - z * H.std(0)).expand(3, -1))
    assert torch.allclose(ALIE(z=1.5)(H, 1), (H.mean(0) - 1.5 * H.std(0))[None])
    assert torch.equal(ALIE()(H[:1], 1), H[:1])  # one honest vector: σ = 0, not NaN
    with pytest.raises(ValueError, match="undefined"):
        alie_z(2, 0)


def dists(H: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((H - b) ** 2).sum(dim=1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(2, 9), direction=st.sampled_from(["std", "unit", "sign"]))
def test_min_max_is_the_largest_admissible_scale(seed, h, direction):
    H = honest(h, 12, seed)
    b = MinMax(direction)(H, 2)
    assert b.shape == (2, 12) and torch.equal(b[0], b[1])
    bound = float((torch.cdist(H, H) ** 2).max())
    mu = H.mean(dim=0)
    assert float(dists(H, b[0]).max()) <= bound * (1 + 1e-9)
    assert float(dists(H, b[0]).max()) == pytest.approx(bound, rel=1e-9)  # tight: γ cannot grow
    step = b[0] - mu
    assert float(dists(H, mu + 1.001 * step).max()) > bound


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(2, 9), direction=st.sampled_from(["std", "unit", "sign"]))
def test_min_sum_is_the_largest_admissible_scale(seed, h, direction):
    H = honest(h, 12, seed)
    b = MinSum(direction)(H, 1)[0]
    bound = float((torch.cdist(H, H) ** 2).sum(dim=1).max())
    assert float(dists(H, b).sum()) == pytest.approx(bound, rel=1e-9)
    mu = H.mean(dim=0)
    assert float(dists(H, mu + 1.001 * (b - mu)).sum()) > bound


def test_line_maximize_finds_the_peak():
    peak = 37.3
    best = line_maximize(lambda t: -((t - peak) ** 2), evals=60)
    assert best == pytest.approx(peak, abs=0.5)
    assert line_maximize(lambda t: -t, evals=20) == 0.0  # decreasing: stay at the start
    calls = []
    line_maximize(lambda t: calls.append(t) or -abs(t - 3), evals=7)
    assert len(calls) == 7 and min(calls) >= 0.0


@pytest.mark.parametrize("attack_cls", [OptimalIPM, OptimalALIE])
@pytest.mark.parametrize("rule", [Mean(), TrimmedMean(2), Krum(2)], ids=repr)
def test_optimal_attacks_do_at_least_as_much_damage_as_the_probes(attack_cls, rule):
    H = honest(8, 30, seed=3)
    f = 2
    attack = attack_cls(rule, evals=15)
    b = attack(H, f)
    mu = H.mean(dim=0)

    def damage(v):
        return float((rule(torch.cat([H, v.expand(f, -1)])) - mu).norm())

    family = (lambda t: -t * mu) if attack_cls is OptimalIPM else (lambda t: mu - t * H.std(0))
    assert damage(b[0]) >= max(damage(family(0.0)), damage(family(10.0))) - 1e-12


def test_optimal_attack_against_the_mean_is_unbounded_growth():
    H = honest(8, 30, seed=4)
    b = OptimalIPM(Mean(), evals=10)(H, 2)
    tau = float(-(b[0] @ H.mean(0)) / (H.mean(0) @ H.mean(0)))
    assert tau >= 10.0 * 2 ** 7  # the expansion phase doubled the step on every evaluation


def test_optimal_attack_sees_but_never_changes_a_stateful_rule():
    H = honest(8, 10, seed=5)
    cc = CenteredClipping(tau=1.0)
    cc(H)
    before = cc.state_dict()["centre"].clone()
    OptimalALIE(cc, [NNM(2)], evals=6)(H, 2, step=3)
    assert torch.equal(cc.state_dict()["centre"], before)


def test_optimal_attack_uses_the_preaggregators():
    H = honest(8, 10, seed=6)
    plain = OptimalIPM(CoordinateMedian(), evals=12)(H, 3)
    mixed = OptimalIPM(CoordinateMedian(), [NNM(3)], evals=12)(H, 3)
    assert repr(OptimalIPM(CoordinateMedian(), [NNM(3)])).startswith("OptimalIPM(Compose([NNM")
    assert not torch.equal(plain, mixed)


def test_random_attacks_are_seeded_by_step():
    H = honest(5, 1000)
    for attack in (Gaussian(seed=1), Uniform(seed=1), Drop(0.3, seed=1)):
        a, b, c = attack(H, 3, step=4), attack(H, 3, step=4), attack(H, 3, step=5)
        assert a.shape == (3, 1000)
        assert torch.equal(a, b) and not torch.equal(a, c), attack
    u = Uniform()(H, 4)
    assert u.min() >= 0 and u.max() < 1 and abs(float(u.mean()) - 0.5) < 0.02
    g = Gaussian(mean=2.0, std=3.0)(H, 4)
    assert abs(float(g.mean()) - 2.0) < 0.1 and abs(float(g.std()) - 3.0) < 0.1
    assert not torch.equal(g[0], g[1])  # every Byzantine worker draws its own vector


def test_drop_zeroes_a_fraction_of_an_honest_row():
    H = honest(3, 200)
    out = Drop(0.25)(H, 5)
    for j, row in enumerate(out):
        src = H[j % 3]
        zeroed = row == 0
        assert int(zeroed.sum()) == 50
        assert torch.equal(row[~zeroed], src[~zeroed])


def test_non_finite():
    H = honest(3, 4)
    assert torch.isinf(NonFinite()(H, 2)).all()
    assert torch.isnan(NonFinite("nan")(H, 2)).all()


def test_label_flipping():
    y = torch.tensor([0, 3, 9, 5])
    assert torch.equal(flip_labels(y, 10), torch.tensor([9, 6, 0, 4]))
    assert torch.equal(LabelFlip().labels(y, 10), flip_labels(y, 10))
    with pytest.raises(ValueError, match="range"):
        flip_labels(torch.tensor([0, 10]), 10)
    with pytest.raises(ValueError, match="integer"):
        flip_labels(torch.tensor([0.0]), 10)


def test_f_zero_and_argument_errors():
    H = honest(3, 4)
    assert SignFlip()(H, 0).shape == (0, 4)
    with pytest.raises(ValueError, match="f must be"):
        SignFlip()(H, -1)
    with pytest.raises(ValueError, match="2-D"):
        SignFlip()(H[0], 1)
    with pytest.raises(ValueError, match="out of range"):
        Mimic(3)(H, 1)
    for make in (lambda: IPM(0), lambda: MinMax("x"), lambda: Gaussian(std=0), lambda: Uniform(1, 1),
                 lambda: NonFinite("zero"), lambda: Drop(1.5), lambda: OptimalIPM(Mean(), evals=0),
                 lambda: OptimalALIE(Mean(), ratio=1.0), lambda: OptimalIPM(Mean(), delta=0),
                 lambda: OptimalIPM(NNM(1))):
        with pytest.raises(ValueError):
            make()


def test_stealthy_attacks_stay_within_the_honest_spread():
    H = honest(10, 50, seed=7)
    mu = H.mean(dim=0)
    spread = math.sqrt(float((torch.cdist(H, H) ** 2).max()))
    for attack in (ALIE(), MinMax(), MinSum()):
        b = attack(H, 3)
        assert float((b[0] - mu).norm()) <= spread * (1 + 1e-9)
