"""The torch.distributed driver on real gloo process groups."""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_workers
from torch_driver_workers import errors_then_continues, large_ordered, many_chained, semantics

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


def test_large_ordered_all_reduces_split_with_the_same_bits() -> None:
    """Payloads of ≥ SPLIT_MIN_BYTES go all-to-all + ordered chunk sums + all-gather: bits equal the simulator's."""
    from torch_driver_workers import large_protocol

    from commlib.comm.local import run_lockstep

    world = 3
    expected = run_lockstep([large_protocol(r) for r in range(world)])
    for rank, (got, all_to_alls) in enumerate(run_workers(large_ordered, world)):
        assert all_to_alls == 4  # the four large reductions; the small one stays one all-gather
        assert len(got) == len(expected[rank])
        for a, b in zip(got, expected[rank]):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def test_errors_reach_the_future_and_the_chain_goes_on() -> None:
    for message in run_workers(errors_then_continues, 2):
        assert "decoder rejected a payload" in message


def test_many_chained_multi_round_exchanges() -> None:
    results = run_workers(many_chained, 3)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
