"""The fused-bucket time model: one latency per fused collective, payload bytes as the exchange sends them."""

from __future__ import annotations

import copy

import pytest
import torch

from commlib.adaptive import LGreCo, Option
from commlib.adaptive.cost import TimeCost, exchange_seconds, traffic_factor
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.comm.torch_driver import SPLIT_MIN_BYTES
from commlib.compress import Identity

SHAPES = {"a": (48, 32), "b": (64, 64), "c": (32, 40), "d": (40, 40)}
OPTIONS = ["topk:0.1", "qsgd:4x128", "powersgd:3", "fp16", "fp32"]
PARSED = [Option.parse(o) for o in OPTIONS]


def _latency_only(gather: float, reduce: float) -> TimeCost:
    return TimeCost(latency={"allgather": gather, "allreduce": reduce},
                    seconds_per_byte={"allgather": 0.0, "allreduce": 0.0})


@pytest.mark.parametrize(
    ("choice", "gathers", "reduces"),
    [
        (["fp32", "fp32", "fp32", "fp32"], 1, 0),  # one ordered dense reduce (with the flag)
        (["topk:0.1", "qsgd:4x128", "topk:0.1", "fp32"], 2, 0),  # + one fused gather, however many layers
        (["topk:0.1", "powersgd:3", "powersgd:3", "fp32"], 3, 0),  # + PowerSGD's second round
        (["fp16", "powersgd:3", "qsgd:4x128", "fp16"], 3, 1),  # + one native all-reduce for the fp16 casts
    ],
)
def test_one_latency_per_fused_collective(choice: list[str], gathers: int, reduces: int) -> None:
    layers = [(SHAPES[n], Option.parse(o)) for n, o in zip(SHAPES, choice)]
    assert exchange_seconds(_latency_only(1.0, 1000.0), layers, 4) == pytest.approx(gathers + 1000.0 * reduces)


@pytest.mark.parametrize(
    ("choice", "gathers", "reduces"),
    [
        (["fp32", "fp32", "fp32", "fp32"], 0, 1),  # one native all-reduce of the dense tensors and the flag
        (["topk:0.1", "powersgd:3", "powersgd:3", "fp32"], 3, 1),  # P and Q ordered, top-k gathered, dense native
    ],
)
def test_native_dense_prices_the_dense_part_as_one_native_all_reduce(choice, gathers, reduces) -> None:
    layers = [(SHAPES[n], Option.parse(o)) for n, o in zip(SHAPES, choice)]
    model = _latency_only(1.0, 1000.0)
    model.native_dense = True
    assert exchange_seconds(model, layers, 4) == pytest.approx(gathers + 1000.0 * reduces)
    ring = TimeCost(latency={"allgather": 0.0, "allreduce": 0.0}, seconds_per_byte={"allgather": 1.0, "allreduce": 5.0},
                    native_dense=True)
    fp32 = Option("fp32")
    assert ring.cost(fp32, (10, 10), 4) == pytest.approx(5.0 * traffic_factor("allreduce", 4) * 400)
    ring.native_dense = False  # ordered: 400 B below the split, one all-gather of (n-1)·400 B
    assert ring.cost(fp32, (10, 10), 4) == pytest.approx(1.0 * traffic_factor("allgather", 4) * 400)
    restored = TimeCost()
    restored.load_state_dict({**TimeCost(native_dense=True).state_dict()})
    assert restored.native_dense
    old = TimeCost(native_dense=True).state_dict()
    del old["native_dense"]  # a state saved before the field existed
    restored.load_state_dict(old)
    assert not restored.native_dense


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("choice", [[0, 1, 2, 4], [2, 2, 0, 1], [4, 4, 4, 4]])
def test_bytes_are_what_the_exchange_sends(world: int, choice: list[int]) -> None:
    """With β = 1 s/B and no latency the model is traffic × the bytes the real exchange reports sending."""
    policy = LGreCo(period=100, window=2, options=OPTIONS, default_option="topk:0.1")
    workers = [GradientExchange(Identity(), r, world, ExchangeConfig(start_step=0), policy=copy.deepcopy(policy))
               for r in range(world)]
    bias = torch.Size([40])
    for w in workers:
        w.register({n: torch.Size(s) for n, s in SHAPES.items()})
        w.policy.load_decision(torch.tensor(choice))
    gen = torch.Generator().manual_seed(0)
    grads = [[(n, torch.randn(s, generator=gen)) for n, s in SHAPES.items()] + [("bias", torch.randn(bias))]
             for _ in range(world)]
    (_, report), *_ = run_lockstep([w.protocol(g, step=0) for w, g in zip(workers, grads)])
    model = TimeCost(latency={"allgather": 0.0, "allreduce": 0.0},
                     seconds_per_byte={"allgather": 1.0, "allreduce": 1.0})
    layers = [(SHAPES[n], PARSED[i]) for n, i in zip(SHAPES, choice)]
    predicted = exchange_seconds(model, layers, world, dense_numel=bias.numel())
    pads = sum(-o.wire_bytes(s) % 8 for s, o in layers if o.collective == "allgather")  # fuse_round's alignment
    assert predicted == pytest.approx(traffic_factor("allgather", world) * (report.sent + pads))


BIG = {"a": (256, 256), "b": (256, 128)}  # 256 KiB and 128 KiB of fp32


@pytest.mark.parametrize(
    ("choice", "messages"),
    [
        (["fp32", "fp32"], 2),  # 384 KiB ordered dense reduce: all-to-all + all-gather
        (["topk:0.01", "topk:0.01"], 2),  # the dense reduce holds only the flag: 1, + the fused gather: 1
        (["powersgd:64", "fp32"], 4),  # round 1 (P, 64 KiB, + the fp32 layer) splits: 2; round 2 (Q, 64 KiB): 2
        (["powersgd:8", "topk:0.01"], 3),  # round 1 (P, 8 KiB) gathers: 1, + the gather: 1; Q (8 KiB): 1
    ],
)
def test_large_ordered_reduces_split_into_two_collectives(choice: list[str], messages: int) -> None:
    layers = [(BIG[n], Option.parse(o)) for n, o in zip(BIG, choice)]
    assert exchange_seconds(_latency_only(1.0, 1000.0), layers, 4) == pytest.approx(messages)


@pytest.mark.parametrize("world", [2, 4, 8])
def test_large_ordered_reduces_send_a_rings_share(world: int) -> None:
    """Above SPLIT_MIN_BYTES the dense bytes cost 2(n−1)/n of the payload, below (n−1)."""
    bandwidth = TimeCost(latency={"allgather": 0.0, "allreduce": 0.0},
                         seconds_per_byte={"allgather": 1.0, "allreduce": 1.0})
    big = [((256, 256), Option("fp32"))]
    payload = 4 * (256 * 256 + 1)
    assert payload >= SPLIT_MIN_BYTES
    assert exchange_seconds(bandwidth, big, world) == pytest.approx(2 * (world - 1) / world * payload)
    small = [((32, 32), Option("fp32"))]
    assert exchange_seconds(bandwidth, small, world) == pytest.approx((world - 1) * 4 * (32 * 32 + 1))


def test_validates_world_size() -> None:
    with pytest.raises(ValueError, match="world_size"):
        exchange_seconds(TimeCost(), [], 0)
