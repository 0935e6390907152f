"""The coded-training simulator: virtual clock, cutoff and wait-outs, speed at 256 workers, real gradients."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from commlib.coding import make_scheme
from commlib.coding.stragglers import (
    Cutoff,
    DelayTrace,
    Noise,
    ParametricDelays,
    conforming,
    gilbert_elliott_pattern,
    iid_pattern,
)
from commlib.sim.coded import CodedTraining, simulate
from commlib.train.data import load_digits
from commlib.train.models import mlp

PAPER = ["none", "gc:15", "sr-sgc:2,3,23", "m-sgc:1,2,27"]


def lambda_like() -> ParametricDelays:
    return ParametricDelays(1.2, 2.2, Noise("lognormal", 0.2, 0.98), Noise("exponential", 0.5))


def test_timing_only_256_workers_is_fast_and_consistent() -> None:
    jobs = 296
    trace = lambda_like().trace(300, 256, seed=1)
    start = time.perf_counter()
    runs = {spec: simulate(make_scheme(spec, 256, jobs, code="crc"), trace, Cutoff(1.0)) for spec in PAPER}
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"4 runs of 256 workers × ~300 rounds took {elapsed:.1f} s"
    for run in runs.values():
        assert run.decode_rate == 1.0 and not run.missed
        assert run.total_time == pytest.approx(run.durations.sum()) and run.rounds <= jobs + run.delay
        assert np.isfinite(run.finish_time).all() and run.finish_time.max() == pytest.approx(run.total_time)
        json.dumps(run.summary())
    none = runs["none"]
    assert none.wait_out_count == none.rounds and not none.stragglers.any()  # no coding waits for everyone
    assert runs["gc:15"].stragglers.sum(axis=1).max() <= 15
    for spec in PAPER:  # wait-outs happen exactly when the cutoff's set broke the scheme's model
        assert 0 < runs[spec].wait_out_count <= runs[spec].rounds
    # coding beats waiting for everyone on this heavy-tailed model
    assert max(runs[s].total_time for s in PAPER[1:]) < none.total_time


@pytest.mark.parametrize("spec", ["gc:3", "sr-sgc:2,3,6", "m-sgc:1,2,4", "m-sgc:2,3,5"])
def test_conforming_pattern_is_found_by_the_cutoff_and_never_waited_out(spec: str) -> None:
    n, jobs = 12, 40
    scheme = make_scheme(spec, n, jobs)
    pattern = conforming(gilbert_elliott_pattern(scheme.rounds, n, 0.15, 0.5, seed=2), scheme.model)
    run = simulate(scheme, DelayTrace.from_pattern(pattern, fast=1.0, slow=3.0), Cutoff(mu=1.0))
    assert run.wait_out_count == 0 and run.decode_rate == 1.0
    replay = make_scheme(spec, n, jobs)
    for r in range(run.rounds):
        active = replay.active()
        expected = pattern[r] & active
        assert np.array_equal(run.stragglers[r], expected)
        if not active.any():
            assert run.durations[r] == 0.0
        else:
            assert run.durations[r] == (2.0 if expected.any() else 1.0)  # cutoff (1 + μ)·1 s, or the slowest
        replay.commit(expected)
    assert replay.finished


@pytest.mark.parametrize("fallback", ["wait-all", "wait-conform"])
def test_model_breaking_rounds_are_waited_out(fallback: str) -> None:
    n, jobs = 12, 40
    scheme = make_scheme("m-sgc:1,2,3", n, jobs)
    pattern = iid_pattern(scheme.rounds, n, 0.2, seed=3)
    run = simulate(scheme, DelayTrace.from_pattern(pattern, 1.0, 3.0), Cutoff(1.0, fallback))
    assert run.decode_rate == 1.0 and run.wait_out_count > 5
    assert set(run.wait_outs) == {None, fallback}
    assert scheme.model.conforms(run.stragglers)
    waited = np.array([w is not None for w in run.wait_outs])
    assert (run.durations[waited] == 3.0).all()  # the slow workers arrive at 3 s either way here
    if fallback == "wait-all":
        assert not run.stragglers[waited].any()


def test_waiting_until_conform_is_never_slower_for_gc() -> None:
    """GC's model has no memory, so waiting only as long as needed is cheaper round by round."""
    trace = lambda_like().trace(200, 64, seed=4)
    runs = [simulate(make_scheme("gc:3", 64, 200), trace, Cutoff(1.0, fb)) for fb in ("wait-all", "wait-conform")]
    assert runs[0].wait_out_count == runs[1].wait_out_count > 0
    assert (runs[1].durations <= runs[0].durations).all() and runs[1].total_time < runs[0].total_time


@pytest.mark.parametrize("spec, code", [("sr-sgc:2,3,4", "crc"), ("m-sgc:1,2,3", "frc"), ("m-sgc:2,3,3", "crc"),
                                        ("gc:2", "frc")])
def test_real_gradients_decode_exactly_and_train(spec: str, code: str, one_thread) -> None:
    """fp64 linear model on digits, T + 1 models round-robin: every decode equals the full-batch gradient."""
    n, jobs = 8, 30
    data = load_digits(seed=0)
    x, y = data.x_train.double(), data.y_train
    scheme = make_scheme(spec, n, jobs, code=code)
    pattern = conforming(gilbert_elliott_pattern(scheme.rounds, n, 0.15, 0.5, seed=5), scheme.model)
    training = CodedTraining(lambda k: mlp(depth=0, seed=k).double(), x, y,
                             batch_size=2 * scheme.units_per_job + 5, lr=0.5)
    calls = []
    compute = training.compute
    training.compute = lambda task: calls.append(task) or compute(task)  # type: ignore[method-assign]
    run = simulate(scheme, DelayTrace.from_pattern(pattern), Cutoff(1.0), training)
    assert run.decode_rate == 1.0 and len(training.models) == scheme.delay + 1
    assert len(training.rel_errors) == jobs and max(training.rel_errors) < 1e-10
    # only results that arrived were computed
    replay = make_scheme(spec, n, jobs, code=code)
    arrived = 0
    for row in run.stragglers:
        arrived += sum(len(replay.tasks(i)) for i in np.flatnonzero(replay.active() & ~row))
        replay.commit(row)
    assert len(calls) == arrived and pattern.any()
    losses = [loss for _, loss in sorted(training.losses)]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])


def test_simulate_rejects_bad_setups() -> None:
    trace = ParametricDelays().trace(10, 4)
    with pytest.raises(ValueError, match="needs a trace of at least 13 rounds × 4 workers"):
        simulate(make_scheme("sr-sgc:1,2,2", 4, 12), trace)
    with pytest.raises(ValueError, match="× 5 workers"):
        simulate(make_scheme("gc:1", 5, 5), trace)
    used = make_scheme("gc:1", 4, 5)
    used.commit([False] * 4)
    with pytest.raises(ValueError, match="fresh scheme"):
        simulate(used, trace)
    x, y = torch.zeros(50, 64, dtype=torch.float64), torch.zeros(50, dtype=torch.int64)
    with pytest.raises(ValueError, match="smaller than m-sgc\\(1,2,3\\)'s"):
        simulate(make_scheme("m-sgc:1,2,3", 4, 5), trace, training=CodedTraining(lambda k: mlp(depth=0), x, y, 3))
