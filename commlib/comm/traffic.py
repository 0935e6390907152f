"""What one collective moves: the bytes a rank receives, and the wire collective it runs as, per driver.

The drivers run the same request differently (see their module docstrings):

* ``"torch"`` (:mod:`.torch_driver`, and the simulator, which stands in for a DDP run):
  a rank-ordered ``AllReduce`` whose payload reaches ``SPLIT_MIN_BYTES`` is an
  all-to-all of ``n`` zero-padded chunks, a local ordered sum and an all-gather of
  the summed chunks — each step receives ``(n−1)·chunk`` bytes, so ``2(n−1)·⌈P/n⌉``
  in all (a ring's traffic, kind ``"ordered"``); a smaller one is one all-gather,
  ``(n−1)·P`` (kind ``"allgather"``). The rule is the cost model's
  :func:`~commlib.adaptive.cost.ordered_traffic`, applied to the payload the driver
  sees: the *fused* one (:func:`~commlib.comm.merge.fuse_round`).
* ``"mpi"`` (:mod:`.mpi_driver`): every ordered ``AllReduce`` is one ``Allgather``, ``(n−1)·P``.

In both, an ``AllGather`` receives ``(n−1)·P``, an ``AllToAll`` the ``n−1`` rows of
the others, ``(n−1)/n·P``, a ``Broadcast`` ``P`` on every rank but the source, and a
native ``AllReduce`` ``2(n−1)/n·P`` (the ring model; the backend picks its algorithm).

:class:`Meter` runs a protocol through and adds up what its collectives move, and — given a
clock — how long each round took from the protocol's side (issue, wait, the driver's ordered sums).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..adaptive.cost import WireKind, ordered_traffic
from .collectives import AllGather, AllReduce, AllToAll, Collective, Protocol, as_round

__all__ = ["DRIVERS", "Driver", "Meter", "received_bytes", "wire_kind"]

Driver = Literal["torch", "mpi"]
DRIVERS: tuple[Driver, ...] = ("torch", "mpi")


def _check_driver(driver: str) -> None:
    if driver not in DRIVERS:
        raise ValueError(f"unknown driver {driver!r}; expected one of {DRIVERS}")


def _payload_bytes(request: Collective) -> int:
    return request.tensor.numel() * request.tensor.element_size()


def _splits(request: Collective, world_size: int, driver: str) -> bool:
    """Whether ``driver`` runs ``request`` as a split ordered all-reduce (all-to-all + all-gather)."""
    ordered = isinstance(request, AllReduce) and request.ordered
    return ordered and driver == "torch" and ordered_traffic(_payload_bytes(request), world_size)[0] == 2


def wire_kind(request: Collective, world_size: int, driver: str = "torch") -> WireKind | None:
    """The cost model's name of the collective ``driver`` runs for ``request`` (``None``: a broadcast, not priced)."""
    _check_driver(driver)
    if isinstance(request, AllReduce):
        if not request.ordered:
            return "allreduce"
        return "ordered" if _splits(request, world_size, driver) else "allgather"
    if isinstance(request, AllGather):
        return "allgather"
    if isinstance(request, AllToAll):
        return "alltoall"
    return None


def received_bytes(request: Collective, rank: int, world_size: int, driver: str = "torch") -> int:
    """Bytes rank ``rank`` of ``world_size`` receives while ``driver`` runs ``request`` (module docstring)."""
    _check_driver(driver)
    n, payload = world_size, _payload_bytes(request)
    if isinstance(request, AllToAll):
        return (n - 1) * payload // n  # the other ranks' rows: (n − 1) rows of payload / n bytes
    if isinstance(request, AllGather):
        return (n - 1) * payload
    if isinstance(request, AllReduce) and not request.ordered:
        return 2 * (n - 1) * payload // n
    if isinstance(request, AllReduce):
        if _splits(request, n, driver):
            chunk = -(-request.tensor.numel() // n)  # the driver zero-pads the payload to n equal chunks
            return 2 * (n - 1) * chunk * request.tensor.element_size()
        return (n - 1) * payload
    return 0 if rank == request.src else payload


@dataclass
class Meter:
    """Counts what a protocol's collectives move on one rank, and times its rounds when given a ``clock``.

    :meth:`run` wraps a protocol: for every round it yields, ``received`` grows by
    :func:`received_bytes` of each collective, ``rounds`` gets the round's ``(kind,
    payload_bytes)`` pairs (broadcasts left out: the cost model does not price them) and,
    with a clock, ``seconds`` the time from yielding the round to getting its results back.
    """

    rank: int
    world_size: int
    driver: str = "torch"
    clock: Callable[[], float] | None = None
    received: int = 0
    rounds: list[tuple[tuple[WireKind, int], ...]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_driver(self.driver)

    def run(self, protocol: Protocol, timed: bool = True) -> Protocol:
        """Run ``protocol``, metering each round (``timed=False``: count bytes only); return its result."""
        value: object = None
        try:
            while True:
                try:
                    request = protocol.send(value)
                except StopIteration as stop:
                    return stop.value
                requests = as_round(request)
                self.received += sum(received_bytes(r, self.rank, self.world_size, self.driver) for r in requests)
                kinds = [(wire_kind(r, self.world_size, self.driver), _payload_bytes(r)) for r in requests]
                start = self.clock() if self.clock is not None and timed else None
                value = yield request
                if timed:
                    self.rounds.append(tuple((kind, payload) for kind, payload in kinds if kind is not None))
                    if start is not None:
                        self.seconds.append(self.clock() - start)
        except GeneratorExit:  # the driver abandoned us (an error elsewhere): abandon the wrapped protocol too
            protocol.close()
            raise
