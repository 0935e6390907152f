"""L-GreCo's TimeCost refined from the exchange's own timings: attribution, bad input, gloo runs, agreement."""

from __future__ import annotations

import io
import math

import pytest
import torch
from dist_utils import run_workers

from commlib.adaptive import LGreCo, TimeCost, Timing
from commlib.adaptive.cost import RoundTiming, traffic_factor
from commlib.compress import Identity
from commlib.sim import Simulator

SHAPES = {"a": (64, 32), "b": (48, 40)}
OPTIONS = ["topk:0.05", "topk:0.1", "fp32"]


def _model(latency: float = 1e-3, beta: float = 1e-9) -> TimeCost:
    return TimeCost(latency={"allgather": latency, "allreduce": latency},
                    seconds_per_byte={"allgather": beta, "allreduce": beta})


def _policy(model: TimeCost, momentum: float = 0.5, **kwargs) -> LGreCo:
    policy = LGreCo(period=3, window=2, options=OPTIONS, default_option="topk:0.1", cost_model=model,
                    refine_time=True, refine_momentum=momentum, **kwargs)
    policy.register(SHAPES, world_size=3)
    return policy


def test_a_round_is_split_in_proportion_to_the_prediction() -> None:
    model = _model()
    measured = RoundTiming((("allgather", 1000), ("ordered", 1 << 20)), 3, 0.5)
    parts = model.attribute(measured)
    predicted = [model.seconds(k, traffic_factor(k, 3) * p) for k, p in measured.collectives]
    assert [(t.collective, t.payload_bytes, t.world_size) for t in parts] == [("allgather", 1000, 3),
                                                                              ("ordered", 1 << 20, 3)]
    assert sum(t.seconds for t in parts) == pytest.approx(0.5)
    assert parts[0].seconds / parts[1].seconds == pytest.approx(predicted[0] / predicted[1])
    assert model.attribute(RoundTiming((("allreduce", 64),), 2, 0.25))[0].seconds == 0.25
    assert model.attribute(RoundTiming((), 2, 0.25)) == []  # a round of broadcasts only: nothing to price
    free = TimeCost(latency={"allgather": 0.0, "allreduce": 0.0}, seconds_per_byte={"allgather": 0.0, "allreduce": 0.0})
    assert [t.seconds for t in free.attribute(RoundTiming((("allgather", 8), ("allreduce", 8)), 2, 1.0))] == [0.5, 0.5]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Timing("allgather", 100, 2, -1.0), "seconds"),
        (lambda: Timing("allgather", 100, 2, math.nan), "seconds"),
        (lambda: Timing("allgather", 100, 2, math.inf), "seconds"),
        (lambda: Timing("allgather", -4, 2, 1.0), "payload_bytes"),
        (lambda: Timing("broadcast", 4, 2, 1.0), "unknown collective"),
        (lambda: Timing("allgather", 4, 0, 1.0), "world_size"),
        (lambda: RoundTiming((("allgather", 4),), 2, -0.5), "seconds"),
        (lambda: RoundTiming((("allgather", 4.5),), 2, 0.5), "payload_bytes"),
        (lambda: LGreCo(refine_time=True), "TimeCost"),
        (lambda: LGreCo(cost_model=_model(), refine_time=True, refine_momentum=0.0), "refine_momentum"),
        (lambda: LGreCo(cost_model=_model(), refine_time=1), "refine_time"),
        (lambda: LGreCo(cost_model=_model()).refine([]), "refine_time=True"),
    ],
)
def test_bad_input_is_rejected_by_name(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_the_fingerprint_names_refinement_only_when_it_is_on() -> None:
    assert "refine_time" not in LGreCo(cost_model=_model()).config()  # configs of older checkpoints stay valid
    on = LGreCo(cost_model=_model(), refine_time=True, refine_momentum=0.25).config()
    assert on["refine_time"] is True and on["refine_momentum"] == 0.25


def test_samples_without_information_leave_the_model_alone() -> None:
    model = _model()
    before = model.state_dict()
    model.update([Timing("allgather", 0, 4, 0.5), Timing("allgather", 4096, 1, 0.5), Timing("allreduce", 4096, 4, 0.0)],
                 momentum=1.0)
    assert model.state_dict() == before
    with pytest.raises(TypeError, match="Timing"):
        model.update([("allgather", 4096, 4, 0.5)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="RoundTiming"):
        _policy(_model()).refine([Timing("allgather", 4096, 4, 0.5)])  # type: ignore[list-item]


def test_noisy_timings_that_shrink_with_size_refine_beta_instead_of_raising() -> None:
    model = _model(latency=1e-3, beta=1e-8)
    samples = [Timing("allgather", 1 << 10, 2, 5e-3), Timing("allgather", 1 << 20, 2, 4e-3)]
    model.update(samples, momentum=1.0)
    assert model.latency["allgather"] == 1e-3  # kept
    expected = ((5e-3 - 1e-3) / (1 << 10) + (4e-3 - 1e-3) / (1 << 20)) / 2
    assert model.seconds_per_byte["allgather"] == pytest.approx(expected)


def test_refine_moves_the_prediction_to_the_measured_rounds_and_checkpoints_it() -> None:
    truth = _model(latency=2e-4, beta=3e-9)
    sizes = [1 << 12, 1 << 16, 1 << 20]
    rounds = [RoundTiming((("allgather", p),), 3, truth.seconds("allgather", 2 * p)) for p in sizes]
    rounds += [RoundTiming((("allreduce", p), ("allgather", p // 8)), 3,
                           truth.round_seconds((("allreduce", p), ("allgather", p // 8)), 3)) for p in sizes]
    policy = _policy(_model(latency=0.1, beta=1e-6), momentum=1.0)
    cost_before = policy.stats.predicted_cost
    policy.refine(rounds)
    stats = policy.stats
    assert stats.refits == 1 and stats.refit_measured_s == pytest.approx(sum(r.seconds for r in rounds))
    assert stats.refit_predicted_s > 100 * stats.refit_measured_s  # the model started far off …
    assert stats.refit_refined_s == pytest.approx(stats.refit_measured_s, rel=0.05)  # … and now fits
    assert policy.cost_model.latency["allgather"] == pytest.approx(2e-4, rel=0.05)
    assert policy.stats.predicted_cost < cost_before  # the decision's predicted cost is re-priced
    policy.refine([])  # nothing measured: nothing changes
    assert policy.stats.refits == 1
    buf = io.BytesIO()
    torch.save(policy.state_dict(), buf)
    restored = _policy(_model())
    restored.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert restored.cost_model.state_dict() == policy.cost_model.state_dict()


def test_the_simulator_has_no_timings_and_keeps_the_model() -> None:
    """No clock in the simulator: no refit, no timed seconds; the predicted collective seconds are still reported."""
    model = _model()
    sim = Simulator(Identity(), 3, policy=LGreCo(period=3, window=2, options=OPTIONS, default_option="topk:0.1",
                                                 cost_model=model, refine_time=True))
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        sim.exchange([[(n, torch.randn(s, generator=gen)) for n, s in SHAPES.items()] for _ in range(3)])
    assert sim.policy.stats.solves == 2 and sim.policy.stats.refits == 0
    assert all(w.policy.cost_model.state_dict() == model.state_dict() for w in sim.workers)
    total = sim.stats.total
    assert total.collective_s == 0.0 and total.predicted_collective_s > 0


STEPS = 8  # start_step 2; windows at steps 3-4 and 6-7; re-solves (with refits) after steps 4 and 7


def _ddp_refine(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from commlib import ddp
    from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_ddp

    model = mlp(hidden=128)
    wrapped = DDP(model, bucket_cap_mb=0.02)
    policy = LGreCo(period=3, window=2, options=OPTIONS, default_option="topk:0.1",
                    cost_model=_model(latency=0.5, beta=1e-6), refine_time=True, refine_momentum=0.5)
    state = ddp.CommState(wrapped, policy=policy)
    wrapped.register_comm_hook(state, ddp.hook)
    calls = []
    update = policy.cost_model.update

    def recording(measured, momentum=0.1):
        calls.append([(t.collective, t.payload_bytes, t.world_size, t.seconds) for t in measured])
        return update(measured, momentum)

    policy.cost_model.update = recording
    cfg = TrainConfig(steps=STEPS)
    train_ddp(wrapped, make_optimizer(model, cfg), load_digits(), cfg, rank, world)
    return {"calls": calls, "model": policy.cost_model.state_dict(), "policy": policy.stats.as_dict(),
            "stats": state.stats.as_dict()["total"], "decision": policy.decision(),
            "params": [p.detach().clone() for p in model.parameters()]}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world", [2, 3])
def test_gloo_timings_refine_the_model_identically_on_every_rank(world: int) -> None:
    runs = run_workers(_ddp_refine, world, timeout=240)
    first = runs[0]
    assert len(first["calls"]) == first["policy"]["refits"] == 2  # before each re-solve
    for call in first["calls"]:
        assert call and all(seconds > 0 and world_size == world for _, _, world_size, seconds in call)
        assert {"allgather"} <= {kind for kind, *_ in call}  # top-k's gathers (and the small dense reduces)
    policy = first["policy"]
    measured, before, after = policy["refit_measured_s"], policy["refit_predicted_s"], policy["refit_refined_s"]
    assert abs(after - measured) < abs(before - measured)  # the fit moved toward the measured seconds
    assert first["stats"]["collective_s"] > 0 and first["stats"]["predicted_collective_s"] > 0
    for rank, run in enumerate(runs[1:], start=1):
        assert run["calls"] == first["calls"], f"rank {rank} refined from other timings"
        assert run["model"] == first["model"], f"rank {rank} holds another model"
        assert torch.equal(run["decision"], first["decision"])
        assert all(torch.equal(a, b) for a, b in zip(run["params"], first["params"]))
