"""Point-to-point transports for the coded runtime: gloo (``torch.distributed``) and MPI (mpi4py), one interface.

The runtime needs only non-blocking tagged send and receive of flat CPU tensors, and a
non-blocking completion test, because the master must poll for arrivals until its cutoff:

* :meth:`Transport.isend` / :meth:`Transport.irecv` return a :class:`Pending`;
  ``test()`` never blocks; a finished receive's :meth:`Pending.take` returns the buffer or
  raises :class:`~commlib.errors.WireFormatError` for a malformed message.
* :func:`wait` polls one handle with sleeps until a deadline (MPICH's ``Wait`` spins a
  core, and gloo's timed ``wait`` signals the timeout to the whole gloo context).
* gloo's ``Work.is_completed()`` stays false until ``wait()`` is called (measured on torch
  2.13), so every gloo operation gets a daemon thread blocked in ``wait()`` (which releases
  the GIL) that flags completion. A gloo send completes only once the receiver has posted
  a matching receive.

Neither transport can cancel a posted receive (gloo has no cancel; MPI's is optional), so
the runtime never needs to: it keeps exactly as many receives posted as messages will
come (see :mod:`commlib.coded.master`). Message sizes:

* gloo: a sender's tensor must not be larger than the posted buffer — gloo aborts the
  receiving process ("Received data size doesn't match expected size") from its I/O
  thread, which Python cannot catch. Sizes are fixed by the configuration, which the
  startup handshake (:mod:`commlib.coded.handshake`) checks. A shorter message completes
  and leaves the buffer's NaN tail, which the wire format rejects.
* MPI: receives post one spare element, so any wrong size is seen (``Get_count``) or
  raises ``MPI_ERR_TRUNCATE``; both become :class:`~commlib.errors.WireFormatError`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from ..errors import CommlibError, WireFormatError

__all__ = ["Pending", "Transport", "GlooTransport", "MpiTransport", "wait", "wait_all"]


class Pending(ABC):
    """A posted send or receive."""

    @abstractmethod
    def test(self) -> bool:
        """Whether it has finished (never blocks)."""

    @abstractmethod
    def take(self) -> Tensor:
        """The received tensor, or the sent one; only after :meth:`test` returned True."""


class Transport(ABC):
    """Tagged point-to-point messages between ``world`` ranks; this process is ``rank``."""

    rank: int
    world: int
    name: str

    @abstractmethod
    def isend(self, tensor: Tensor, dst: int, tag: int) -> Pending:
        """Start sending the contiguous CPU tensor ``tensor`` (kept alive by the handle)."""

    @abstractmethod
    def irecv(self, buffer: Tensor, src: int, tag: int) -> Pending:
        """Post a receive of exactly ``buffer.numel()`` values from ``src`` into ``buffer``."""


def wait(pending: Pending, timeout: float, what: str, poll: float = 0.001) -> Tensor:
    """Poll ``pending`` until it finishes; ``CommlibError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pending.test():
        if time.monotonic() > deadline:
            raise CommlibError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
    return pending.take()


def wait_all(pendings: list[Pending], timeout: float, what: str, poll: float = 0.001) -> None:
    """Wait for every handle in ``pendings`` (one deadline for all); errors as :func:`wait`."""
    deadline = time.monotonic() + timeout
    for p in pendings:
        wait(p, max(0.0, deadline - time.monotonic()), what, poll)


class _GlooPending(Pending):
    """gloo's ``Work.is_completed()`` turns true only inside ``wait()``, so a daemon thread waits (GIL released)."""

    def __init__(self, work: Any, tensor: Tensor, peer: int) -> None:
        self.tensor, self.peer = tensor, peer
        self._done = threading.Event()
        self._error: RuntimeError | None = None
        threading.Thread(target=self._wait, args=(work,), daemon=True).start()

    def _wait(self, work: Any) -> None:
        try:
            work.wait()
        except RuntimeError as exc:  # a broken connection or gloo's own timeout, not a malformed message
            self._error = exc
        finally:
            self._done.set()

    def test(self) -> bool:
        return self._done.is_set()

    def take(self) -> Tensor:
        if self._error is not None:
            raise CommlibError(f"gloo transfer with rank {self.peer} failed: {self._error}") from self._error
        return self.tensor


class GlooTransport(Transport):
    """``torch.distributed`` point-to-point on an initialised gloo process group (the default group)."""

    name = "gloo"

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise CommlibError("GlooTransport needs torch.distributed.init_process_group('gloo') first")
        if dist.get_backend() != "gloo":
            raise CommlibError(f"GlooTransport needs the gloo backend, the process group uses {dist.get_backend()}")
        self._dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def isend(self, tensor: Tensor, dst: int, tag: int) -> Pending:
        return _GlooPending(self._dist.isend(tensor, dst, tag=tag), tensor, dst)

    def irecv(self, buffer: Tensor, src: int, tag: int) -> Pending:
        return _GlooPending(self._dist.irecv(buffer, src, tag=tag), buffer, src)


def _bytes(t: Tensor) -> Any:
    """A uint8 NumPy view of contiguous CPU tensor ``t`` (shares its memory)."""
    return t.reshape(-1).view(torch.uint8).numpy()


class _MpiSend(Pending):
    def __init__(self, request: Any, tensor: Tensor) -> None:
        self.request, self.tensor = request, tensor
        self.done = False

    def test(self) -> bool:
        self.done = self.done or bool(self.request.Test())
        return self.done

    def take(self) -> Tensor:
        return self.tensor


class _MpiRecv(Pending):
    def __init__(self, comm: Any, buffer: Tensor, src: int, tag: int) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.buffer, self.src = buffer, src
        self._spare = torch.empty(buffer.numel() + 1, dtype=buffer.dtype)  # one extra: oversize is seen
        self.status = MPI.Status()
        self.error: WireFormatError | None = None
        self.done = False  # testing a finished (freed) request again would overwrite the status
        self.request = comm.Irecv([_bytes(self._spare), MPI.BYTE], source=src, tag=tag)

    def test(self) -> bool:
        if not self.done:
            try:
                self.done = bool(self.request.Test(self.status))
            except self._mpi.Exception as exc:  # MPI_ERR_TRUNCATE: the message exceeded the spare element
                self.error = WireFormatError(f"message from rank {self.src} is too long: {exc}")
                self.done = True
        return self.done

    def take(self) -> Tensor:
        if self.error is not None:
            raise self.error
        got, want = self.status.Get_count(self._mpi.BYTE), self.buffer.numel() * self.buffer.element_size()
        if got != want:
            raise WireFormatError(f"message from rank {self.src} has {got} bytes, expected {want}")
        self.buffer.copy_(self._spare[:-1])
        return self.buffer


class MpiTransport(Transport):
    """mpi4py point-to-point (``Isend`` / ``Irecv`` + ``Test``) on ``comm`` (default ``COMM_WORLD``)."""

    name = "mpi"

    def __init__(self, comm: Any = None) -> None:
        from mpi4py import MPI

        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.world = self.comm.Get_rank(), self.comm.Get_size()

    def isend(self, tensor: Tensor, dst: int, tag: int) -> Pending:
        from mpi4py import MPI

        src = tensor.detach().contiguous()
        return _MpiSend(self.comm.Isend([_bytes(src), MPI.BYTE], dest=dst, tag=tag), src)

    def irecv(self, buffer: Tensor, src: int, tag: int) -> Pending:
        return _MpiRecv(self.comm, buffer, src, tag)
