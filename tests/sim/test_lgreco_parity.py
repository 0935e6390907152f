"""L-GreCo under DDP and in the simulator: the same per-layer choices and bitwise-identical parameters; resumes."""

from __future__ import annotations

import io

import pytest
import torch
from dist_utils import run_workers
from sim_utils import simulate_digits

from commlib.adaptive import LGreCo, TimeCost
from commlib.compress import Identity
from commlib.feedback import EControl
from commlib.sim import Simulator, ddp_bucket_layout
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp

STEPS = 25
WORLD = 4
BUCKET_CAP_MB = 0.05  # the digits MLP in two buckets: [4.*, 2.*] and [0.*]
# name -> (policy settings, error feedback); re-solves at τ = 5, 10, 15, 20 (steps 7, 12, 17, 22)
POLICIES = {
    "topk+econtrol": ({"default_option": "topk:0.1", "alpha": 2.0}, EControl(eta=0.025)),
    "powersgd": ({"default_option": "powersgd:4"}, None),
    "powersgd+ef": ({"default_option": "powersgd:4:ef"}, None),  # PowerSGD's own error feedback, kept across ranks
    # a time model under which the bucket check decides by bucket (see test_the_time_model_decides_by_ddp_s_buckets)
    "topk+econtrol+time": ({"default_option": "topk:0.1", "options": ["topk:0.1", "fp32"], "alpha": 2.0},
                           EControl(eta=0.025)),
}


def _latency_bound() -> TimeCost:
    """0.1 ms per collective, 1 ns per byte: per layer top-k's all-gather beats fp32's larger ordered all-reduce,
    but a bucket pays the flag's all-reduce anyway, so sending a small bucket all fp32 saves the all-gather's
    latency: the bucket [0.weight, 0.bias] goes fp32; [4.*, 2.*] is too large, and so is one bucket of all."""
    kinds = ("allreduce", "allgather", "ordered")
    return TimeCost(latency=dict.fromkeys(kinds, 1e-4), seconds_per_byte=dict.fromkeys(kinds, 1e-9))


def _policy(name: str) -> LGreCo:
    cost = {"cost_model": _latency_bound()} if name.endswith("+time") else {}
    return LGreCo(period=5, window=3, **POLICIES[name][0], **cost)


def _buckets(name: str) -> list[list[str]] | None:
    """The DDP runs' bucket layout for the time model's policy (the others decide alike without one)."""
    return ddp_bucket_layout(mlp(hidden=256), BUCKET_CAP_MB) if name.endswith("+time") else None


def _ddp_runs(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from commlib import ddp
    from commlib.train import train_ddp

    out = {}
    for name, (_, feedback) in POLICIES.items():
        model = mlp(hidden=256)
        wrapped = DDP(model, bucket_cap_mb=BUCKET_CAP_MB)
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
            "layout": state.bucket_layout,
            "dense_buckets": state.policy.stats.dense_buckets,
        }
    return out


@pytest.fixture(scope="module")
def ddp_runs() -> list[dict]:
    return run_workers(_ddp_runs, WORLD, timeout=600)


def _simulate(name: str, start: int = 0, stop: int | None = None, state: dict | None = None,
              buckets: list[list[str]] | None = None):
    """Train in the simulator from ``start`` to ``stop``, optionally from a checkpoint; returns what to compare.

    ``buckets``: the layout (default: the DDP runs', :func:`_buckets`)."""
    layout = _buckets(name) if buckets is None else buckets
    return simulate_digits(lambda: Simulator(Identity(), WORLD, feedback=POLICIES[name][1], policy=_policy(name),
                                             buckets=layout), STEPS, start, stop, state)


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


@pytest.mark.timeout(900)
def test_the_time_model_decides_by_ddp_s_buckets(ddp_runs: list[dict]) -> None:
    """Under DDP the small bucket goes fp32; a simulator given DDP's layout decides so too (the parity test above),
    while one that sends each step as one bucket keeps top-k everywhere: the layout is what makes them agree."""
    name = "topk+econtrol+time"
    for run in ddp_runs:
        assert run[name]["layout"] == ddp_bucket_layout(mlp(hidden=256), BUCKET_CAP_MB)
        assert len(run[name]["layout"]) == 2
    assert ddp_runs[0][name]["dense_buckets"] == 4  # at every re-solve
    _, _, laid_out = _simulate(name)
    assert {n: str(o) for n, o in laid_out.policy.choices().items()} == {
        "0.weight": "fp32", "2.weight": "topk:0.1", "4.weight": "topk:0.1"}
    _, _, one_bucket = _simulate(name, buckets=[[n for n, _ in mlp(hidden=256).named_parameters()]])
    assert {str(o) for o in one_bucket.policy.choices().values()} == {"topk:0.1"}
    assert one_bucket.policy.stats.dense_buckets == 0
