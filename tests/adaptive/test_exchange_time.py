"""The fused-bucket time model: one latency per fused collective, payload bytes as the exchange sends them."""

from __future__ import annotations

import copy

import pytest
import torch

from commlib.adaptive import LGreCo, Option
from commlib.adaptive.cost import TimeCost, exchange_seconds, traffic_factor
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
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
    assert predicted == pytest.approx(traffic_factor("allgather", world) * report.sent)



def test_validates_world_size() -> None:
    with pytest.raises(ValueError, match="world_size"):
        exchange_seconds(TimeCost(), [], 0)
