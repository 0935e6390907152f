"""Worker functions for the torch.distributed driver tests (run in spawned gloo processes)."""

from __future__ import annotations

import torch

from commlib.comm import torch_driver
from commlib.comm.collectives import AllGather, AllReduce, Broadcast
from commlib.compress import TopK
from commlib.compress.base import TensorContext


def semantics_protocol(rank: int):
    x = torch.arange(4, dtype=torch.float32) + rank
    total = yield AllReduce(x)
    native = yield AllReduce(x.clone(), ordered=False)
    stacked, from_one = yield (AllGather(x.to(torch.bfloat16)), Broadcast(x, src=1))
    return total, native, stacked, from_one


def semantics(rank: int, world: int) -> tuple:
    return torch_driver.run(semantics_protocol(rank))


def failing_protocol():
    yield AllReduce(torch.ones(1))
    raise ValueError("decoder rejected a payload")


def errors_then_continues(rank: int, world: int) -> str:
    """A protocol that raises after its first round errors its future; the issuer goes on with the next one."""
    issuer = torch_driver.OrderedIssuer()
    bad = issuer.submit(failing_protocol)
    good = issuer.submit(lambda: semantics_protocol(rank))
    try:
        bad.wait()
        message = "no error"
    except Exception as exc:  # noqa: BLE001 - returned to the test
        message = str(exc)
    good.wait()
    return message


def many_chained(rank: int, world: int) -> list:
    """Submit 30 two-round TopK exchanges back to back; all complete in order with identical results."""
    issuer = torch_driver.OrderedIssuer()
    compressor = TopK(density=0.25)
    futures = []
    for i in range(30):
        x = torch.randn(40, generator=torch.Generator().manual_seed(100 * rank + i))
        ctx = TensorContext(key=f"t{i}", step=i, seed=0, rank=rank, world_size=world)

        def make(x=x, ctx=ctx):
            first = yield from compressor.exchange(x, ctx)
            second = yield AllReduce(first)
            return second

        futures.append(issuer.submit(make))
    return [f.wait() for f in futures]


def large_protocol(rank: int):
    """Ordered all-reduces above SPLIT_MIN_BYTES (odd lengths, every float dtype) beside small ones and a gather."""
    g = torch.Generator().manual_seed(rank)
    big = {dtype: torch.randn(n, generator=g).to(dtype)
           for dtype, n in ((torch.float32, 50_001), (torch.float16, 40_003), (torch.bfloat16, 33_335),
                            (torch.float64, 9_001))}
    small = torch.randn(7, generator=g)
    first = yield (AllReduce(big[torch.float32]), AllGather(small), AllReduce(small),
                   AllReduce(big[torch.float16]), AllReduce(big[torch.bfloat16].reshape(5, 6667)))
    second = yield AllReduce(big[torch.float64])
    return (*first, second)


def large_ordered(rank: int, world: int) -> tuple[tuple, int]:
    """Run :func:`large_protocol`; also count the all-to-alls issued (the split path's first step)."""
    calls = []
    original = torch.distributed.all_to_all_single

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    torch.distributed.all_to_all_single = counting
    try:
        return torch_driver.run(large_protocol(rank)), len(calls)
    finally:
        torch.distributed.all_to_all_single = original
