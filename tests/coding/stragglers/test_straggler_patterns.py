"""Random, Gilbert–Elliott, conforming and adversarial straggler patterns."""

from __future__ import annotations

import numpy as np
import pytest

from commlib.coding.stragglers import (
    BurstyAdversary,
    BurstyModel,
    PerRoundModel,
    adversarial_pattern,
    conforming,
    gilbert_elliott_pattern,
    iid_pattern,
)


def burst_lengths(column: np.ndarray) -> list[int]:
    padded = np.concatenate([[0], column.astype(int), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return list(edges[1::2] - edges[::2])


def test_iid_rate_and_seeding() -> None:
    p = iid_pattern(2000, 50, 0.1, seed=4)
    assert p.shape == (2000, 50) and abs(p.mean() - 0.1) < 0.005
    assert np.array_equal(p, iid_pattern(2000, 50, 0.1, seed=4))
    assert not np.array_equal(p, iid_pattern(2000, 50, 0.1, seed=5))


def test_gilbert_elliott_rate_and_bursts() -> None:
    p_gb, p_bg = 0.05, 0.4
    p = gilbert_elliott_pattern(4000, 40, p_gb, p_bg, seed=1)
    assert abs(p.mean() - p_gb / (p_gb + p_bg)) < 0.01
    bursts = [b for i in range(40) for b in burst_lengths(p[:, i])]
    assert abs(np.mean(bursts) - 1 / p_bg) < 0.1  # mean burst 1/p_bg
    assert np.array_equal(p, gilbert_elliott_pattern(4000, 40, p_gb, p_bg, seed=1))


@pytest.mark.parametrize("model", [BurstyModel(2, 5, 3), BurstyModel(1, 2, 6), PerRoundModel(2)], ids=repr)
def test_conforming_thins_to_the_model(model) -> None:
    raw = gilbert_elliott_pattern(300, 16, 0.2, 0.4, seed=2)
    thin = conforming(raw, model)
    assert model.conforms(thin) and not model.conforms(raw)
    assert not (thin & ~raw).any() and thin.sum() > 0.1 * raw.sum()


@pytest.mark.parametrize("b, w, lam", [(1, 2, 3), (2, 3, 4), (2, 5, 6), (3, 4, 2)])
def test_adversary_saturates_the_model(b: int, w: int, lam: int) -> None:
    n, rounds = 12, 60
    model = BurstyModel(b, w, lam)
    pat = adversarial_pattern(rounds, n, model, seed=7)
    assert model.conforms(pat)
    for r in range(rounds):  # maximal: no worker can be added to any round
        for i in np.flatnonzero(~pat[r]):
            more = pat[r].copy()
            more[i] = True
            assert not model.admits(pat[max(0, r - w + 1): r], more)
    assert max(pat[r: r + w].any(axis=0).sum() for r in range(rounds - w)) == lam
    assert max(b_ for i in range(n) for b_ in burst_lengths(pat[:, i])) == b  # bursts reach length B


def test_adversary_prefers_the_given_workers() -> None:
    model = BurstyModel(1, 3, 2)
    adv = BurstyAdversary(6, model, seed=0)
    mask = adv.next(np.zeros((0, 6), bool), prefer=np.array([0, 0, 0, 1, 0, 1], dtype=bool))
    assert np.flatnonzero(mask).tolist() == [3, 5]
    with pytest.raises(ValueError, match="bool array of shape \\(6,\\)"):
        adv.next(np.zeros((0, 6), bool), prefer=np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="needs a BurstyModel"):
        BurstyAdversary(6, PerRoundModel(2))


@pytest.mark.parametrize("call, message", [
    (lambda: iid_pattern(10, 4, 1.5), "p must be a probability"),
    (lambda: iid_pattern(0, 4, 0.5), "rounds must be >= 1"),
    (lambda: gilbert_elliott_pattern(10, 4, 0.0, 0.0), "p_gb \\+ p_bg must be > 0"),
    (lambda: gilbert_elliott_pattern(10, 4, 0.1, -0.1), "p_bg must be a probability"),
    (lambda: iid_pattern(10, 4, 0.5, seed=-1), "seed must be >= 0"),
])
def test_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
