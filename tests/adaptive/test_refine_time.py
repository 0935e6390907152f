"""L-GreCo's TimeCost refined from the exchange's own timings: the joint refit, bad input, gloo runs, agreement."""

from __future__ import annotations

import io
import math

import pytest
import torch
from dist_utils import run_workers

from commlib.adaptive import LGreCo, RoundTiming, TimeCost
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


def _truth() -> TimeCost:
    return TimeCost(latency={"allgather": 4e-4, "allreduce": 1e-4, "ordered": 7e-4},
                    seconds_per_byte={"allgather": 2e-9, "allreduce": 5e-9, "ordered": 3e-9})


def _rounds(truth: TimeCost, world: int = 3) -> list[RoundTiming]:
    """Rounds as an L-GreCo exchange runs them: two all-gathers of different sizes fused in one round beside a
    small all-reduce, PowerSGD's Q alone, a split ordered all-reduce, at a few bucket sizes."""
    shapes = [((("allreduce", 8), ("allgather", 4 * p), ("allgather", p // 2)), (("allgather", p),),
               (("ordered", 64 * p),)) for p in (1 << 10, 1 << 13, 1 << 16)]
    return [RoundTiming(c, world, truth.round_seconds(c, world)) for trio in shapes for c in trio]


def test_the_joint_refit_reproduces_rounds_of_several_collectives() -> None:
    """Splitting a round by the old model's shares (the former refit) could not fit rounds that fuse several
    all-gathers; the joint fit recovers the model that made them, from a model 100× off."""
    truth, rounds = _truth(), _rounds(_truth())
    model = TimeCost(latency={"allgather": 0.04, "allreduce": 1e-6}, seconds_per_byte={"allgather": 2e-7,
                                                                                       "allreduce": 5e-11})
    model.refit(rounds, momentum=1.0)
    for r in rounds:
        assert model.round_seconds(r.collectives, 3) == pytest.approx(r.seconds, rel=0.02), r
    for kind in ("allgather", "ordered"):
        assert model.latency[kind] == pytest.approx(truth.latency[kind], rel=0.05)
        assert model.seconds_per_byte[kind] == pytest.approx(truth.seconds_per_byte[kind], rel=0.05)
    # the all-reduce is only ever the 8-byte flag: its latency is corrected, its per-byte cost barely moves
    assert model.latency["allreduce"] == pytest.approx(truth.latency["allreduce"], rel=0.01)
    assert model.seconds_per_byte["allreduce"] == pytest.approx(5e-11, rel=0.1)


def test_momentum_blends_and_what_the_rounds_cannot_tell_apart_stays_near_the_model() -> None:
    truth = _truth()
    rounds = _rounds(truth)
    full, half = _model(), _model()
    full.refit(rounds, momentum=1.0)
    half.refit(rounds, momentum=0.5)
    start = _model()
    for kind in ("allgather", "allreduce"):
        assert half.latency[kind] == pytest.approx((start.latency[kind] + full.latency[kind]) / 2)
    one_size = _model(latency=1e-3, beta=1e-9)
    same = [RoundTiming((("allgather", 1 << 16),), 3, 4e-3)] * 5  # one size: α and β cannot be told apart
    one_size.refit(same, momentum=1.0)
    assert one_size.round_seconds(same[0].collectives, 3) == pytest.approx(4e-3, rel=0.02)
    assert one_size.latency["allgather"] > 0 and one_size.seconds_per_byte["allgather"] > 0  # both moved, neither gone
    assert "allreduce" not in {k for r in same for k, _ in r.collectives}
    assert one_size.latency["allreduce"] == 1e-3  # a kind absent from the rounds is left alone


def test_refit_is_deterministic_and_needs_information() -> None:
    a, b = _model(), _model()
    a.refit(_rounds(_truth()), 0.3)
    b.refit(_rounds(_truth()), 0.3)
    assert a.state_dict() == b.state_dict()
    model = _model()
    before = model.state_dict()
    model.refit([RoundTiming((), 3, 0.5), RoundTiming((("allgather", 64),), 1, 0.5),
                 RoundTiming((("allgather", 64),), 3, 0.0)], momentum=1.0)
    assert model.state_dict() == before  # no collective, a world of one, zero seconds: nothing to fit
    with pytest.raises(TypeError, match="RoundTiming"):
        model.refit([("allgather", 4096, 4, 0.5)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="RoundTiming"):
        _policy(_model()).refine([("allgather", 4096, 4, 0.5)])  # type: ignore[list-item]
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="momentum"):
            model.refit(_rounds(_truth()), bad)


def test_the_local_work_is_rescaled_toward_what_the_exchange_measured() -> None:
    from commlib.adaptive import Option
    from commlib.adaptive.cost import exchange_local_seconds_model, exchange_seconds

    model = TimeCost(codec={"topk:0.1": (2e-9, 1e-9), "fp32": (1e-9, 0.0)})
    layers = [((64, 32), Option.parse("topk:0.1")), ((48, 40), Option.parse("fp32"))]
    local = exchange_local_seconds_model(model, layers, 3, dense_numel=100)
    link = exchange_seconds(TimeCost(), layers, 3, dense_numel=100)
    assert exchange_seconds(model, layers, 3, dense_numel=100) == pytest.approx(link + local)
    model.rescale_local(3 * local, local, momentum=1.0)  # the exchange's own work took 3× the prediction
    assert model.local_scale == pytest.approx(3.0)
    assert exchange_local_seconds_model(model, layers, 3, dense_numel=100) == pytest.approx(3 * local)
    model.rescale_local(1.0, 3.0, momentum=0.5)  # now a third of it: half way there
    assert model.local_scale == pytest.approx(2.0)
    for measured, predicted in ((0.0, 1.0), (1.0, 0.0), (math.nan, 1.0), (1.0, math.inf)):
        model.rescale_local(measured, predicted, momentum=1.0)
    assert model.local_scale == pytest.approx(2.0)  # nothing to learn from these
    state = model.state_dict()
    assert state["local_scale"] == pytest.approx(2.0)
    restored = TimeCost()
    restored.load_state_dict(state)
    assert restored.local_scale == pytest.approx(2.0)
    restored.load_state_dict({k: v for k, v in state.items() if k != "local_scale"})  # saved before it existed
    assert restored.local_scale == 1.0
    for bad in (0.0, -1.0, math.nan, True):
        with pytest.raises(ValueError, match="local_scale"):
            TimeCost(local_scale=bad)
    with pytest.raises(ValueError, match="momentum"):
        model.rescale_local(1.0, 1.0, momentum=0.0)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RoundTiming((("allgather", 100),), 2, -1.0), "seconds"),
        (lambda: RoundTiming((("allgather", 100),), 2, math.nan), "seconds"),
        (lambda: RoundTiming((("allgather", 100),), 2, math.inf), "seconds"),
        (lambda: RoundTiming((("allgather", -4),), 2, 1.0), "payload_bytes"),
        (lambda: RoundTiming((("broadcast", 4),), 2, 1.0), "unknown collective"),
        (lambda: RoundTiming((("allgather", 4),), 0, 1.0), "world_size"),
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
    policy.cost_model.codec = dict.fromkeys(OPTIONS, (1e-12, 1e-12))  # local work priced at ~nothing
    state = ddp.CommState(wrapped, policy=policy)
    wrapped.register_comm_hook(state, ddp.hook)
    calls = []
    refit = policy.cost_model.refit

    def recording(rounds, momentum=0.1):
        calls.append([(r.collectives, r.world_size, r.seconds) for r in rounds])
        return refit(rounds, momentum)

    policy.cost_model.refit = recording
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
        assert call and all(seconds > 0 and world_size == world for _, world_size, seconds in call)
        assert {"allgather"} <= {kind for collectives, *_ in call for kind, _ in collectives}  # top-k's gathers
    policy = first["policy"]
    measured, before, after = policy["refit_measured_s"], policy["refit_predicted_s"], policy["refit_refined_s"]
    assert abs(after - measured) < abs(before - measured)  # the fit moved toward the measured seconds
    # the buckets' own work took far longer than the model's picoseconds: the local scale went up, on every rank
    assert policy["local_scale"] == first["model"]["local_scale"] > 100
    assert first["stats"]["collective_s"] > 0 and first["stats"]["predicted_collective_s"] > 0
    for rank, run in enumerate(runs[1:], start=1):
        assert run["calls"] == first["calls"], f"rank {rank} refined from other timings"
        assert run["model"] == first["model"], f"rank {rank} holds another model"
        assert torch.equal(run["decision"], first["decision"])
        assert all(torch.equal(a, b) for a, b in zip(run["params"], first["params"]))
