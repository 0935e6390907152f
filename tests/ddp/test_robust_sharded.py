"""Sharded mode of the robust hook: all-to-all + Gram all-reduce gives the gathered path's aggregate, O(d) memory."""

from __future__ import annotations

import pytest
import torch
from ddp.robust_workers import sharded_rules, sharded_training, sharded_vs_gathered, worker_vector
from dist_utils import run_workers

from commlib import robust
from commlib.comm.local import run_lockstep
from commlib.compress import TopK
from commlib.ddp.robust import RobustState, robust_protocol, sharded_protocol

WORLD = 4
D = 10_003  # not a multiple of the world size: the last slice is padded
# coordinate-wise rules see the same values per coordinate on both paths: same bits
BITWISE = {"mean", "median", "trimmed_mean", "meamed", "phocas"}


@pytest.fixture(scope="module")
def gloo_results():
    return run_workers(sharded_vs_gathered, WORLD, D, timeout=300)


@pytest.mark.parametrize("name", sorted(sharded_rules()))
def test_sharded_equals_gathered_on_gloo(gloo_results, name):
    first = gloo_results[0][name]
    for r in gloo_results:
        assert torch.equal(r[name]["sharded"], first["sharded"]), "ranks disagree"
        assert torch.equal(r[name]["gathered"], first["gathered"])
    assert first["sharded"].shape == (D,)
    if name in BITWISE:
        assert torch.equal(first["sharded"], first["gathered"])
    else:
        torch.testing.assert_close(first["sharded"], first["gathered"], rtol=1e-5, atol=1e-5)


def test_krum_picks_the_same_worker_bitwise(gloo_results):
    """A one-hot Gram rule: the sharded output is exactly one worker's vector, the one the gathered path picks."""
    first = gloo_results[0]["krum"]
    assert torch.equal(first["sharded"], first["gathered"])
    assert any(torch.equal(first["sharded"], worker_vector(r, D)) for r in range(WORLD))


def _lockstep(world: int, rule_factory, vectors, monkeypatch, **options):
    """Run both protocols for ``world`` virtual ranks in lockstep; each rank's results and faulty counts."""
    monkeypatch.setattr("torch.distributed.get_rank", lambda group=None: 0)
    monkeypatch.setattr("torch.distributed.get_world_size", lambda group=None: world)
    out = {}
    for kind, protocol in (("gathered", robust_protocol), ("sharded", sharded_protocol)):
        states = [RobustState(torch.nn.Linear(2, 2), rule_factory(), sharded=kind == "sharded", **options)
                  for _ in range(world)]
        for r, state in enumerate(states):
            state.rank = r
        results = run_lockstep([protocol(s, vectors[r], 0) for r, s in enumerate(states)])
        out[kind] = (results, [s.faulty_rows for s in states])
    return out


@pytest.mark.parametrize("name", sorted(sharded_rules()))
def test_non_finite_slice_counts_as_one_faulty_worker_everywhere(name, monkeypatch):
    """A NaN in one coordinate of one worker lies in one rank's slice only; every rank must still drop that worker."""
    world, d = 6, 1001
    vectors = [worker_vector(r, d, nan_at=5 if r == 4 else None) for r in range(world)]
    rules = {**sharded_rules(), "krum": lambda: robust.Krum(f=1)}
    out = _lockstep(world, rules[name], vectors, monkeypatch)
    sharded, faulty = out["sharded"]
    gathered, _ = out["gathered"]
    assert faulty == [1] * world
    for r in range(world):
        assert bool(torch.isfinite(sharded[r]).all())
        assert torch.equal(sharded[r], sharded[0])
    if name in BITWISE:
        assert torch.equal(sharded[0], gathered[0])
    else:
        torch.testing.assert_close(sharded[0], gathered[0], rtol=1e-5, atol=1e-5)


def test_sharded_training_matches_gathered_training_with_alie():
    """30 DDP steps, rank 1 attacking, Flag: the sharded run ends where the gathered one does, on every rank."""
    results = run_workers(sharded_training, WORLD, 30, timeout=300)
    for r in results:
        assert torch.equal(r[True]["params"], results[0][True]["params"])
        torch.testing.assert_close(r[True]["params"], r[False]["params"], rtol=1e-4, atol=1e-5)
    assert results[0][True]["accuracy"] > 0.5


@pytest.mark.parametrize(
    "rule, options, problem",
    [
        (robust.CenteredClipping(), {}, "cannot run sharded"),
        (robust.Bulyan(f=0), {}, "cannot run sharded"),
        (robust.Compose([robust.NNM(f=1)], robust.CenteredClipping()), {}, "cannot run sharded"),
        (robust.Mean(), {"compressor": TopK(density=0.1)}, "give no compressor"),
    ],
)
def test_unsupported_sharded_configuration_is_refused(rule, options, problem, monkeypatch):
    monkeypatch.setattr("torch.distributed.get_rank", lambda group=None: 0)
    monkeypatch.setattr("torch.distributed.get_world_size", lambda group=None: 4)
    with pytest.raises(ValueError, match=problem):
        RobustState(torch.nn.Linear(2, 2), rule, sharded=True, **options)
