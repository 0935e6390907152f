"""L-GreCo under DDP and in the simulator: the same per-layer choices and bitwise-identical parameters; resumes."""

from __future__ import annotations

import io

import pytest
import torch
from dist_utils import run_workers
from sim_utils import simulate_digits

from commlib.adaptive import LGreCo
from commlib.compress import Identity
from commlib.feedback import EControl
from commlib.sim import Simulator
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp

STEPS = 25
WORLD = 4
# name -> (policy settings, error feedback); re-solves at τ = 5, 10, 15, 20 (steps 7, 12, 17, 22)
POLICIES = {
    "topk+econtrol": ({"default_option": "topk:0.1", "alpha": 2.0}, EControl(eta=0.025)),
    "powersgd": ({"default_option": "powersgd:4"}, None),
    "powersgd+ef": ({"default_option": "powersgd:4:ef"}, None),  # PowerSGD's own error feedback, kept across ranks
}


def _policy(name: str) -> LGreCo:
    return LGreCo(period=5, window=3, **POLICIES[name][0])


def _ddp_runs(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from commlib import ddp
    from commlib.train import train_ddp

    out = {}
    for name, (_, feedback) in POLICIES.items():
        model = mlp(hidden=256)
        wrapped = DDP(model, bucket_cap_mb=0.05)
        state = ddp.CommState(wrapped, feedback=feedback, policy=_policy(name))
        wrapped.register_comm_hook(state, ddp.hook)
        cfg = TrainConfig(steps=STEPS)
        train_ddp(wrapped, make_optimizer(model, cfg), load_digits(), cfg, rank, world)
        buf = io.BytesIO()
        torch.save(state.state_dict(), buf)
        saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
        out[name] = {
            "params": [p.detach().clone() for p in model.parameters()],
            "decision": state.policy.decision(),
            "solves": state.policy.stats.solves,
            "saved_decision": saved["exchange"]["policy"]["decision"],
            "stats": state.stats.as_dict()["total"],
        }
    return out


@pytest.fixture(scope="module")
def ddp_runs() -> list[dict]:
    return run_workers(_ddp_runs, WORLD, timeout=600)


def _simulate(name: str, start: int = 0, stop: int | None = None, state: dict | None = None):
    """Train in the simulator from ``start`` to ``stop``, optionally from a checkpoint; returns what to compare."""
    return simulate_digits(lambda: Simulator(Identity(), WORLD, feedback=POLICIES[name][1], policy=_policy(name)),
                           STEPS, start, stop, state)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_simulator_matches_ddp_choices_and_bits(name: str, ddp_runs: list[dict]) -> None:
    model, _, sim = _simulate(name)
    policy = sim.policy
    assert policy.stats.solves == 4
    for rank, run in enumerate(ddp_runs):
        ours = run[name]
        assert torch.equal(ours["decision"], policy.decision()), f"rank {rank} chose other options"
        assert torch.equal(ours["saved_decision"], policy.decision())
        assert ours["solves"] == (4 if rank == 0 else 0)  # only rank 0 decides; the others load its broadcast
        for a, b in zip(model.parameters(), ours["params"]):
            assert torch.equal(a.detach(), b)
    total = sim.stats.total
    assert ddp_runs[0][name]["stats"]["policy_sent_bytes"] == total.policy_sent_bytes
    if name == "topk+econtrol":  # the policy moved away from the uniform default, and it shows in the bytes
        assert policy.stats.predicted_bytes != policy.stats.default_bytes
    assert sim.stats.last.policy_sent_bytes == sim.stats.last.policy_predicted_bytes == policy.stats.predicted_bytes


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_resumed_simulation_matches_an_uninterrupted_one(name: str) -> None:
    """Stop at step 16, mid-window (sums of τ = 12, 13 held) before the re-solve at τ = 15; resume to the end."""
    straight, _, straight_sim = _simulate(name)
    model, optimizer, sim = _simulate(name, stop=16)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "sim": sim.state_dict()}, buf)
    resumed, _, resumed_sim = _simulate(name, start=16, state=torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.equal(resumed_sim.policy.decision(), straight_sim.policy.decision())
    assert resumed_sim.policy.stats.solves == straight_sim.policy.stats.solves
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)
