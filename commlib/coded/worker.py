"""A worker of the coded runtime (rank i + 1 is worker i): replay the schedule, compute, send.

Loop (see :mod:`commlib.coded.master` for the protocol):

1. Take the next update from the master (one receive is always posted on the update
   channel), replay it: commit the previous round's straggler mask into the local
   :class:`~commlib.coding.schemes.Scheme`, which must then be at the update's round.
2. STOP ends the loop. Otherwise post the next receive at once, then decide whether the
   round is stale: if this update had already arrived when the worker looked (it was busy,
   a straggler), wait up to ``grace`` seconds for the next one; if that comes, skip this
   round's computation (the master has moved on) and go to 1 — a late worker catches up
   instead of working through every round it missed. A worker that had to wait for its
   update never waits the grace.
3. Load the replicas' parameters, compute every task of the round with one weighted
   backward pass each (:meth:`Learner.compute <commlib.coded.learner.Learner.compute>`),
   let the :class:`~commlib.coded.injector.StragglerInjector` (if any) sleep the modelled
   extra time, and send each task's result on its slot's channel.

After STOP the worker sends FIN on every slot channel and waits for all its sends: every
result sent is received by the master (late ones are dropped there), so none is left
pending. A malformed update from the master is fatal (:class:`~commlib.errors.WireFormatError`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import Tensor

from ..coding.schemes import Scheme
from ..coding.tasks import Task
from ..errors import WireFormatError
from .endpoint import Endpoint
from .handshake import greet_master
from .injector import StragglerInjector
from .learner import Learner
from .transport import Pending, Transport, wait, wait_all
from .wire import FIN, RESULT, STOP, UPDATE_TAG, Update, result_tag

__all__ = ["CodedWorker", "WorkerReport"]


@dataclass
class WorkerReport:
    """What one worker did: rounds with tasks it computed or skipped (stale on arrival), seconds slept."""

    worker: int
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    slept: float = 0.0
    scheme_state: dict[str, object] = field(default_factory=dict)


class CodedWorker(Endpoint):
    """Worker ``transport.rank − 1``; see the module docstring. ``grace`` in seconds (step 2)."""

    def __init__(self, transport: Transport, scheme: Scheme, learner: Learner, *,
                 injector: StragglerInjector | None = None, grace: float = 0.005, **kwargs) -> None:
        super().__init__(transport, scheme, learner, **kwargs)
        if not 1 <= transport.rank <= scheme.n:
            raise ValueError(f"workers run on ranks 1..{scheme.n}, not {transport.rank}")
        if injector is not None and (injector.trace.n != scheme.n or injector.trace.rounds < scheme.rounds):
            raise ValueError(f"{scheme.label} needs a straggler trace of at least {scheme.rounds} rounds × "
                             f"{scheme.n} workers, got {injector.trace.rounds} × {injector.trace.n}")
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
        self.worker = transport.rank - 1
        self.injector, self.grace = injector, float(grace)

    def run(self) -> WorkerReport:
        """Handshake, then the loop of the module docstring until STOP, then FIN on every channel."""
        greet_master(self.transport, self.config, self.timeout)
        report = WorkerReport(self.worker)
        posted = self._post()
        while True:
            was_there = posted.test()
            update = self._replay(wait(posted, self.timeout, "the master's next update", self.poll))
            if update.kind == STOP:
                break
            posted = self._post()
            tasks = self.scheme.tasks(self.worker)
            if not tasks:
                continue
            if was_there and self._arrives(posted):
                report.skipped.append(update.round)
                continue
            report.slept += self._work(update, tasks)
            report.computed.append(update.round)
            self._prune_sends()
        for slot in range(self.scheme.slots):
            self._send(self.wire.result(FIN, -1, self.worker, slot, -1, None), 0, result_tag(slot))
        wait_all(self._sends, self.timeout, "the worker's results to the master", self.poll)
        self._sends = []
        report.scheme_state = self.scheme.state_dict()
        return report

    def _post(self) -> Pending:
        return self.transport.irecv(self.wire.buffer(self.wire.update_size), 0, UPDATE_TAG)

    def _arrives(self, posted: Pending) -> bool:
        """Whether ``posted`` finishes within the grace period (then the current round is stale)."""
        deadline = time.monotonic() + self.grace
        while not posted.test():
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll)
        return True

    def _replay(self, buf: Tensor) -> Update:
        """Parse an update and commit the mask it carries; the local scheme must land on the update's round."""
        update = self.wire.parse_update(buf)
        scheme = self.scheme
        if update.round == 0 and update.kind != STOP:
            if scheme.round != 0 or update.mask.any():
                raise WireFormatError(f"worker {self.worker}: unexpected round-0 update at round {scheme.round}")
            return update
        if update.round != scheme.round + 1:
            raise WireFormatError(f"worker {self.worker}: update for round {update.round}, expected {scheme.round + 1}")
        scheme.commit(update.mask)
        return update

    def _work(self, update: Update, tasks: tuple[Task, ...]) -> float:
        """Compute and send this round's results (step 3); return the seconds slept by the injector."""
        start = time.monotonic()
        r = update.round
        self.learner.load_flat_parameters(update.params)
        results = [(task, self.learner.compute(task)) for task in tasks]
        slept = 0.0
        if self.injector is not None:
            load = float(self.scheme.round_units()[self.worker]) / self.scheme.units_per_job
            slept = self.injector.pad(r, self.worker, load, time.monotonic() - start)
        for task, grad in results:
            self._send(self._message(r, task, grad), 0, result_tag(task.slot))
        return slept

    def _message(self, round: int, task: Task, gradient: Tensor) -> Tensor:
        """The wire message carrying ``task``'s result of round ``round``."""
        return self.wire.result(RESULT, round, self.worker, task.slot, task.job, gradient)

