"""Bytes received: what the driver that runs the exchange moves, decided on the fused payload."""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_workers
from traffic_workers import SCENARIOS, _grads, ddp_powersgd, scenarios

from commlib.comm.collectives import AllGather, AllReduce, AllToAll, Broadcast
from commlib.comm.exchange import GradientExchange
from commlib.comm.local import run_lockstep
from commlib.comm.torch_driver import SPLIT_MIN_BYTES
from commlib.comm.traffic import Meter, received_bytes, wire_kind
from commlib.compress import PowerSGD

pytestmark = pytest.mark.timeout(300)

LARGE = SPLIT_MIN_BYTES // 4 + 5  # fp32 elements: just above the split threshold, not a multiple of 2 or 3
SMALL = SPLIT_MIN_BYTES // 4 - 1


@pytest.mark.parametrize("world", [2, 3, 4])
def test_each_collective_receives_what_its_driver_moves(world: int) -> None:
    large, small = torch.zeros(LARGE), torch.zeros(SMALL)
    chunk = -(-LARGE // world)
    assert received_bytes(AllReduce(large), 0, world) == 2 * (world - 1) * chunk * 4  # all-to-all + all-gather
    assert received_bytes(AllReduce(small), 0, world) == (world - 1) * 4 * SMALL  # one all-gather
    assert received_bytes(AllReduce(large), 0, world, driver="mpi") == (world - 1) * 4 * LARGE  # MPI: Allgather
    assert received_bytes(AllReduce(large, ordered=False), 0, world) == 2 * (world - 1) * 4 * LARGE // world
    assert received_bytes(AllGather(large), 1, world) == (world - 1) * 4 * LARGE
    assert received_bytes(AllToAll(torch.zeros(world, 10)), 0, world) == (world - 1) * 40
    assert received_bytes(Broadcast(small, src=1), 1, world) == 0
    assert received_bytes(Broadcast(small, src=1), 0, world) == 4 * SMALL
    assert wire_kind(AllReduce(large), world) == "ordered" and wire_kind(AllReduce(small), world) == "allgather"
    assert wire_kind(AllReduce(large), world, driver="mpi") == "allgather"
    assert wire_kind(Broadcast(small), world) is None


def test_the_split_is_decided_on_the_fused_payload() -> None:
    """Six PowerSGD P factors of 16 KiB, each below the threshold, fuse to 96 KiB: a ring's traffic, not a gather's."""
    world, names = 3, [f"w{i}" for i in range(6)]
    workers = [GradientExchange(PowerSGD(rank=4), r, world) for r in range(world)]
    grads = [[(n, torch.randn(1024, 64, generator=torch.Generator().manual_seed(r))) for n in names]
             for r in range(world)]
    (_, report), *_ = run_lockstep([w.protocol(g, step=2) for w, g in zip(workers, grads)])
    p_round = 4 * (1 + 6 * 1024 * 4)  # the flag and every P, one fused ordered all-reduce
    q_round = 4 * 6 * 64 * 4
    assert p_round >= SPLIT_MIN_BYTES > 4 * 1024 * 4
    assert report.sent == p_round + q_round
    assert report.received == 2 * (world - 1) * -(-p_round // 4 // world) * 4 + (world - 1) * q_round
    assert report.received < (world - 1) * report.sent  # the old rule: every ordered all-reduce an all-gather


def test_meter_passes_results_through_and_closes_the_wrapped_protocol() -> None:
    closed = []

    def two_rounds():
        try:
            first = yield AllReduce(torch.ones(3))
            second = yield AllGather(first)
            return second.sum()
        finally:
            closed.append(True)

    meter = Meter(0, 2)
    assert run_lockstep([meter.run(two_rounds())]) == [torch.tensor(3.0)]
    assert meter.received == 12 + 12 and len(meter.rounds) == 2 and meter.seconds == []
    abandoned = Meter(0, 2).run(two_rounds())
    next(abandoned)
    abandoned.close()
    assert closed == [True, True]
    with pytest.raises(ValueError, match="driver"):
        Meter(0, 2, driver="nccl")
    with pytest.raises(ValueError, match="driver"):
        GradientExchange(PowerSGD(rank=2), 0, 2, driver="gloo")


@pytest.mark.parametrize("world", [2, 3])
def test_stats_received_equal_the_bytes_the_gloo_driver_moves(world: int) -> None:
    results = run_workers(scenarios, world)
    for rank, result in enumerate(results):
        for name, got in result.items():
            assert got["stats"] == got["driver"] > 0, (rank, name, got)
        assert result["warmup-small"]["all_to_alls"] == 0  # both paths of the driver ran
        for name in ("warmup-large", "powersgd-fused", "topk-dense"):
            assert result[name]["all_to_alls"] > 0, name
    # The simulator (in-process lockstep) reports the same bytes: it stands in for the torch driver.
    for name, (make, shapes, steps) in SCENARIOS.items():
        workers, simulated = [make(r, world) for r in range(world)], [0] * world
        for step in steps:
            outs = run_lockstep([w.protocol(_grads(shapes, r, step), step, last=True) for r, w in enumerate(workers)])
            simulated = [total + report.received for total, (_, report) in zip(simulated, outs)]
        assert simulated == [result[name]["stats"] for result in results], name


def test_ddp_stats_received_equal_the_bytes_the_gloo_driver_moves() -> None:
    for got in run_workers(ddp_powersgd, 3):
        assert got["stats"] == got["driver"] > 0 and got["all_to_alls"] > 0, got
        assert got["buckets"] > 4, got  # more than one bucket a step
