"""Each sketch mode under DDP (gloo, many buckets) ends with the simulator's parameters, bit for bit (CPU).

DDP's first iteration runs with one bucket and later ones with the rebuilt
buckets; the sketches key their randomness and state by parameter name, not by
bucket, so the bucket layout does not change the bits. FetchSGD and the two-round
SketchedSGD sketch each tensor on its own (per-tensor semantics), so they are
the same under any bucketing; SketchedSGD also keeps its momentum and error per
parameter name, and its second round interleaves with other buckets' first.
"""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_workers

from commlib.compress.sketch import FetchSGD, Sketch, SketchedSGD
from commlib.feedback import EF14
from commlib.privacy import DPSketch
from commlib.sim import Simulator
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_ddp, train_simulated

WORLD = 2
CFG = TrainConfig(steps=8, lr=0.01)
PLAIN_SGD = TrainConfig(steps=8, lr=0.03, momentum=0.0)  # SketchedSGD holds the momentum (92% in 150 steps)
# name -> (compressor, error feedback, config): unbiased, EF-projection, FetchSGD, SketchedSGD, the DP mechanism
MODES = {
    "srht-unbiased": (Sketch(ratio=10, family="srht", block=1024), None, CFG),
    "countsketch-unbiased": (Sketch(ratio=10, family="countsketch", rows=2), None, CFG),
    "ef-projection": (Sketch(ratio=10, mode="projection", block=1024), EF14(), CFG),
    "fetchsgd": (FetchSGD(ratio=10, rows=3, density=0.01), None, CFG),
    "sketched-sgd": (SketchedSGD(ratio=10, rows=3, share=0.5, momentum=0.9), None, PLAIN_SGD),
    "dp-sketch": (DPSketch(noise_multiplier=0.5, max_norm=1.0, noise_seed=123, ratio=10, block=1024), None, CFG),
}


def _ddp_runs(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from commlib import ddp

    out = {}
    for name, (compressor, feedback, cfg) in MODES.items():
        model = mlp(hidden=256)
        wrapped = DDP(model, bucket_cap_mb=0.05)  # several buckets per step
        state = ddp.CommState(wrapped, compressor=compressor, feedback=feedback)
        wrapped.register_comm_hook(state, ddp.hook)
        train_ddp(wrapped, make_optimizer(model, cfg), load_digits(), cfg, rank, world)
        out[name] = {"params": [p.detach().clone() for p in model.parameters()]}
    return out


@pytest.fixture(scope="module")
def ddp_runs() -> list[dict]:
    return run_workers(_ddp_runs, WORLD, timeout=600)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sorted(MODES))
def test_ddp_matches_simulator_bitwise(name: str, ddp_runs: list[dict]) -> None:
    for other in ddp_runs[1:]:  # every rank ends with the same bits
        assert all(torch.equal(a, b) for a, b in zip(ddp_runs[0][name]["params"], other[name]["params"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the DDP workers ran single-threaded
    try:
        model = mlp(hidden=256)
        compressor, feedback, cfg = MODES[name]
        sim = Simulator(compressor, WORLD, feedback=feedback)
        train_simulated(model, make_optimizer(model, cfg), load_digits(), cfg, sim)
    finally:
        torch.set_num_threads(threads)
    initial = mlp(hidden=256)
    moved = [not torch.equal(p, q) for p, q in zip(model.parameters(), initial.parameters())]
    assert any(moved)
    for ours, theirs in zip(model.parameters(), ddp_runs[0][name]["params"]):
        assert torch.equal(ours.detach(), theirs)
