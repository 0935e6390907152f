"""Cost models: bytes and time per collective, calibration, codec times."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from dist_utils import run_workers

from commlib.adaptive.cost import (
    ByteCost,
    ElementCost,
    TimeCost,
    Timing,
    calibrate,
    cost_table,
    fit_linear,
    measure_codec_times,
    traffic_factor,
    wire_collective,
)
from commlib.adaptive.options import Option

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
    topk, fp16, psgd = Option.topk(0.01), Option("fp16"), Option.powersgd(4)
    assert wire_collective(topk) == "allgather" and wire_collective(fp16) == "allreduce"
    assert wire_collective(psgd) == "allgather"  # ordered all-reduce = all-gather + local sum in commlib
    model = ByteCost()
    for n in WORLDS:
        assert model.cost(topk, shape, n) == (n - 1) * topk.wire_bytes(shape)
        assert model.cost(fp16, shape, n) == pytest.approx(2 * (n - 1) / n * fp16.wire_bytes(shape))
        assert model.cost(fp16, shape, n) <= 2 * fp16.wire_bytes(shape)


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
    assert model.cost(fp32, shape, 4) == pytest.approx(1e-4 + 1.5 * 4 * numel * 1e-9)
    assert model.cost(psgd, shape, 4) == pytest.approx(2 * 2e-4 + 3 * psgd.wire_bytes(shape) * 2e-9)
    gather_times = [model.cost(topk, shape, n) for n in WORLDS]
    reduce_times = [model.cost(fp32, shape, n) for n in WORLDS]
    assert gather_times == sorted(gather_times) and gather_times[-1] > 10 * gather_times[0]
    assert max(reduce_times) <= 2 * min(reduce_times)


def test_time_cost_validates():
    with pytest.raises(ValueError, match="keys"):
        TimeCost(latency={"allreduce": 0.0})
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


def test_update_moves_the_model_towards_new_timings():
    model = TimeCost()
    truth = {"latency": 1e-3, "beta": 5e-9}
    samples = [Timing("allgather", p, 4, truth["latency"] + 3 * p * truth["beta"]) for p in (1 << 10, 1 << 20)]
    before = model.seconds_per_byte["allgather"]
    model.update(samples, momentum=0.5)
    assert model.seconds_per_byte["allgather"] == pytest.approx(before + 0.5 * (truth["beta"] - before))
    model.update(samples, momentum=1.0)
    assert model.latency["allgather"] == pytest.approx(truth["latency"])
    assert model.seconds_per_byte["allgather"] == pytest.approx(truth["beta"])
    assert model.latency["allreduce"] == TimeCost().latency["allreduce"]  # untouched without samples
    one_size = [Timing("allreduce", 1 << 20, 2, model.latency["allreduce"] + (1 << 20) * 2e-9)]
    model.update(one_size, momentum=1.0)
    assert model.seconds_per_byte["allreduce"] == pytest.approx(2e-9)
    with pytest.raises(ValueError, match="momentum"):
        model.update(samples, momentum=0.0)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    restored = TimeCost()
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored == model


def test_cost_table_marks_inapplicable_options():
    table = cost_table([(10,), (4, 4)], [Option.powersgd(1), Option("fp32")], ByteCost(), 4)
    assert np.isinf(table[0, 0]) and np.isfinite(table[1]).all() and table.shape == (2, 2)


def _calibrate_worker(rank: int, world: int) -> dict:
    model = calibrate(sizes=(1 << 10, 1 << 16, 1 << 22), repeats=3)
    return model.state_dict()


def test_calibrate_fits_one_model_on_every_rank():
    results = run_workers(_calibrate_worker, 2, timeout=120)
    assert results[0] == results[1]
    for kind in ("allreduce", "allgather"):
        assert results[0]["latency"][kind] >= 0 and results[0]["seconds_per_byte"][kind] > 0


def test_calibrate_needs_a_process_group():
    with pytest.raises(ValueError, match="process group"):
        calibrate()


def test_measure_codec_times():
    options = [Option.topk(0.1), Option.qsgd(4, 128), Option.powersgd(2), Option("fp16")]
    table = measure_codec_times(options, shape=(64, 64), repeats=1)
    assert set(table) == {str(o) for o in options}
    assert all(enc > 0 and dec >= 0 for enc, dec in table.values())
    assert table["topk:0.1"][1] > 0 and table["powersgd:2"][1] == 0.0
    with pytest.raises(ValueError, match="does not apply"):
        measure_codec_times([Option.powersgd(2)], shape=(64,))
