"""An in-process transport for fast tests: ranks are threads, messages go through one shared hub.

Matching is MPI/gloo-like: per (source, destination, tag), messages and posted receives
pair up in FIFO order. A message longer than the posted buffer fails the receive with a
``WireFormatError`` (as over MPI); a shorter one fills its prefix (as over gloo). After a
run, :meth:`Hub.leftovers` lists anything still unmatched — it must be empty.
"""

from __future__ import annotations

import threading
import traceback
from collections import defaultdict, deque
from collections.abc import Callable

from torch import Tensor

from commlib.coded.transport import Pending, Transport
from commlib.errors import WireFormatError


class _Done(Pending):
    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor

    def test(self) -> bool:
        return True

    def take(self) -> Tensor:
        return self.tensor


class _Recv(Pending):
    def __init__(self, buffer: Tensor) -> None:
        self.buffer = buffer
        self.error: WireFormatError | None = None
        self.done = threading.Event()

    def fill(self, message: Tensor) -> None:
        if message.numel() > self.buffer.numel():
            self.error = WireFormatError(f"message of {message.numel()} values for a buffer of {self.buffer.numel()}")
        else:
            self.buffer[: message.numel()] = message.reshape(-1)
        self.done.set()

    def test(self) -> bool:
        return self.done.is_set()

    def take(self) -> Tensor:
        if self.error is not None:
            raise self.error
        return self.buffer


class Hub:
    """The shared state of ``world`` loopback ranks."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.lock = threading.Lock()
        self.messages: dict[tuple[int, int, int], deque[Tensor]] = defaultdict(deque)
        self.receives: dict[tuple[int, int, int], deque[_Recv]] = defaultdict(deque)

    def leftovers(self) -> dict[str, list[tuple[int, int, int]]]:
        return {"messages": [k for k, q in self.messages.items() if q],
                "receives": [k for k, q in self.receives.items() if q]}


class LoopbackTransport(Transport):
    name = "loopback"

    def __init__(self, hub: Hub, rank: int) -> None:
        self.hub, self.rank, self.world = hub, rank, hub.world

    def isend(self, tensor: Tensor, dst: int, tag: int) -> Pending:
        key = (self.rank, dst, tag)
        with self.hub.lock:
            waiting = self.hub.receives[key]
            if waiting:
                waiting.popleft().fill(tensor)
            else:
                self.hub.messages[key].append(tensor.detach().clone())
        return _Done(tensor)

    def irecv(self, buffer: Tensor, src: int, tag: int) -> Pending:
        key, recv = (src, self.rank, tag), _Recv(buffer)
        with self.hub.lock:
            queued = self.hub.messages[key]
            if queued:
                recv.fill(queued.popleft())
            else:
                self.hub.receives[key].append(recv)
        return recv


def run_ranks(world: int, fn: Callable[[LoopbackTransport], object], timeout: float = 60.0) -> tuple[list, Hub]:
    """Run ``fn(transport)`` for every rank in its own thread; return (results or exceptions by rank, hub)."""
    hub = Hub(world)
    results: list[object] = [None] * world

    def body(rank: int) -> None:
        try:
            results[rank] = fn(LoopbackTransport(hub, rank))
        except Exception as exc:  # noqa: BLE001 - returned to the test
            exc.add_note(traceback.format_exc())
            results[rank] = exc

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), f"a loopback rank did not finish within {timeout} s"
    return results, hub
