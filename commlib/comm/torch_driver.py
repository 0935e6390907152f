"""Drive protocols over ``torch.distributed`` (gloo, NCCL), asynchronously.

``start(protocol)`` issues the protocol's first round and returns a
``torch.futures.Future`` at once; every later round is issued from the
completion callback of the previous one, so a DDP hook never blocks the
backward pass. Results are captured in closures (the value of a collective's
future nests differently per backend and per collective).

Ordered all-reduces sum the ranks' tensors left to right with
:func:`~commlib.comm.collectives.ordered_sum`, so their bits equal the
simulator's and the MPI driver's. A payload of at least
``SPLIT_MIN_BYTES`` takes two collectives with a ring all-reduce's traffic,
2(n−1)/n of the payload per rank:

1. ``all_to_all_single`` of the payload cut into n equal chunks (zero-padded):
   rank r receives chunk r of every rank;
2. rank r sums its n chunks in rank order (the same elementwise sum as
   summing the whole tensors, hence the same bits);
3. ``all_gather_into_tensor`` of the summed chunks reassembles the result.

A smaller payload is one ``all_gather_into_tensor`` followed by the ordered
sum: (n−1) times the payload, but one latency instead of two. ``AllToAll`` is
``all_to_all_single`` (gloo supports it on CPU, NCCL on GPU).

Collectives of one process group must be issued in the same order on every
rank (gloo matches them by issue order). ``OrderedIssuer`` chains protocols so
that each starts only after the previous one has completed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor
from torch.futures import Future

from .collectives import (
    AllGather,
    AllReduce,
    AllToAll,
    Collective,
    Protocol,
    as_round,
    check_all_to_all,
    ordered_sum,
)

__all__ = ["Timing", "start", "run", "OrderedIssuer", "SPLIT_MIN_BYTES"]

SPLIT_MIN_BYTES = 64 * 1024

# torch 2.13 renamed all_gather_into_tensor to all_gather_single; torch 2.4 only has the old name.
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class Timing:
    """Seconds spent in a protocol's own code (encode/decode) and waiting for collectives."""

    compute_s: float = 0.0
    comm_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, compute_s: float = 0.0, comm_s: float = 0.0) -> None:
        with self._lock:
            self.compute_s += compute_s
            self.comm_s += comm_s


@dataclass
class _GatherSums:
    """Second step of a split ordered all-reduce: this rank's summed chunk, to be all-gathered into ``shape``."""

    chunk_sum: Tensor
    shape: torch.Size

    def issue(self, group: dist.ProcessGroup | None) -> tuple[Future, Callable[[], Tensor]]:
        world = dist.get_world_size(group)
        out = self.chunk_sum.new_empty(world * self.chunk_sum.numel())
        work = _all_gather_flat(out, self.chunk_sum, group=group, async_op=True)
        numel = self.shape.numel()
        return work.get_future(), lambda: out[:numel].view(self.shape)


def _issue(req: Collective, group: dist.ProcessGroup | None) -> tuple[Future, Callable[[], object]]:
    """Issue one collective; return its future and a closure that yields its result.

    The result of a split ordered all-reduce's first step is a :class:`_GatherSums`,
    which the caller issues once every collective of the round has completed.
    """
    world = dist.get_world_size(group)
    if isinstance(req, AllReduce) and not req.ordered:
        buf = req.tensor.detach()  # the protocol handed it over: reduced in place
        work = dist.all_reduce(buf, group=group, async_op=True)
        return work.get_future(), lambda: buf
    src = req.tensor.detach().contiguous()
    if isinstance(req, AllToAll):
        check_all_to_all(req, world)
        received = torch.empty_like(src)
        work = dist.all_to_all_single(received, src, group=group, async_op=True)
        return work.get_future(), lambda: received
    if isinstance(req, AllReduce) and world > 1 and src.numel() * src.element_size() >= SPLIT_MIN_BYTES:
        chunk = -(-src.numel() // world)
        padded = src.new_zeros(world * chunk)
        padded[: src.numel()] = src.reshape(-1)
        received = torch.empty_like(padded)
        work = dist.all_to_all_single(received, padded, group=group, async_op=True)
        return work.get_future(), lambda: _GatherSums(ordered_sum(received.view(world, chunk)), src.shape)
    if isinstance(req, (AllGather, AllReduce)):
        out = torch.empty((world, *src.shape), dtype=src.dtype, device=src.device)
        work = _all_gather_flat(out.view(-1), src.reshape(-1), group=group, async_op=True)
        if isinstance(req, AllReduce):
            return work.get_future(), lambda: ordered_sum(out)
        return work.get_future(), lambda: out
    buf = src  # handed over by the protocol: overwritten in place on the receiving ranks
    root = dist.get_global_rank(group, req.src) if group else req.src
    work = dist.broadcast(buf, src=root, group=group, async_op=True)
    return work.get_future(), lambda: buf


def start(protocol: Protocol, group: dist.ProcessGroup | None = None, timing: Timing | None = None,
          num_threads: int | None = None) -> Future:
    """Start ``protocol`` on ``group``; the returned future completes with the protocol's result.

    Later rounds run in the backend's callback threads, whose intra-op thread
    count is not the caller's (OpenMP settings are per thread), and a matmul's
    bits depend on it. Every step of the protocol therefore runs with
    ``num_threads`` intra-op threads (default: the caller's count now).
    """
    result: Future = Future()
    threads = num_threads if num_threads is not None else torch.get_num_threads()

    def advance(value: object) -> None:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        try:
            request = protocol.send(value)
        except StopIteration as stop:
            if timing:
                timing.add(compute_s=time.perf_counter() - t0)
            result.set_result(stop.value)
            return
        except BaseException as exc:  # noqa: BLE001 - the error belongs to the caller of the future
            result.set_exception(exc)
            return
        try:
            requests = as_round(request)
            issued = [_issue(r, group) for r in requests]
        except BaseException as exc:  # noqa: BLE001
            protocol.close()
            result.set_exception(exc)
            return
        t1 = time.perf_counter()
        if timing:
            timing.add(compute_s=t1 - t0)
        single = not isinstance(request, tuple)

        def collected(pending: list[tuple[Future, Callable[[], object]]], then: Callable[[list], None]) -> None:
            """Wait for ``pending`` (in a completion callback), then call ``then`` with their results."""

            def on_done(fut: Future) -> None:
                try:
                    fut.wait()
                    for f, _ in pending:
                        f.wait()  # re-raise a failed collective
                    values = [get() for _, get in pending]
                except BaseException as exc:  # noqa: BLE001
                    protocol.close()
                    result.set_exception(exc)
                    return
                then(values)

            futures = [f for f, _ in pending]
            (futures[0] if len(futures) == 1 else torch.futures.collect_all(futures)).then(on_done)

        def finish(values: list) -> None:
            if timing:
                timing.add(comm_s=time.perf_counter() - t1)
            advance(values[0] if single else tuple(values))

        def second_steps(values: list) -> None:
            """Issue the all-gathers of split ordered all-reduces (same order on every rank), then finish."""
            splits = [i for i, v in enumerate(values) if isinstance(v, _GatherSums)]
            if not splits:
                finish(values)
                return
            try:
                gathers = [values[i].issue(group) for i in splits]
            except BaseException as exc:  # noqa: BLE001
                protocol.close()
                result.set_exception(exc)
                return

            def fill(gathered: list) -> None:
                for i, v in zip(splits, gathered):
                    values[i] = v
                finish(values)

            collected(gathers, fill)

        collected(issued, second_steps)

    advance(None)
    return result


def run(protocol: Protocol, group: dist.ProcessGroup | None = None) -> object:
    """Run ``protocol`` to completion and return its result (blocking)."""
    return start(protocol, group).wait()


class OrderedIssuer:
    """Start protocols one after another on a process group, in call order.

    Each protocol starts when the previous one has completed, so all of a
    rank's collectives are issued from one ordered chain — identical on every
    rank whatever thread calls ``submit``. Communication still overlaps the
    caller (e.g. DDP's backward pass), since ``submit`` never blocks.
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.num_threads = torch.get_num_threads()  # the creating thread's count, used by every protocol
        self._tail: Future | None = None
        self._lock = threading.Lock()

    def submit(self, make_protocol: Callable[[], Protocol], timing: Timing | None = None) -> Future:
        """Chain a protocol after the previous one; return a future of its result."""
        out: Future = Future()

        def launch(_: Future | None = None) -> None:
            try:
                inner = start(make_protocol(), self.group, timing, self.num_threads)
            except BaseException as exc:  # noqa: BLE001
                out.set_exception(exc)
                return
            inner.then(lambda f: _forward(f, out))

        with self._lock:
            prev, self._tail = self._tail, out
        if prev is None or prev.done():
            launch()
        else:
            prev.then(launch)
        return out


def _forward(src: Future, dst: Future) -> None:
    try:
        dst.set_result(src.wait())
    except BaseException as exc:  # noqa: BLE001
        dst.set_exception(exc)
