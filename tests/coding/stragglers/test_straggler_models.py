"""The (B, W, λ) checker against the model's definition, and greedy thinning (subset, admitted, maximal)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commlib.coding.stragglers import BurstyModel, PerRoundModel


def obeys_definition(pattern: np.ndarray, b: int, w: int, lam: int) -> bool:
    """Every window of W rounds: at most λ distinct stragglers, each straggler's rounds within a span of B."""
    rounds = pattern.shape[0]
    for start in range(max(1, rounds - w + 1)):
        window = pattern[start: start + w]
        if window.any(axis=0).sum() > lam:
            return False
        for i in np.flatnonzero(window.any(axis=0)):
            hits = np.flatnonzero(window[:, i])
            if hits[-1] - hits[0] + 1 > b:
                return False
    return True


@st.composite
def cases(draw):
    b = draw(st.integers(1, 3))
    w = draw(st.integers(b + 1, 6))
    lam = draw(st.integers(1, 4))
    n = draw(st.integers(1, 5))
    rounds = draw(st.integers(1, 12))
    density = draw(st.sampled_from([0.1, 0.25, 0.5]))
    seed = draw(st.integers(0, 2**31))
    pattern = np.random.default_rng(seed).random((rounds, n)) < density
    return b, w, lam, pattern


@settings(max_examples=400, deadline=None)
@given(cases())
def test_checker_matches_the_definition(case) -> None:
    b, w, lam, pattern = case
    model = BurstyModel(b, w, lam)
    assert model.conforms(pattern) == obeys_definition(pattern, b, w, lam)
    first = model.first_violation(pattern)
    if first is not None:
        assert obeys_definition(pattern[:first], b, w, lam) and not obeys_definition(pattern[: first + 1], b, w, lam)


@settings(max_examples=200, deadline=None)
@given(cases(), st.integers(0, 2**31))
def test_thin_keeps_an_admitted_maximal_subset(case, seed: int) -> None:
    b, w, lam, pattern = case
    model = BurstyModel(b, w, lam)
    history = np.zeros((0, pattern.shape[1]), dtype=bool)
    order = np.random.default_rng(seed).permutation(pattern.shape[1])
    for row in pattern:
        kept = model.thin(history, row, order)
        assert not (kept & ~row).any() and model.admits(history, kept)
        for i in np.flatnonzero(row & ~kept):
            more = kept.copy()
            more[i] = True
            assert not model.admits(history, more), "thin dropped a worker that fits"
        history = np.vstack([history, kept])
    assert obeys_definition(history, b, w, lam)


def test_thin_prefers_the_given_order() -> None:
    model = BurstyModel(1, 3, 2)
    everyone = np.ones(5, dtype=bool)
    assert np.flatnonzero(model.thin(np.zeros((0, 5), bool), everyone)).tolist() == [0, 1]
    assert np.flatnonzero(model.thin(np.zeros((0, 5), bool), everyone, [4, 2, 0, 1, 3])).tolist() == [2, 4]
    history = np.array([[True, False, False, False, False]])
    # worker 0 (burst already B = 1 long) is out; one more new worker fits under λ = 2
    assert np.flatnonzero(model.thin(history, everyone)).tolist() == [1]


def test_per_round_model() -> None:
    model = PerRoundModel(2)
    assert model.admits(np.zeros((0, 4), bool), [True, True, False, False])
    assert not model.admits(np.zeros((0, 4), bool), [True, True, True, False])
    assert np.flatnonzero(model.thin(np.zeros((0, 4), bool), [True] * 4, [3, 1, 0, 2])).tolist() == [1, 3]
    assert model.conforms(np.eye(4, dtype=bool)) and model.first_violation(np.ones((2, 4), bool)) == 0


def test_window_edges() -> None:
    model = BurstyModel(2, 4, 1)  # one worker, bursts up to 2 rounds, windows of 4
    assert model.conforms(np.array([[1], [1], [0], [0], [0], [1], [1]], dtype=bool))  # never in one window
    assert model.first_violation(np.array([[1], [1], [0], [0], [1]], dtype=bool)) == 4  # rounds 1, 4 in one window
    assert model.first_violation(np.array([[1], [0], [0], [1]], dtype=bool)) == 3  # span 4 > B
    assert model.first_violation(np.array([[1], [0], [1]], dtype=bool)) == 2  # span 3 > B
    assert model.conforms(np.array([[1], [0], [0], [0], [1]], dtype=bool))  # 4 apart: separate windows


@pytest.mark.parametrize("args, message", [((0, 2, 1), "B \\(burst length\\) must be >= 1"),
                                           ((2, 2, 1), "W \\(window\\) must be >= 3"),
                                           ((1, 2, 0), "lambda .* must be >= 1")])
def test_bad_parameters(args, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BurstyModel(*args)


def test_bad_patterns() -> None:
    model = BurstyModel(1, 2, 1)
    with pytest.raises(ValueError, match="2-D"):
        model.conforms(np.zeros(3, bool))
    with pytest.raises(ValueError, match="booleans"):
        model.conforms(np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="pattern has 3 workers, expected 2"):
        model.admits(np.zeros((1, 3), bool), [True, False])
    with pytest.raises(ValueError, match="1-D"):
        model.admits(np.zeros((1, 2), bool), [[True, False]])
    with pytest.raises(ValueError, match="permutation"):
        model.thin(np.zeros((0, 2), bool), [True, True], [0, 0])
