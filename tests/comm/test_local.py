"""The local (simulator) driver: collective semantics and mismatch detection."""

from __future__ import annotations

import pytest
import torch

from commlib.comm.collectives import AllGather, AllReduce, Broadcast, ordered_sum
from commlib.comm.local import run_lockstep
from commlib.errors import ProtocolMismatchError


def test_ordered_sum_is_left_to_right() -> None:
    # (1e8 + 1) - 1e8 + 1 in float32 loses the first 1 only if summed left to right.
    parts = [torch.tensor([1e8]), torch.tensor([1.0]), torch.tensor([-1e8]), torch.tensor([1.0])]
    assert ordered_sum(parts).item() == 1.0  # ((1e8 + 1) - 1e8) + 1 = 0 + 1 in float32
    assert ordered_sum([parts[0], parts[2], parts[1], parts[3]]).item() == 2.0
    assert ordered_sum([torch.tensor([1.0], dtype=torch.float16)] * 3).dtype == torch.float16


def test_semantics() -> None:
    def proto(rank: int):
        x = torch.tensor([float(rank)])
        total = yield AllReduce(x)
        stacked = yield AllGather(x)
        from_two = yield Broadcast(x, src=2)
        return total, stacked, from_two

    for total, stacked, from_two in run_lockstep([proto(r) for r in range(3)]):
        assert total.item() == 3.0
        assert stacked.reshape(-1).tolist() == [0.0, 1.0, 2.0]
        assert from_two.item() == 2.0


@pytest.mark.parametrize("second", [AllReduce(torch.zeros(3)), AllGather(torch.zeros(2)),
                                    AllReduce(torch.zeros(2, dtype=torch.float16)), AllReduce(torch.zeros(2), False)])
def test_mismatch_is_reported(second) -> None:
    def proto(req):
        yield req

    with pytest.raises(ProtocolMismatchError):
        run_lockstep([proto(AllReduce(torch.zeros(2))), proto(second)])


def test_early_finish_is_reported() -> None:
    def one():
        yield AllReduce(torch.zeros(1))

    def two():
        yield AllReduce(torch.zeros(1))
        yield AllReduce(torch.zeros(1))

    with pytest.raises(ProtocolMismatchError, match="finished"):
        run_lockstep([one(), two()])


def test_bad_request_type() -> None:
    def proto():
        yield "all_reduce"

    with pytest.raises(TypeError, match="AllReduce"):
        run_lockstep([proto()])
