"""Fusing protocols' rounds: few collectives, same results as running each protocol alone."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from commlib.comm.collectives import AllGather, AllReduce, AllToAll, Broadcast
from commlib.comm.local import run_lockstep
from commlib.comm.merge import fuse_round, merge


def _proto(rank: int, sizes: list[int], dtype: torch.dtype):
    """Gathers a byte-ish payload, then all-reduces, then broadcasts: three rounds."""
    g = torch.Generator().manual_seed(rank)
    out = []
    for n in sizes:
        x = torch.randn(n, generator=g).to(dtype)
        gathered = yield AllGather(x)
        total = yield (AllReduce(x * 2), Broadcast(x + 1, src=1))
        out.append((gathered, total))
    return out


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=4),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
def test_merged_equals_separate(sizes: list[int], dtype: torch.dtype) -> None:
    n = 3
    separate = [run_lockstep([_proto(r, [s], dtype) for r in range(n)]) for s in sizes]
    merged = run_lockstep([merge([_proto(r, [s], dtype) for s in sizes]) for r in range(n)])
    for rank in range(n):
        for j in range(len(sizes)):
            (g1, (t1, b1)), = separate[j][rank]
            (g2, (t2, b2)), = merged[rank][j]
            assert torch.equal(g1, g2) and torch.equal(t1, t2) and torch.equal(b1, b2)


def test_one_collective_per_kind_per_round() -> None:
    requests = [AllGather(torch.zeros(3)), AllGather(torch.zeros(5, dtype=torch.int32)), AllReduce(torch.zeros(2)),
                AllReduce(torch.zeros(2), ordered=False), AllReduce(torch.zeros(4)), AllGather(torch.zeros(1))]
    fused, slots = fuse_round(requests)
    kinds = sorted((type(f).__name__, getattr(f, "ordered", None)) for f in fused)
    assert kinds == [("AllGather", None), ("AllReduce", False), ("AllReduce", True)]
    gather = next(f for f in fused if isinstance(f, AllGather))
    assert gather.tensor.dtype == torch.uint8 and gather.tensor.numel() % 8 == 0
    assert len(slots) == len(requests)


def test_protocols_of_different_lengths() -> None:
    def short():
        return (yield AllReduce(torch.ones(2)))

    def long():
        a = yield AllReduce(torch.ones(1))
        b = yield AllGather(a)
        return b

    res = run_lockstep([merge([short(), long()]) for _ in range(2)])
    assert torch.equal(res[0][0], torch.full((2,), 2.0))
    assert torch.equal(res[1][1], torch.full((2, 1), 2.0))


def test_all_to_all_passes_through_unfused() -> None:
    """Two all-to-alls in one round stay two collectives; each rank gets row r of every peer's own tensor."""
    n = 3

    def proto(rank: int, offset: float):
        a = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2) + 10 * rank + offset
        b = a * -1
        got_a, total, got_b = yield (AllToAll(a), AllReduce(torch.ones(2)), AllToAll(b))
        return got_a, got_b, total

    fused, _ = fuse_round([AllToAll(torch.zeros(n, 2)), AllToAll(torch.zeros(n, 2)), AllReduce(torch.zeros(1))])
    assert sorted(type(f).__name__ for f in fused) == ["AllReduce", "AllToAll", "AllToAll"]
    merged = run_lockstep([merge([proto(r, 0.0), proto(r, 0.5)]) for r in range(n)])
    for rank in range(n):
        for j, offset in enumerate((0.0, 0.5)):
            got_a, got_b, total = merged[rank][j]
            expected = torch.stack([torch.arange(2 * rank, 2 * rank + 2, dtype=torch.float32) + 10 * peer + offset
                                    for peer in range(n)])
            assert torch.equal(got_a, expected) and torch.equal(got_b, -expected)
            assert torch.equal(total, torch.full((2,), float(n)))
