"""Straggler specs for the runtime and ``commlib simulate``, and the injector's modelled sleeps."""

from __future__ import annotations

import numpy as np
import pytest

from commlib.coded import injector as injector_module
from commlib.coded.injector import StragglerInjector, straggler_trace
from commlib.coding.stragglers import DelayTrace, gilbert_elliott_pattern, iid_pattern


def test_pattern_specs_put_slow_rounds_exactly_where_the_pattern_is() -> None:
    trace = straggler_trace("worker:1,3", 6, 5, fast=0.1, slow=2.0)
    assert (trace.base[:, [1, 3]] == 2.0).all() and (trace.base[:, [0, 2, 4]] == 0.1).all()
    assert (straggler_trace("none", 3, 4).base == 0).all()
    iid = straggler_trace("iid:0.3", 50, 8, seed=4, slow=1.0)
    assert np.array_equal(iid.base > 0, iid_pattern(50, 8, 0.3, seed=4))
    ge = straggler_trace("gilbert-elliott", 50, 8, seed=2, slow=1.0)
    assert np.array_equal(ge.base > 0, gilbert_elliott_pattern(50, 8, 0.05, 0.5, seed=2))
    ge2 = straggler_trace("Gilbert-Elliott:0.2,0.4", 50, 8, seed=2, slow=1.0)
    assert np.array_equal(ge2.base > 0, gilbert_elliott_pattern(50, 8, 0.2, 0.4, seed=2))
    loaded = straggler_trace("worker:0", 2, 2, fast=1.0, slow=3.0, compute=2.0)
    assert loaded.durations(0, np.array([0.5, 0.5])).tolist() == [4.0, 2.0]


def test_parametric_specs_are_seeded_and_heavy_tailed() -> None:
    a, b = (straggler_trace("lognormal", 200, 64, seed=1, fast=1.2) for _ in range(2))
    assert np.array_equal(a.base, b.base) and not np.array_equal(a.base, straggler_trace("lognormal", 200, 64).base)
    share = (a.base > 2 * a.base.min(axis=1, keepdims=True)).mean()
    assert 0.01 < share < 0.2  # a few percent of the workers straggle at mu = 1, as tuned
    assert straggler_trace("exponential", 5, 3, fast=1.0).base.min() >= 1.0


@pytest.mark.parametrize("spec, message", [
    ("bogus", "unknown straggler spec 'bogus'"), ("worker", "unknown straggler spec"),
    ("worker:9", r"worker ids must be in \[0, 3\]"), ("worker:a", "worker ids must be integers"),
    ("iid:x", "must be numbers"), ("iid:0.1,0.2", "takes 1 parameter"), ("iid:2", "probability"),
    ("gilbert-elliott:0.1", "takes 2 parameter"), ("lognormal:3", "takes no parameters"),
])
def test_bad_specs_are_named(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        straggler_trace(spec, 4, 4)


def test_pattern_durations_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="fast < slow"):
        straggler_trace("iid", 4, 4, fast=1.0, slow=1.0)
    with pytest.raises(ValueError, match="spec must be a string"):
        straggler_trace(3, 4, 4)  # type: ignore[arg-type]


def test_injector_sleeps_what_the_work_left_of_the_modelled_time(monkeypatch) -> None:
    slept = []
    monkeypatch.setattr(injector_module.time, "sleep", slept.append)
    trace = DelayTrace(np.array([[0.0, 1.0], [0.0, 0.5]]), np.array([[0.0, 2.0], [0.0, 0.0]]))
    inj = StragglerInjector(trace, time_scale=0.5)
    assert inj.target(0, 1, 0.25) == pytest.approx(0.75)  # (1.0 + 2.0·0.25)·0.5
    assert inj.pad(0, 1, 0.25, elapsed=0.25) == pytest.approx(0.5) and slept == [pytest.approx(0.5)]
    assert inj.pad(1, 1, 0.0, elapsed=0.3) == 0.0 and inj.pad(0, 0, 1.0, elapsed=0.0) == 0.0
    assert len(slept) == 1  # already late, or nothing modelled: no sleep
    with pytest.raises(ValueError, match="round must be in"):
        inj.target(2, 0, 0.0)
    with pytest.raises(ValueError, match="time_scale"):
        StragglerInjector(trace, time_scale=-1)
