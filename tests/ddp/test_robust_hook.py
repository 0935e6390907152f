"""The model-wide robust DDP hook on gloo: whole-gradient decisions, identical bits, Byzantine ranks, bad payloads."""

from __future__ import annotations

import pytest
import torch
from ddp.robust_workers import WidthProbe, byzantine_training, model_wide, tampered_topk
from dist_utils import run_workers

from commlib import robust
from commlib.ddp.robust import RobustState

WORLD = 4


def flag():
    return robust.FlagAggregator(m=2)


def krum():
    return robust.Krum(f=0)


def test_rule_sees_whole_gradients_and_every_rank_agrees():
    """With one bucket per parameter, Krum's choice is one worker's *whole* gradient, the same bits on every rank.

    Bucket-wise aggregation would pick a worker per bucket and mix their pieces.
    """
    results = run_workers(model_wide, WORLD, krum, timeout=240)
    first = results[0]
    assert first["buckets"] > 2
    for r in results:
        assert torch.equal(r["hooked"], first["hooked"])
    assert torch.equal(first["hooked"], first["expected"])
    assert any(torch.equal(first["hooked"], row) for row in first["rows"])


def test_rule_is_called_once_on_the_whole_model():
    """A probe rule answers with the width it sees: the model's parameter count, not a bucket's."""
    first = run_workers(model_wide, WORLD, WidthProbe, timeout=240)[0]
    assert first["buckets"] > 2
    assert torch.equal(first["hooked"], torch.full_like(first["hooked"], float(first["hooked"].numel())))


def test_alie_breaks_the_mean_but_not_flag():
    """Rank 1 runs ALIE (z = 4): the mean collapses, Flag keeps >= 85% test accuracy, ranks end identical."""
    rules = {"mean": robust.Mean, "flag": flag}
    results = run_workers(byzantine_training, WORLD, rules, robust.ALIE(z=4.0), 120, timeout=420)
    for name in rules:
        for r in results:
            assert torch.equal(r[name]["params"], results[0][name]["params"])
    assert results[0]["mean"]["accuracy"] < 0.5
    assert results[0]["flag"]["accuracy"] >= 0.85


def test_non_finite_attack_never_reaches_the_parameters():
    results = run_workers(byzantine_training, WORLD, {"median": robust.CoordinateMedian}, robust.NonFinite("nan"),
                          20, timeout=240)
    params = results[0]["median"]["params"]
    assert bool(torch.isfinite(params).all())
    assert results[0]["median"]["faulty_rows"] == 20


def test_out_of_range_indices_count_as_a_faulty_worker():
    """A Byzantine top-k payload with indices far out of range is a fault on every rank, never a crash."""
    results = run_workers(tampered_topk, WORLD, 10, timeout=240)
    for r in results:
        assert r["faulty_rows"] == 10
        assert bool(torch.isfinite(r["params"]).all())
        assert torch.equal(r["params"], results[0]["params"])


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"byzantine": [7]}, "byzantine ranks must lie in"),
        ({"byzantine": [0]}, "give an attack exactly when"),
        ({"attack": robust.SignFlip()}, "give an attack exactly when"),
    ],
)
def test_bad_configuration_is_refused(kwargs, problem, monkeypatch):
    monkeypatch.setattr("torch.distributed.get_rank", lambda group=None: 0)
    monkeypatch.setattr("torch.distributed.get_world_size", lambda group=None: 4)
    with pytest.raises(ValueError, match=problem):
        RobustState(torch.nn.Linear(2, 2), robust.Mean(), **kwargs)


def test_rule_that_cannot_run_on_this_world_is_refused(monkeypatch):
    monkeypatch.setattr("torch.distributed.get_rank", lambda group=None: 0)
    monkeypatch.setattr("torch.distributed.get_world_size", lambda group=None: 4)
    with pytest.raises(ValueError, match="needs at least 5 inputs"):
        RobustState(torch.nn.Linear(2, 2), robust.Krum(f=1))
