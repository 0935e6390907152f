"""Drive protocols over ``torch.distributed`` (gloo, NCCL), asynchronously.

``start(protocol)`` issues the protocol's first round and returns a
``torch.futures.Future`` at once; every later round is issued from the
completion callback of the previous one, so a DDP hook never blocks the
backward pass. Results are captured in closures (the value of a collective's
future nests differently per backend and per collective).

Ordered all-reduces are an ``all_gather_into_tensor`` followed by
:func:`~commlib.comm.collectives.ordered_sum`, so their bits equal the
simulator's and the MPI driver's. ``AllToAll`` is ``all_to_all_single``
(gloo supports it on CPU, NCCL on GPU).

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

__all__ = ["Timing", "start", "run", "OrderedIssuer"]

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


def _issue(req: Collective, group: dist.ProcessGroup | None) -> tuple[Future, Callable[[], Tensor]]:
    """Issue one collective; return its future and a closure that yields its result."""
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

        def on_done(fut: Future) -> None:
            try:
                fut.wait()
                for f, _ in issued:
                    f.wait()  # re-raise a failed collective
                values = [get() for _, get in issued]
            except BaseException as exc:  # noqa: BLE001
                protocol.close()
                result.set_exception(exc)
                return
            if timing:
                timing.add(comm_s=time.perf_counter() - t1)
            advance(values[0] if single else tuple(values))

        futures = [f for f, _ in issued]
        (futures[0] if len(futures) == 1 else torch.futures.collect_all(futures)).then(on_done)

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
