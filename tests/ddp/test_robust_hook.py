"""The model-wide robust DDP hook on gloo: whole-gradient decisions, identical bits, Byzantine ranks, bad payloads."""

from __future__ import annotations

import io

import pytest
import torch
from ddp.robust_workers import (
    WidthProbe,
    alie_training,
    byzantine_training,
    model_wide,
    momentum_placement,
    tampered_topk,
)
from dist_utils import run_workers

from commlib import robust
from commlib.ddp.robust import RobustState
from commlib.train import mlp

WORLD = 4
ALIE_STEPS = 300  # the trainer's default run length


def flag():
    return robust.FlagAggregator(m=2)


def krum():
    return robust.Krum(f=0)


def trimmed_mean():
    return robust.TrimmedMean(f=1)


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


def test_alie_breaks_the_mean_but_not_flag_or_the_trimmed_mean():
    """Rank 1 runs ALIE (z = 4) under the trainer's protocol (worker momentum 0.9, 64 examples per worker): the mean
    collapses, Flag and the trimmed mean keep >= 85% test accuracy, and every rank ends with the same bits."""
    rules = {"mean": robust.Mean, "flag": flag, "trimmed_mean": trimmed_mean}
    results = run_workers(alie_training, WORLD, rules, ALIE_STEPS, timeout=900)
    for name in rules:
        for r in results:
            assert torch.equal(r[name]["params"], results[0][name]["params"])
    assert results[0]["mean"]["accuracy"] < 0.5
    assert results[0]["flag"]["accuracy"] >= 0.85
    assert results[0]["trimmed_mean"]["accuracy"] >= 0.85


def test_worker_momentum_under_the_mean_is_optimizer_momentum():
    """Σ-linear rule: the mean of the workers' momenta m ← 0.9·m + g is heavy-ball momentum of the mean gradient,
    so plain SGD on it ends where SGD with momentum 0.9 does — also after DDP rebuilt its (many, tiny) buckets,
    which would scramble a momentum kept by bucket position. The momentum checkpoints by parameter name."""
    results = run_workers(momentum_placement, WORLD, 12, timeout=300)
    first = results[0]
    assert first[True]["buckets"] > 2
    for r in results:
        assert torch.equal(r[True]["params"], first[True]["params"])
    torch.testing.assert_close(first[True]["params"], first[False]["params"], rtol=1e-4, atol=1e-6)
    state = first[True]["state"]
    assert set(state["momentum"]) == {f"module.{name}" for name, _ in mlp(hidden=64, depth=2).named_parameters()}
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["step"] == 12 and set(loaded["momentum"]) == set(state["momentum"])
    assert first[False]["state"]["momentum"] == {}


def test_non_finite_attack_never_reaches_the_parameters():
    results = run_workers(byzantine_training, WORLD, {"median": robust.CoordinateMedian}, robust.NonFinite("nan"),
                          20, timeout=240)
    params = results[0]["median"]["params"]
    assert bool(torch.isfinite(params).all())
    assert results[0]["median"]["faulty_rows"] == 20


def test_malformed_payloads_count_as_a_faulty_worker():
    """Byzantine top-k payloads with indices far out of range, one pair short, or 16 bytes too long are a fault on
    every rank, never a crash; no pickling collective runs (they are made to raise in the workers)."""
    results = run_workers(tampered_topk, WORLD, 10, timeout=300)
    assert set(results[0]) == {"out_of_range", "truncated", "overlong"}
    for kind in results[0]:
        for r in results:
            assert r[kind]["faulty_rows"] == 10, kind
            assert bool(torch.isfinite(r[kind]["params"]).all())
            assert torch.equal(r[kind]["params"], results[0][kind]["params"])


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"byzantine": [7]}, "byzantine ranks must lie in"),
        ({"byzantine": [0]}, "give an attack exactly when"),
        ({"attack": robust.SignFlip()}, "give an attack exactly when"),
        ({"worker_momentum": 1.0}, "worker_momentum must be"),
        ({"worker_momentum": -0.1}, "worker_momentum must be"),
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
