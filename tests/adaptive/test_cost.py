"""Cost models: elements, bytes and time per collective; the time model's fits (measurements: test_measure.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from commlib.adaptive.cost import (
    ByteCost,
    ElementCost,
    RoundTiming,
    TimeCost,
    cost_table,
    fit_linear,
    option_collectives,
    ordered_traffic,
    traffic_factor,
    wire_collective,
)
from commlib.adaptive.options import Option
from commlib.comm.torch_driver import SPLIT_MIN_BYTES

WORLDS = [2, 4, 8, 16, 64]


def test_allgather_traffic_grows_with_world_size_and_allreduce_does_not():
    gather = [traffic_factor("allgather", n) for n in WORLDS]
    reduce = [traffic_factor("allreduce", n) for n in WORLDS]
    assert gather == [n - 1 for n in WORLDS]
    assert all(1.0 <= r < 2.0 for r in reduce) and reduce == sorted(reduce)
    assert traffic_factor("allgather", 1) == traffic_factor("allreduce", 1) == 0.0
    with pytest.raises(ValueError, match="collective"):
        traffic_factor("broadcast", 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="world_size"):
        traffic_factor("allreduce", 0)


def test_byte_cost_follows_the_wire_collective():
    shape = (256, 256)
    topk, fp16, psgd, fp32 = Option.topk(0.01), Option("fp16"), Option.powersgd(4), Option("fp32")
    assert wire_collective(topk) == "allgather" and wire_collective(fp16) == "allreduce"
    assert wire_collective(psgd) == wire_collective(fp32) == "allgather"  # ordered: priced at the gather's fit
    model = ByteCost()
    for n in WORLDS:
        assert model.cost(topk, shape, n) == (n - 1) * topk.wire_bytes(shape)
        assert model.cost(fp16, shape, n) == pytest.approx(2 * (n - 1) / n * fp16.wire_bytes(shape))
        assert model.cost(fp16, shape, n) <= 2 * fp16.wire_bytes(shape)
        # fp32 is 256 KiB, above the split: the driver's all-to-all + all-gather send a ring's share
        assert model.cost(fp32, shape, n) == pytest.approx(2 * (n - 1) / n * 4 * 256 * 256)
        assert model.cost(fp32, (64, 64), n) == (n - 1) * 4 * 64 * 64  # 16 KiB: one all-gather
        assert model.cost(psgd, shape, n) == (n - 1) * psgd.wire_bytes(shape)  # P and Q are 4 KiB each


def test_ordered_all_reduce_splits_at_the_drivers_threshold():
    for n in (2, 4, 8):
        assert ordered_traffic(SPLIT_MIN_BYTES - 4, n) == (1, n - 1)
        assert ordered_traffic(SPLIT_MIN_BYTES, n) == (2, pytest.approx(2 * (n - 1) / n))
    assert ordered_traffic(1 << 20, 1) == (1, 0.0)  # a world of one gathers (and sends) nothing
    # PowerSGD rank 16 on a 2048 x 2048 matrix: P and Q are 128 KiB each, so both split
    big = option_collectives(Option.powersgd(16), (2048, 2048), 4)
    assert big == [("ordered", pytest.approx(1.5 * 4 * 2048 * 16))] * 2  # all-to-all + all-gather: 2(n−1)/n
    assert option_collectives(Option.powersgd(4), (2048, 2048), 4) == [("allgather", 3 * 4 * 2048 * 4)] * 2
    with pytest.raises(ValueError, match="world_size"):
        ordered_traffic(100, 0)


def test_element_cost_is_the_papers_size():
    assert ElementCost().cost(Option.powersgd(3), (40, 5, 2), 8) == 3 * (40 + 10)
    assert ElementCost().cost(Option.topk(0.1), (1000,), 8) == 2 * 100  # a value and an index per entry
    assert ElementCost().cost(Option.qsgd(2, 128), (1000,), 8) == np.ceil((250 + 4 * 8) / 4)


def test_time_cost_prediction():
    model = TimeCost(
        latency={"allreduce": 1e-4, "allgather": 2e-4},
        seconds_per_byte={"allreduce": 1e-9, "allgather": 2e-9},
        codec={"topk:0.01": (3e-9, 1e-9)},
    )
    shape = (512, 512)
    topk, fp32, psgd = Option.topk(0.01), Option("fp32"), Option.powersgd(4)
    numel = 512 * 512
    assert model.cost(topk, shape, 4) == pytest.approx(2e-4 + 3 * topk.wire_bytes(shape) * 2e-9 + numel * (3e-9 + 4e-9))
    # a policy's fp32 layer rides the ordered dense all-reduce: 1 MiB splits (two collectives, ring traffic)
    assert model.cost(fp32, shape, 4) == pytest.approx(2 * 2e-4 + 1.5 * 4 * numel * 2e-9)
    assert model.cost(psgd, shape, 4) == pytest.approx(2 * 2e-4 + 3 * psgd.wire_bytes(shape) * 2e-9)
    fp16 = Option("fp16")
    assert model.cost(fp16, shape, 4) == pytest.approx(1e-4 + 1.5 * 2 * numel * 1e-9)  # the native ring
    gather_times = [model.cost(topk, shape, n) for n in WORLDS]
    reduce_times = [model.cost(fp32, shape, n) for n in WORLDS]
    assert gather_times == sorted(gather_times) and gather_times[-1] > 10 * gather_times[0]
    assert max(reduce_times) <= 2 * min(reduce_times)


def test_split_ordered_reduce_is_priced_with_its_own_fit_or_its_two_collectives():
    """A split ordered all-reduce: its own fit; else an all-to-all (else priced as an all-gather) + an all-gather."""
    two = {"allreduce": 0.0, "allgather": 1e-3}
    base = TimeCost(latency=dict(two), seconds_per_byte={"allreduce": 0.0, "allgather": 1e-9})
    shape, fp32 = (256, 256), Option("fp32")
    half = 0.75 * 4 * 256 * 256
    assert base.cost(fp32, shape, 4) == pytest.approx(2 * (1e-3 + half * 1e-9))
    slow = TimeCost(latency={**two, "alltoall": 5e-3}, seconds_per_byte={"allreduce": 0.0, "allgather": 1e-9,
                                                                         "alltoall": 4e-9})
    assert slow.cost(fp32, shape, 4) == pytest.approx(1e-3 + half * 1e-9 + 5e-3 + half * 4e-9)
    assert slow.cost(Option.topk(0.01), shape, 4) == base.cost(Option.topk(0.01), shape, 4)  # gathers unaffected
    assert traffic_factor("alltoall", 4) == 0.75 and traffic_factor("ordered", 4) == 1.5
    fitted = TimeCost(latency={**two, "alltoall": 5e-3, "ordered": 0.1},
                      seconds_per_byte={"allreduce": 0.0, "allgather": 1e-9, "alltoall": 4e-9, "ordered": 1e-8})
    assert fitted.cost(fp32, shape, 4) == pytest.approx(0.1 + 2 * half * 1e-8)
    assert fitted.cost(fp32, (32, 32), 4) == base.cost(fp32, (32, 32), 4)  # below the split: an all-gather


def test_time_cost_validates():
    with pytest.raises(ValueError, match="keys"):
        TimeCost(latency={"allreduce": 0.0})
    with pytest.raises(ValueError, match="keys"):
        TimeCost(latency={"allreduce": 0.0, "allgather": 0.0, "broadcast": 0.0})
    with pytest.raises(ValueError, match="finite"):
        TimeCost(seconds_per_byte={"allreduce": -1.0, "allgather": 1.0})
    with pytest.raises(ValueError, match="codec"):
        TimeCost(codec={"fp16": (1.0,)})


def test_fit_recovers_alpha_beta_on_synthetic_timings():
    rng = np.random.default_rng(0)
    sizes = np.logspace(3, 8, 12)
    alpha, beta = 3e-5, 4e-10
    times = (alpha + beta * sizes) * (1 + 0.01 * rng.standard_normal(sizes.size))
    got_alpha, got_beta = fit_linear(sizes, times)
    assert got_beta == pytest.approx(beta, rel=0.02)
    assert got_alpha == pytest.approx(alpha, rel=0.2)
    # noise that drives the free intercept negative: clamp to 0 and refit through the origin
    a0, b0 = fit_linear([1.0, 2.0, 3.0], [0.9, 2.0, 3.2])
    ratio = np.array([1.0, 2.0, 3.0]) / np.array([0.9, 2.0, 3.2])
    assert a0 == 0.0 and b0 == pytest.approx(ratio.sum() / (ratio**2).sum())  # argmin Σ(1 − β·x/y)²
    bad_inputs = (([1.0, 1.0], [1.0, 2.0]), ([1.0, 2.0], [2.0, 1.0]), ([1.0, np.nan], [1.0, 2.0]), ([1, 2], [0, 1]))
    for bad in bad_inputs:
        with pytest.raises(ValueError, match="fit_linear"):
            fit_linear(*bad)


def _alone(kind: str, payload: int, world: int, seconds: float) -> RoundTiming:
    """A round of one collective."""
    return RoundTiming(((kind, payload),), world, seconds)


def test_refit_moves_the_model_towards_new_timings():
    model = TimeCost()
    truth = {"latency": 1e-3, "beta": 5e-9}
    samples = [_alone("allgather", p, 4, truth["latency"] + 3 * p * truth["beta"]) for p in (1 << 10, 1 << 20)]
    before = model.seconds_per_byte["allgather"]
    model.refit(samples, momentum=0.5)
    assert model.seconds_per_byte["allgather"] == pytest.approx(before + 0.5 * (truth["beta"] - before))
    model.refit(samples, momentum=1.0)
    assert model.latency["allgather"] == pytest.approx(truth["latency"])
    assert model.seconds_per_byte["allgather"] == pytest.approx(truth["beta"])
    assert model.latency["allreduce"] == TimeCost().latency["allreduce"]  # untouched without samples
    one_size = [_alone("allreduce", 1 << 20, 2, 3 * model.seconds("allreduce", 1 << 20))]
    model.refit(one_size, momentum=1.0)
    assert model.seconds("allreduce", 1 << 20) == pytest.approx(one_size[0].seconds)  # one size: the sum fits
    with pytest.raises(ValueError, match="momentum"):
        model.refit(samples, momentum=0.0)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    restored = TimeCost()
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored == model


def test_cost_table_marks_inapplicable_options():
    table = cost_table([(10,), (4, 4)], [Option.powersgd(1), Option("fp32")], ByteCost(), 4)
    assert np.isinf(table[0, 0]) and np.isfinite(table[1]).all() and table.shape == (2, 2)


def test_refit_fits_the_all_to_all_from_the_all_gathers_start():
    model = TimeCost()
    samples = [_alone("alltoall", p, 4, 1e-3 + 0.75 * p * 4e-9) for p in (1 << 16, 1 << 20)]
    model.refit(samples, momentum=1.0)
    assert model.fit("alltoall") == (pytest.approx(1e-3), pytest.approx(4e-9))
    assert model.fit("allgather") == (TimeCost().latency["allgather"], TimeCost().seconds_per_byte["allgather"])
