"""With DP on, no gradient value leaves a rank un-noised: the exchange routes every tensor through DPSketch."""

from __future__ import annotations

import pytest
import torch
from protocol_utils import recorded

from commlib.adaptive import LGreCo
from commlib.comm.collectives import AllReduce
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.privacy import DPSketch
from commlib.sim import Simulator

SHAPES = {"fc.bias": (7,), "small.weight": (3, 4), "big.weight": (64, 64)}  # 1-D, small, large
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one intra-op thread per test


def mechanism() -> DPSketch:
    return DPSketch(noise_multiplier=1.0, max_norm=1.0, noise_seed=77, ratio=4, block=256)


def bucket(rank: int) -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(rank)
    return [(name, torch.randn(shape, generator=gen)) for name, shape in SHAPES.items()]


def run_step(buckets: list, step: int) -> tuple[list, list[list]]:
    """One bucket exchange on ``len(buckets)`` ranks with the default config (2 warm-up steps, min_numel 256)."""
    n = len(buckets)
    workers = [GradientExchange(mechanism(), r, n, ExchangeConfig(seed=5)) for r in range(n)]
    logs: list[list] = [[] for _ in range(n)]
    results = run_lockstep([recorded(w.protocol(b, step), log) for w, b, log in zip(workers, buckets, logs)])
    return results, logs


def sent_values(log: list) -> torch.Tensor:
    return torch.cat([req.tensor.reshape(-1) for req in log])


def contains_raw(sent: torch.Tensor, named: list[tuple[str, torch.Tensor]]) -> bool:
    """Whether the first 5 values of any tensor appear, in a row, in ``sent`` (as a dense send would put them)."""
    for _, t in named:
        head = t.reshape(-1)[:5]
        if sent.numel() >= head.numel() and bool((sent.unfold(0, head.numel(), 1) == head).all(1).any()):
            return True
    return False


@pytest.mark.parametrize("step", [0, 1, 5])  # in the warm-up and after it
def test_every_tensor_goes_through_the_mechanism(step):
    """Each rank sends one flag plus the sketch of every tensor, and none of its raw gradient values."""
    buckets = [bucket(r) for r in range(2)]
    results, logs = run_step(buckets, step)
    sizes = sum(mechanism().sketch.sketch_size(torch.Size(s).numel()) for s in SHAPES.values())
    for rank, log in enumerate(logs):
        assert all(isinstance(req, AllReduce) for req in log)
        sent = sent_values(log)
        assert sent.numel() == 1 + sizes  # a dense tensor would add its numel here
        assert not contains_raw(sent, buckets[rank])
    means, report = results[0]
    assert report.dense_numel == 0 and report.compressed_numel == sum(t.numel() for _, t in buckets[0])
    assert all(bool(torch.isfinite(m).all()) for m in means)


def test_non_finite_input_is_not_resent_dense():
    """A NaN on rank 1: no second round, NaN for the whole bucket on every rank, no raw value of rank 0 sent."""
    buckets = [bucket(r) for r in range(2)]
    buckets[1][2][1][5, 5] = float("nan")
    results, logs = run_step(buckets, step=3)
    sizes = sum(mechanism().sketch.sketch_size(torch.Size(s).numel()) for s in SHAPES.values())
    for log in logs:
        assert sent_values(log).numel() == 1 + sizes
    assert not contains_raw(sent_values(logs[0]), buckets[0])
    for means, report in results:
        assert report.non_finite
        assert [m.shape for m in means] == [torch.Size(s) for s in SHAPES.values()]
        assert all(bool(m.isnan().all()) for m in means)


def test_simulator_with_default_config_sends_only_sketches():
    mech = mechanism()
    sim = Simulator(mech, 3)  # default start_step, min_numel and min_compression_rate
    sim.exchange([bucket(r) for r in range(3)])
    sizes = sum(mech.sketch.sketch_size(torch.Size(s).numel()) for s in SHAPES.values())
    assert sim.stats.as_dict()["last"]["sent_bytes"] == 4 * (1 + sizes)


def test_private_compressor_refuses_a_policy():
    policy = LGreCo(period=4, window=2, options=["topk:0.1", "topk:0.2"], default_option="topk:0.1")
    with pytest.raises(ValueError, match="private"):
        GradientExchange(mechanism(), 0, 2, policy=policy)
