"""The torch.distributed driver on real gloo process groups."""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_workers
from torch_driver_workers import errors_then_continues, many_chained, semantics

pytestmark = pytest.mark.timeout(300)


def test_collective_semantics_match_local_driver() -> None:
    from torch_driver_workers import semantics_protocol

    from commlib.comm.local import run_lockstep

    world = 3
    expected = run_lockstep([semantics_protocol(r) for r in range(world)])
    got = run_workers(semantics, world)
    for rank in range(world):
        total, native, stacked, from_one = got[rank]
        e_total, _, e_stacked, e_from_one = expected[rank]
        assert torch.equal(total, e_total)  # ordered reductions: the same bits as the simulator
        torch.testing.assert_close(native, e_total)
        assert stacked.dtype == torch.bfloat16 and torch.equal(stacked, e_stacked)
        assert torch.equal(from_one, e_from_one)


def test_errors_reach_the_future_and_the_chain_goes_on() -> None:
    for message in run_workers(errors_then_continues, 2):
        assert "decoder rejected a payload" in message


def test_many_chained_multi_round_exchanges() -> None:
    results = run_workers(many_chained, 3)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
