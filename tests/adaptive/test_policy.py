"""The LGreCo schedule as pure state: defaults, windows, re-solves, decisions as tensors, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from commlib.adaptive.cost import ByteCost, TimeCost
from commlib.adaptive.options import Option
from commlib.adaptive.policy import LGreCo
from commlib.adaptive.tables import cast_errors

SHAPES = {"low_rank": (64, 96), "bias": (64,), "full_rank": (48, 80)}


def gradients(step: int) -> dict[str, torch.Tensor]:
    """A rank-1 layer (plus faint noise), a bias and a full-rank layer."""
    g = torch.Generator().manual_seed(step)
    low = torch.outer(torch.randn(64, generator=g), torch.ones(96)) + 1e-3 * torch.randn(64, 96, generator=g)
    return {"low_rank": low, "bias": torch.randn(64, generator=g), "full_rank": torch.randn(48, 80, generator=g)}


def run(policy: LGreCo, steps: range) -> torch.Tensor:
    decision = policy.decision()
    for step in steps:
        decision = policy.decide(step)
        policy.observe(step, gradients(step))
    return decision


def make(**kwargs) -> LGreCo:
    policy = LGreCo(period=10, window=3, default_option="powersgd:4", **kwargs)
    policy.register(SHAPES)
    return policy


def test_uniform_default_until_the_first_solve_with_fp32_for_what_it_cannot_compress():
    policy = make()
    idx = {str(o): i for i, o in enumerate(policy.options)}
    assert [str(o) for o in policy.options] == [f"powersgd:{r}" for r in range(2, 9)] + ["fp32"]
    default = policy.decision()
    assert default.dtype == torch.int64 and default.tolist() == [idx["powersgd:4"], idx["fp32"], idx["powersgd:4"]]
    assert [s for s in range(25) if policy.wants_gradients(s)] == [7, 8, 9]
    assert run(policy, range(0, 10)).tolist() == default.tolist()
    assert policy.stats.solves == 0


def test_resolves_every_period_and_moves_rank_to_where_it_pays():
    policy = make(cost_model=ByteCost(), world_size=4)
    run(policy, range(0, 10))
    decision = policy.decide(10)
    choices = policy.choices()
    assert policy.stats.solves == 1 and policy.stats.last_step == 10
    assert choices["low_rank"] == Option.powersgd(2)  # the smallest rank: a rank-1 gradient loses nothing
    assert choices["bias"] == Option("fp32")
    assert choices["full_rank"].param[0] > 4  # the freed error budget buys rank for the full-rank layer
    sol = policy.last_solution
    assert sol is not None and sol.feasible and sol.error <= sol.budget
    assert policy.stats.predicted_cost <= policy.stats.default_cost
    assert policy.stats.predicted_bytes == sum(o.wire_bytes(SHAPES[n]) for n, o in choices.items())
    assert policy.stats.changed_layers == 2 and policy.stats.unit == "bytes"
    assert sum(policy.option_counts().values()) == 3
    assert run(policy, range(10, 20)).tolist() == decision.tolist()  # unchanged until the next solve
    policy.decide(20)
    assert policy.stats.solves == 2


def test_first_solve_decides_once_the_first_window_is_full_then_every_period():
    policy = make(first_solve=3)
    wanted = []
    for step in range(25):
        if policy.wants_gradients(step):
            wanted.append(step)
        run(policy, range(step, step + 1))
    assert wanted == [0, 1, 2, 7, 8, 9, 17, 18, 19]  # windows before τ = 3, 10, 20
    assert policy.stats.solves == 3 and policy.stats.last_step == 20
    assert policy.config()["first_solve"] == 3 and "first_solve" not in make().config()
    default = make()
    run(default, range(0, 10))
    assert default.stats.solves == 0  # without it, the first re-solve waits for τ = period
    once = make(first_solve=5, once=True)
    run(once, range(0, 30))
    assert once.stats.solves == 1 and once.stats.last_step == 5
    stopped, restored = make(first_solve=3), make(first_solve=3)
    run(stopped, range(0, 2))
    restored.load_state_dict(stopped.state_dict())
    run(restored, range(2, 4))
    assert restored.stats.solves == 1 and restored.stats.last_step == 3


@pytest.mark.parametrize("first_solve, match", [
    (2, r"first_solve \(2\) must be at least the window \(3\)"),
    (0, "first_solve must be"),
    (True, "first_solve must be"),
    (3.0, "first_solve must be"),
])
def test_first_solve_needs_a_full_window(first_solve, match):
    with pytest.raises(ValueError, match=match):
        make(first_solve=first_solve)


def test_ranks_without_statistics_take_the_broadcast_decision():
    solver, follower = make(), make()
    run(solver, range(0, 10))
    decision = solver.decide(10)
    assert follower.decide(10).tolist() == follower.default_decision().tolist()  # nothing observed here
    assert follower.stats.skipped == 1
    follower.load_decision(decision)
    assert follower.choices() == solver.choices()
    for bad, match in [
        (decision.to(torch.int32), "int64"),
        (decision[:2], "shape"),
        (torch.tensor([0, 0, 99]), r"\[0, 8\)"),
        (torch.tensor([0, 0, 0]), "cannot compress"),  # PowerSGD for the bias
    ]:
        with pytest.raises(ValueError, match=match):
            follower.load_decision(bad)


def test_state_dict_round_trips_mid_window_through_weights_only_load():
    policy = make(cost_model=TimeCost(), world_size=8)
    run(policy, range(0, 19))  # one solve done, two steps of the next window accumulated
    buf = io.BytesIO()
    torch.save(policy.state_dict(), buf)
    buf.seek(0)
    restored = LGreCo(period=10, window=3, default_option="powersgd:4", cost_model=TimeCost(), world_size=8)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored.stats == policy.stats and restored.decision().tolist() == policy.decision().tolist()
    run(policy, range(19, 21))
    run(restored, range(19, 21))
    assert restored.decision().tolist() == policy.decision().tolist() and restored.stats.solves == 2
    other = LGreCo(period=10, window=3, default_option="powersgd:2")
    with pytest.raises(ValueError, match="options"):
        other.load_state_dict(policy.state_dict())
    registered = make(cost_model=TimeCost(), world_size=8)
    registered.register({"x": (4, 4)})
    with pytest.raises(ValueError, match="other layers"):
        registered.load_state_dict(policy.state_dict())


def test_state_dict_keeps_the_world_size_it_priced_for():
    """A fresh policy restored from a checkpoint prices for the checkpoint's world size (the simulator registers
    a restored policy no more), a registered one refuses another, and an older checkpoint keeps its own."""
    policy = make(cost_model=TimeCost(), world_size=8)
    run(policy, range(0, 12))
    restored = LGreCo(period=10, window=3, default_option="powersgd:4", cost_model=TimeCost())  # world_size 1
    restored.load_state_dict(policy.state_dict())
    assert restored.world_size == 8
    run(policy, range(12, 21))
    run(restored, range(12, 21))
    assert restored.decision().tolist() == policy.decision().tolist()
    assert restored.stats.predicted_cost == policy.stats.predicted_cost and restored.stats.solves == 2
    four = make(cost_model=TimeCost(), world_size=4)
    with pytest.raises(ValueError, match="priced for 8 workers, this policy is registered for 4"):
        four.load_state_dict(policy.state_dict())
    older = {k: v for k, v in policy.state_dict().items() if k != "world_size"}
    four.load_state_dict(older)
    assert four.world_size == 4 and four.decision().tolist() == policy.decision().tolist()


def test_mixed_families_norm_metric_and_non_finite_steps():
    options = ["topk:0.01", "topk:0.1", "qsgd:4x128", "powersgd:2", "fp16"]
    policy = LGreCo(period=5, window=2, options=options, default_option="qsgd:4x128", error_metric="norm")
    policy.register(SHAPES)
    assert [str(o) for o in policy.options] == [*options, "fp32"]
    bad = gradients(3)
    bad["bias"][0] = float("inf")
    assert policy.observe(3, gradients(3)) and not policy.observe(4, bad)
    policy.decide(5)
    assert policy.stats.solves == 1 and policy.last_solution is not None
    errors = policy.last_solution
    assert np.isfinite(errors.error) and errors.error <= errors.budget
    with pytest.raises(ValueError, match="not a registered layer"):
        policy.observe(8, {"conv": torch.zeros(64, 96)})
    with pytest.raises(ValueError, match="shape"):
        policy.observe(8, {**gradients(8), "bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="no gradients"):
        policy.solve()


def test_bucket_by_bucket_feeding_equals_whole_steps_and_unseen_layers_keep_the_default():
    whole, buckets = make(cost_model=ByteCost(), world_size=4), make(cost_model=ByteCost(), world_size=4)
    for step in range(7, 10):
        grads = gradients(step)
        whole.observe(step, grads)
        buckets.observe(step, {"full_rank": grads["full_rank"], "bias": grads["bias"]})
        buckets.observe(step, {"low_rank": grads["low_rank"]})
    assert whole.decide(10).tolist() == buckets.decide(10).tolist()
    np.testing.assert_array_equal(whole.last_tables[0], buckets.last_tables[0])
    partial = make(cost_model=ByteCost(), world_size=4)
    for step in range(7, 10):
        partial.observe(step, {"full_rank": gradients(step)["full_rank"]})
    partial.decide(10)
    assert partial.choices()["low_rank"] == Option.powersgd(4)  # no statistics: the default
    assert partial.choices()["full_rank"] == Option.powersgd(4)  # alone, no budget to trade
    with pytest.raises(ValueError, match="full"):
        acc = make()
        for _ in range(4):
            acc.observe(9, {"bias": torch.ones(64)})


def test_casts_are_judged_at_one_rank_message_scale():
    policy = LGreCo(period=4, window=3, options=["fp16", "powersgd:1"], default_option="powersgd:1", world_size=4,
                    error_metric="squared")
    policy.register({"w": (8, 8)})
    grads = [torch.full((8, 8), 3e4) + torch.randn(8, 8, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    for step in range(1, 4):
        policy.observe(step, {"w": grads[step - 1]})
    policy.decide(4)
    errors, costs = policy.last_tables
    summed = grads[0] + grads[1] + grads[2]  # 9e4 overflows fp16, 9e4 / (3 steps x 4 ranks) does not
    assert errors[0, 0] == pytest.approx(cast_errors(summed, torch.float16, scale=12.0))
    assert np.isfinite(errors[0, 0]) and costs.shape == (1, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"period": 0}, "period"),
        ({"period": 5, "window": 6}, "window"),
        ({"alpha": 0.0}, "alpha"),
        ({"bins": 0}, "bins"),
        ({"error_metric": "l1"}, "error_metric"),
        ({"options": ["topk:0.1", "topk:0.1"]}, "distinct"),
        ({"default_option": "zip"}, "cannot parse"),
        ({"power_iterations": 0}, "power_iterations"),
    ],
)
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LGreCo(**kwargs)


def test_once_solves_at_the_first_period_then_holds() -> None:
    """``once=True``: one window and one re-solve at τ = period, then no more (state and config keep it)."""
    policy = LGreCo(period=4, window=2, options=["topk:0.1", "topk:0.5", "fp32"], default_option="topk:0.5",
                    once=True)
    policy.register({"w": (16, 16)})
    gen = torch.Generator().manual_seed(0)
    for step in range(12):
        policy.decide(step)
        policy.observe(step, {"w": torch.randn(16, 16, generator=gen)})
    assert policy.stats.solves == 1 and policy.stats.last_step == 4
    assert not any(policy.wants_gradients(s) or policy.should_solve(s) for s in range(0, 10**6, 997))
    restored = LGreCo(period=4, window=2, options=["topk:0.1", "topk:0.5", "fp32"], default_option="topk:0.5",
                      once=True)
    restored.load_state_dict(policy.state_dict())
    assert not restored.should_solve(10**9) and restored.config()["once"] is True
    repeating = LGreCo(period=4, window=2, options=["topk:0.1", "topk:0.5", "fp32"], default_option="topk:0.5")
    repeating.register({"w": (16, 16)})
    for step in range(12):
        repeating.decide(step)
        repeating.observe(step, {"w": torch.randn(16, 16, generator=gen)})
    assert repeating.stats.solves == 2  # at 4 and 8
    with pytest.raises(ValueError, match="once"):
        LGreCo(once=1)  # type: ignore[arg-type]


def _bucket_policy(cost_model) -> LGreCo:
    policy = LGreCo(period=4, window=2, default_option="topk:0.05", options=["topk:0.05", "fp32"],
                    cost_model=cost_model, world_size=4)
    policy.register({"small": (8, 16), "big": (64, 64)})
    return policy


def _solve_with_buckets(policy: LGreCo, buckets: list[tuple[list[str], int]], at: int = 4) -> dict[str, str]:
    for step in (at - 2, at - 1):
        g = torch.Generator().manual_seed(step)
        policy.observe(step, {"small": torch.randn(8, 16, generator=g), "big": torch.randn(64, 64, generator=g)})
        for names, others in buckets:
            policy.note_bucket(names, others)
    policy.decide(at)
    return {name: str(option) for name, option in policy.choices().items()}


def latency_bound(per_byte: float) -> TimeCost:
    """An all-reduce with 10× an all-gather's latency; ``per_byte`` seconds per byte for both."""
    return TimeCost(latency={"allreduce": 1e-2, "allgather": 1e-3},
                    seconds_per_byte={"allreduce": per_byte, "allgather": per_byte}, native_dense=True)


def test_a_bucket_predicted_faster_all_fp32_goes_fp32_as_a_whole():
    """Per layer, top-k's all-gather (1 ms) beats fp32's all-reduce (10 ms); in one bucket the flag's all-reduce
    is paid anyway, so top-k only adds a collective: the bucket check sends both layers fp32."""
    alone = _solve_with_buckets(_bucket_policy(latency_bound(1e-12)), [])
    assert alone == {"small": "topk:0.05", "big": "topk:0.05"}
    policy = _bucket_policy(latency_bound(1e-12))
    assert _solve_with_buckets(policy, [(["small", "big"], 64)]) == {"small": "fp32", "big": "fp32"}
    assert policy.stats.dense_buckets == 1
    assert policy.last_solution.choice.tolist() == [0, 0]  # the DP's own choice is kept for inspection
    # the next solve saw no bucket notes: the DP's choice stands
    assert _solve_with_buckets(policy, [], at=8) == alone and policy.stats.dense_buckets == 1


def test_the_bucket_check_keeps_compression_where_bytes_dominate_and_needs_a_time_model():
    policy = _bucket_policy(latency_bound(1e-6))  # 1 µs per byte: 16 KiB fp32 costs far more than a latency
    assert _solve_with_buckets(policy, [(["small", "big"], 0)]) == {"small": "topk:0.05", "big": "topk:0.05"}
    assert policy.stats.dense_buckets == 0
    by_bytes = _bucket_policy(ByteCost())
    assert _solve_with_buckets(by_bytes, [(["small", "big"], 0)]) == {"small": "topk:0.05", "big": "topk:0.05"}


@pytest.mark.parametrize("names, others, match", [
    (["small", "nope"], 0, r"layers \['nope'\] are not registered"),
    (["small"], -1, "dense_numel must be an int >= 0"),
    (["small"], 1.5, "dense_numel must be an int >= 0"),
])
def test_note_bucket_rejects_what_it_cannot_use(names, others, match):
    with pytest.raises(ValueError, match=match):
        _bucket_policy(ByteCost()).note_bucket(names, others)
