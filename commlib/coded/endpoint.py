"""What the master and every worker share: the scheme they replay, the learner, the wire layout, the handshake."""

from __future__ import annotations

import hashlib

import numpy as np
from torch import Tensor

from ..coding.schemes import Scheme
from .learner import Learner
from .transport import Pending, Transport
from .wire import Wire

__all__ = ["Endpoint"]


class Endpoint:
    """Base of :class:`~commlib.coded.master.CodedMaster` and :class:`~commlib.coded.worker.CodedWorker`.

    Checks that ``transport`` has ``scheme.n + 1`` ranks (rank 0 the master, rank i + 1
    worker i), that ``scheme`` is fresh and that ``learner`` matches it (units per job,
    T + 1 replicas); builds the :class:`~commlib.coded.wire.Wire` layout and the config
    the startup handshake compares (``config`` adds the caller's own settings).
    ``timeout`` bounds every wait (seconds); ``poll`` is the sleep between completion tests.
    """

    def __init__(self, transport: Transport, scheme: Scheme, learner: Learner, *, timeout: float = 60.0,
                 poll: float = 0.001, config: dict[str, object] | None = None) -> None:
        if transport.world != scheme.n + 1:
            raise ValueError(f"{scheme.label} over {scheme.n} workers needs {scheme.n + 1} ranks "
                             f"(a master and the workers), the transport has {transport.world}")
        if scheme.round != 0:
            raise ValueError(f"the runtime needs a fresh scheme; {scheme.label} is at round {scheme.round}")
        if learner.units != scheme.units_per_job or len(learner.models) != scheme.delay + 1:
            raise ValueError(f"{scheme.label} needs a learner with {scheme.units_per_job} units per job and "
                             f"{scheme.delay + 1} replicas, got {learner.units} and {len(learner.models)}")
        if not (timeout > 0 and poll > 0):
            raise ValueError(f"timeout and poll must be > 0, got {timeout!r} and {poll!r}")
        self.transport, self.scheme, self.learner = transport, scheme, learner
        self.timeout, self.poll = float(timeout), float(poll)
        self.wire = Wire(scheme.n, scheme.slots, scheme.rounds, learner.numel * len(learner.models), learner.numel,
                         learner.dtype)
        code = getattr(scheme, "code", None)
        encoding = hashlib.sha256(np.ascontiguousarray(code.encoding).tobytes()).hexdigest()[:16] if code else None
        self.config: dict[str, object] = {
            "scheme": scheme.label, "n": scheme.n, "jobs": scheme.jobs, "units": scheme.units_per_job,
            "code": getattr(code, "kind", None), "encoding": encoding, "batch_size": learner.batch_size,
            "seed": learner.seed, "dtype": str(learner.dtype), "numel": learner.numel, "transport": transport.name,
            "data": len(learner.x), **(config or {})}
        self._sends: list[Pending] = []

    def _send(self, tensor: Tensor, dst: int, tag: int) -> None:
        """Start a send and keep its handle until it completes (nothing is left pending at the end)."""
        self._sends.append(self.transport.isend(tensor, dst, tag))

    def _prune_sends(self) -> None:
        """Drop finished sends (surfacing transport errors)."""
        still = []
        for s in self._sends:
            if s.test():
                s.take()
            else:
                still.append(s)
        self._sends = still
