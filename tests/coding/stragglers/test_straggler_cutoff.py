"""The (1 + μ)·fastest cutoff, wait-outs (all / until the pattern conforms) and their logging."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from commlib.coding.stragglers import Cutoff

D = np.array([1.0, 1.2, 2.5, 3.0, 7.0, 1.1])
ALL = np.ones(6, dtype=bool)


def at_most(k: int):
    return lambda mask: int(mask.sum()) <= k


def test_no_straggler_ends_at_the_slowest() -> None:
    t = Cutoff(mu=1.0).resolve(np.array([1.0, 1.5, 1.9]), np.ones(3, bool), at_most(0))
    assert t.duration == 1.9 and not t.stragglers.any() and t.wait_out is None


def test_admitted_stragglers_end_the_round_at_the_cutoff() -> None:
    t = Cutoff(mu=1.0).resolve(D, ALL, at_most(3))
    assert t.duration == 2.0 and t.stragglers.tolist() == [False, False, True, True, True, False]
    assert t.wait_out is None


def test_wait_all(caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="commlib.coding"):
        t = Cutoff(mu=1.0, fallback="wait-all").resolve(D, ALL, at_most(2))
    assert t.duration == 7.0 and not t.stragglers.any() and t.wait_out == "wait-all"
    assert "wait-out (all): 3 stragglers" in caplog.text


@pytest.mark.parametrize("k, duration", [(2, 2.5), (1, 3.0), (0, 7.0)])
def test_wait_until_it_conforms(caplog, k: int, duration: float) -> None:
    with caplog.at_level(logging.DEBUG, logger="commlib.coding"):
        t = Cutoff(mu=1.0, fallback="wait-conform").resolve(D, ALL, at_most(k))
    assert t.duration == duration and t.stragglers.sum() == k and t.wait_out == "wait-conform"
    assert t.stragglers.tolist() == (D > duration).tolist()
    assert "wait-out (conform)" in caplog.text


def test_idle_workers_do_not_count() -> None:
    active = np.array([False, True, True, True, True, True])  # the fastest worker is idle
    t = Cutoff(mu=1.0).resolve(D, active, at_most(3))
    assert t.duration == pytest.approx(2.2) and t.stragglers.tolist() == [False, False, True, True, True, False]
    t = Cutoff(mu=2.0).resolve(D, active, at_most(1))
    assert t.duration == pytest.approx(3.3) and t.stragglers.tolist() == [False, False, False, False, True, False]
    none = Cutoff().resolve(D, np.zeros(6, bool), at_most(0))
    assert none.duration == 0.0 and not none.stragglers.any()


@pytest.mark.parametrize("kwargs, message", [({"mu": -0.1}, "mu must be"), ({"mu": True}, "mu must be"),
                                             ({"fallback": "wait"}, "fallback must be one of")])
def test_bad_arguments(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Cutoff(**kwargs)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        Cutoff().resolve(D, ALL[:3], at_most(1))
