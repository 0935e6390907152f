"""Accordion as ``policy=`` of the runtimes: simulator and DDP agree on choices and bits; checkpoints resume."""

from __future__ import annotations

import io

import pytest
import torch
from dist_utils import run_workers
from sim_utils import simulate_digits

from commlib.adaptive import Accordion
from commlib.comm.exchange import GradientExchange
from commlib.compress import Identity
from commlib.sim import Simulator
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp

STEPS, WORLD = 21, 2


def _accordion() -> Accordion:
    """Checks at τ = 5, 10, 15 (after steps 6, 11, 16); η = 0.3 makes layers go heavy once their norms settle."""
    return Accordion("topk:0.2", "topk:0.05", interval=5, window=3, eta=0.3)


def _simulate(start: int = 0, stop: int | None = None, state: dict | None = None):
    return simulate_digits(lambda: Simulator(Identity(), WORLD, policy=_accordion()), STEPS, start, stop, state)


def test_rejects_an_object_that_is_not_a_policy() -> None:
    with pytest.raises(TypeError, match="LGreCo or Accordion"):
        GradientExchange(Identity(), 0, 1, policy=object())  # type: ignore[arg-type]


def test_simulator_broadcasts_rank0_decisions_and_bytes_follow_them() -> None:
    _, _, sim = _simulate()
    deciding = sim.policy
    assert deciding.stats.checks == 3
    assert deciding.layer_names == ["0.weight", "2.weight", "4.weight"]
    for worker in sim.workers[1:]:
        assert torch.equal(worker.policy.decision(), deciding.decision())
        assert worker.policy.stats.checks == 0 and worker.policy.stats.skipped == 3  # they load rank 0's broadcast
    assert deciding.stats.changed_layers > 0
    assert deciding.stats.predicted_bytes < deciding.stats.light_bytes  # some layer went heavy
    assert sim.stats.last.policy_sent_bytes == sim.stats.last.policy_predicted_bytes == deciding.stats.predicted_bytes


def test_resumed_simulation_matches_an_uninterrupted_one() -> None:
    """Stop at step 16, mid-window before the check at τ = 15 (after step 16); resume from a weights_only checkpoint."""
    straight, _, straight_sim = _simulate()
    model, optimizer, sim = _simulate(stop=16)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "sim": sim.state_dict()}, buf)
    resumed, _, resumed_sim = _simulate(start=16, state=torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.equal(resumed_sim.policy.decision(), straight_sim.policy.decision())
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)


def _ddp_run(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from commlib import ddp
    from commlib.train import train_ddp

    model = mlp(hidden=256)
    wrapped = DDP(model, bucket_cap_mb=0.05)
    state = ddp.CommState(wrapped, policy=_accordion())
    wrapped.register_comm_hook(state, ddp.hook)
    cfg = TrainConfig(steps=STEPS)
    train_ddp(wrapped, make_optimizer(model, cfg), load_digits(), cfg, rank, world)
    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    return {"params": [p.detach().clone() for p in model.parameters()], "decision": state.policy.decision(),
            "saved_decision": saved["exchange"]["policy"]["decision"], "checks": state.policy.stats.checks}


@pytest.mark.timeout(600)
def test_ddp_matches_the_simulator_choices_and_bits() -> None:
    runs = run_workers(_ddp_run, WORLD, timeout=300)
    model, _, sim = _simulate()
    for rank, run in enumerate(runs):
        assert torch.equal(run["decision"], sim.policy.decision()), f"rank {rank} chose other options"
        assert torch.equal(run["saved_decision"], sim.policy.decision())
        assert run["checks"] == (3 if rank == 0 else 0)
        for a, b in zip(model.parameters(), run["params"]):
            assert torch.equal(a.detach(), b)
