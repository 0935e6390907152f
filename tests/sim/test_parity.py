"""A 4-worker DDP run and a 4-worker simulator run with the same seeds end with bitwise-identical parameters."""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_workers

from commlib.compress import QSGD, PowerSGD, TopK
from commlib.feedback import EControl
from commlib.sim import Simulator
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_ddp, train_simulated

STEPS = 25
FEEDBACK_OPTIONS = {"feedback_warm_start": True, "check_every": 5}  # no effect without feedback
# name -> (compressor, error feedback)
COMPRESSORS = {
    "topk": (TopK(density=0.1), None),
    "qsgd": (QSGD(bits=4), None),
    "powersgd": (PowerSGD(rank=4), None),
    "powersgd+ef": (PowerSGD(rank=4, error_feedback=True), None),
    "topk+econtrol": (TopK(density=0.05), EControl(eta=0.025)),
}


def _ddp_runs(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from commlib import ddp

    out = {}
    for name, (compressor, feedback) in COMPRESSORS.items():
        model = mlp(hidden=256)
        wrapped = DDP(model, bucket_cap_mb=0.05)
        state = ddp.CommState(wrapped, compressor=compressor, feedback=feedback, **FEEDBACK_OPTIONS)
        wrapped.register_comm_hook(state, ddp.hook)
        cfg = TrainConfig(steps=STEPS)
        train_ddp(wrapped, make_optimizer(model, cfg), load_digits(), cfg, rank, world)
        out[name] = [p.detach().clone() for p in model.parameters()]
    return out


@pytest.fixture(scope="module")
def ddp_params() -> dict:
    return run_workers(_ddp_runs, 4)[0]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_simulator_matches_ddp_bitwise(name: str, ddp_params: dict) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the DDP workers ran single-threaded
    try:
        model = mlp(hidden=256)
        cfg = TrainConfig(steps=STEPS)
        compressor, feedback = COMPRESSORS[name]
        sim = Simulator(compressor, 4, feedback=feedback, **FEEDBACK_OPTIONS)
        train_simulated(model, make_optimizer(model, cfg), load_digits(), cfg, sim)
    finally:
        torch.set_num_threads(threads)
    for ours, theirs in zip(model.parameters(), ddp_params[name]):
        assert torch.equal(ours.detach(), theirs)


def test_powersgd_error_feedback_changes_the_run(ddp_params: dict) -> None:
    """The EF entry's parity is not the plain PowerSGD run's: its error feedback really acts."""
    assert not all(torch.equal(a, b) for a, b in zip(ddp_params["powersgd"], ddp_params["powersgd+ef"]))


def test_simulator_detects_diverging_workers() -> None:
    """Power check of the parity machinery: workers whose configs differ are caught, not averaged silently."""
    from commlib.comm.exchange import GradientExchange
    from commlib.comm.local import run_lockstep
    from commlib.errors import ProtocolMismatchError

    grads = [[("w", torch.randn(64, 64))] for _ in range(2)]
    workers = [GradientExchange(TopK(density=0.1), 0, 2), GradientExchange(TopK(density=0.2), 1, 2)]
    with pytest.raises(ProtocolMismatchError):
        run_lockstep([w.protocol(g, step=5) for w, g in zip(workers, grads)])
