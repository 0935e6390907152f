"""The master of the coded runtime (rank 0): cutoff, decode, apply, broadcast.

Gradient coding (Tandon et al., ICML 2017) and sequential gradient coding (Krishnan,
Ebrahimi, Khisti, ICLR 2023) over real processes. Ranks 1..n are workers 0..n−1; every
rank replays the same :class:`~commlib.coding.schemes.Scheme` from one n-bit straggler
mask per round, so no task messages exist. Channels (tags in :mod:`commlib.coded.wire`):
one update channel master → worker, and one result channel worker → master per result
slot, used by every round (the round travels in the payload's header).

Round r:

1. Send every worker the update (round r, round r − 1's mask, all T + 1 replicas' parameters).
2. Poll every result channel (one receive is always posted per channel) until the round
   ends. A worker *answers* once the results of all its slots for round r have arrived.
   The cutoff is (1 + μ)·(the first answer's time) after the round's start (as
   :class:`~commlib.coding.stragglers.Cutoff`), or a fixed ``deadline``. The round ends when
   every active worker answered, or at the cutoff if the missing workers form a set the
   scheme admits; otherwise it is a wait-out: ``"wait-all"`` waits for every worker,
   ``"wait-conform"`` only until the missing set is admitted.
3. Stragglers (active workers that did not answer) lose all their round-r results;
   ``scheme.commit(mask)`` names the decoded jobs, whose results are combined
   (``scheme.decoding(t).combine``) and applied to job t's replica; missed jobs are logged.

Late and malformed messages:

* A straggler's results for round r arrive in a later round (or during shutdown) on its
  channel, are received by the receive posted there, counted as late and dropped; the
  channel's receive is posted again. Nothing is cancelled, so nothing can stay pending.
* A message that fails :meth:`Wire.parse_result <commlib.coded.wire.Wire.parse_result>`,
  claims a round ahead of the master, a job or slot the worker was not given, or repeats
  a result, is counted as faulty; its worker straggles in the current round and is not
  waited for. A malformed message never stops the master.

Shutdown: send every worker a STOP update (with the last mask), then keep receiving until
every worker closed every slot channel with a FIN message (late results are dropped on the
way), then wait for the master's own sends. Each wait is bounded by ``timeout``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from ..coding.schemes import Scheme
from ..coding.stragglers import Cutoff
from ..coding.tasks import ResultKey
from ..errors import CommlibError, WireFormatError
from ..sim.coded import CodedRun
from .endpoint import Endpoint
from .handshake import greet_workers
from .learner import Learner
from .transport import Pending, Transport, wait_all
from .wire import FIN, ROUND, STOP, UPDATE_TAG, result_tag

__all__ = ["CodedMaster", "MasterReport"]

log = logging.getLogger("commlib.coded")


@dataclass
class MasterReport:
    """What the master measured.

    ``run`` has the simulator's fields (durations from the round's start to its end,
    stragglers, wait-outs, job finish times in seconds since the first round's start), so
    real and simulated runs compare directly. ``round_seconds`` adds decoding and applying.
    ``late`` and ``faulty`` count dropped messages per worker; ``rel_errors`` maps each
    decoded job to ‖decoded − full-batch gradient‖ / ‖full‖ when the master checked it.
    ``parameters`` are the final parameters of all replicas (flat, replica order).
    """

    run: CodedRun
    round_seconds: np.ndarray
    late: np.ndarray
    faulty: np.ndarray
    parameters: Tensor
    rel_errors: dict[int, float] = field(default_factory=dict)
    scheme_state: dict[str, object] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        out = self.run.summary()
        out.update(median_round=float(np.median(self.run.durations)) if self.run.rounds else 0.0,
                   max_round=float(self.run.durations.max()) if self.run.rounds else 0.0,
                   late=int(self.late.sum()), faulty=int(self.faulty.sum()),
                   max_rel_error=max(self.rel_errors.values(), default=None))
        return out


@dataclass
class _Round:
    """Round ``number``'s bookkeeping (``number`` None during shutdown): who owes what, what arrived."""

    number: int | None
    expected: dict[int, dict[int, int]]  # worker -> slot -> job
    arrived: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    lost: set[int] = field(default_factory=set)

    def answered(self, worker: int) -> bool:
        return worker not in self.lost and all((worker, s) in self.arrived for s in self.expected.get(worker, {}))


class CodedMaster(Endpoint):
    """Rank 0 of a coded run; see the module docstring. ``check`` also computes every decoded job's full gradient."""

    def __init__(self, transport: Transport, scheme: Scheme, learner: Learner, *, cutoff: Cutoff | None = None,
                 deadline: float | None = None, check: bool = False, **kwargs) -> None:
        super().__init__(transport, scheme, learner, **kwargs)
        if transport.rank != 0:
            raise ValueError(f"the master runs on rank 0, not {transport.rank}")
        if deadline is not None and not (math.isfinite(deadline) and deadline > 0):
            raise ValueError(f"deadline must be a finite number of seconds > 0, got {deadline!r}")
        self.cutoff = cutoff or Cutoff()
        self.deadline = deadline
        self.check = check
        n = scheme.n
        self.late = np.zeros(n, dtype=np.int64)
        self.faulty = np.zeros(n, dtype=np.int64)
        self.rel_errors: dict[int, float] = {}
        self._channels: dict[tuple[int, int], Pending | None] = {}

    # ------------------------------------------------------------------ channels
    def _post(self, worker: int, slot: int) -> None:
        buf = self.wire.buffer(self.wire.result_size)
        self._channels[(worker, slot)] = self.transport.irecv(buf, worker + 1, result_tag(slot))

    def _poll(self, rnd: _Round) -> bool:
        """Handle every finished receive (then post it again unless FIN); True if any finished."""
        progressed = False
        for (w, s), pending in self._channels.items():
            if pending is None or not pending.test():
                continue
            progressed = True
            closed = self._receive(rnd, w, s, pending)
            if closed:
                self._channels[(w, s)] = None
            else:
                self._post(w, s)
        return progressed

    def _receive(self, rnd: _Round, w: int, s: int, pending: Pending) -> bool:
        """Classify one message from worker ``w``'s slot-``s`` channel; True if it closed the channel."""
        try:
            msg = self.wire.parse_result(pending.take(), w, s)
        except WireFormatError as exc:
            self._fault(rnd, w, f"malformed message: {exc}")
            return False
        if msg.kind == FIN:
            if rnd.number is not None:
                self._fault(rnd, w, f"closed its slot-{s} channel during round {rnd.number}")
            return True
        if rnd.number is None or msg.round < rnd.number:
            self.late[w] += 1
            log.debug("dropped worker %d's late result of round %d (slot %d)", w, msg.round, s)
        elif msg.round > rnd.number:
            self._fault(rnd, w, f"result for round {msg.round} during round {rnd.number}")
        elif rnd.expected.get(w, {}).get(s) != msg.job:
            self._fault(rnd, w, f"result for job {msg.job} in slot {s}, which has no such task")
        elif (w, s) in rnd.arrived:
            self._fault(rnd, w, f"second result for slot {s} of round {rnd.number}")
        else:
            rnd.arrived[(w, s)] = msg.gradient
        return False

    def _fault(self, rnd: _Round, w: int, why: str) -> None:
        self.faulty[w] += 1
        if rnd.number is not None:
            rnd.lost.add(w)
        log.warning("worker %d: %s (counted as faulty)", w, why)

    # ------------------------------------------------------------------ rounds
    def run(self) -> MasterReport:
        """Handshake, every round until the scheme finishes, then the shutdown handshake."""
        scheme, learner, n = self.scheme, self.learner, self.scheme.n
        greet_workers(self.transport, self.config, self.timeout)
        for w in range(n):
            for s in range(scheme.slots):
                self._post(w, s)
        durations, masks, waits, seconds = [], [], [], []
        finish = np.full(scheme.jobs, math.inf)
        missed: list[int] = []
        results: dict[int, dict[ResultKey, Tensor]] = {}  # job -> results kept for it
        mask = np.zeros(n, dtype=bool)
        start = time.monotonic()
        while not scheme.finished:
            r, t0 = scheme.round, time.monotonic()
            update = self.wire.update(ROUND, r, mask, learner.flat_parameters())
            for w in range(n):
                self._send(update, w + 1, UPDATE_TAG)
            active = scheme.active()
            rnd = _Round(r, {int(w): {t.slot: t.job for t in scheme.tasks(int(w))} for w in np.flatnonzero(active)})
            rnd.lost.update(w for w, slots in rnd.expected.items()  # a worker that closed a channel it still needs
                            if any(self._channels[(w, s)] is None for s in slots))
            mask, wait_out = self._collect(rnd, active, t0) if active.any() else (np.zeros(n, dtype=bool), None)
            durations.append(time.monotonic() - t0)
            for (w, s), grad in rnd.arrived.items():
                if not mask[w]:
                    results.setdefault(rnd.expected[w][s], {})[(r, w, s)] = grad
            outcome = scheme.commit(mask)
            for t in outcome.decoded:
                self._apply(t, results.pop(t))
                finish[t] = time.monotonic() - start
            for t in outcome.missed:
                log.warning("%s: job %d missed its deadline (round %d)", scheme.label, t, r)
                results.pop(t, None)
            missed += outcome.missed
            masks.append(mask)
            waits.append(wait_out)
            seconds.append(time.monotonic() - t0)
            self._prune_sends()
        self._shutdown(mask)
        run = CodedRun(scheme.label, n, scheme.jobs, scheme.load, scheme.delay, np.asarray(durations),
                       np.asarray(masks, dtype=bool).reshape(-1, n), waits, finish, tuple(missed))
        return MasterReport(run, np.asarray(seconds), self.late.copy(), self.faulty.copy(),
                            learner.flat_parameters().clone(), dict(self.rel_errors), scheme.state_dict())

    def _collect(self, rnd: _Round, active: np.ndarray, t0: float) -> tuple[np.ndarray, str | None]:
        """Poll until round ``rnd`` ends (module docstring, step 2); return (straggler mask, wait-out or None)."""
        scheme, mu, fallback = self.scheme, self.cutoff.mu, self.cutoff.fallback
        first: float | None = None
        wait_out: str | None = None
        while True:
            progressed = self._poll(rnd)
            elapsed = time.monotonic() - t0
            answered = active & np.array([rnd.answered(w) for w in range(scheme.n)])
            missing = active & ~answered
            waiting = [int(w) for w in np.flatnonzero(missing) if w not in rnd.lost]
            if not waiting:
                if missing.any() and not scheme.admissible(missing):
                    log.warning("round %d: faulty workers %s break %s's straggler model", rnd.number,
                                sorted(rnd.lost), scheme.label)
                return missing, wait_out
            if first is None and answered.any():
                first = elapsed
            cut = self.deadline if self.deadline is not None else math.inf if first is None else (1 + mu) * first
            if elapsed >= cut and wait_out != "wait-all":
                if scheme.admissible(missing):
                    return missing, wait_out
                if wait_out is None:
                    log.debug("round %d: stragglers %s break the model; waiting (%s)", rnd.number, waiting, fallback)
                wait_out = fallback
            if elapsed > self.timeout:
                raise CommlibError(f"round {rnd.number}: workers {waiting} did not answer within {self.timeout:g} s")
            if not progressed:
                time.sleep(self.poll)

    def _apply(self, job: int, results: dict[ResultKey, Tensor]) -> None:
        """Decode job ``job`` from its results and step its replica (checking against the full gradient if asked)."""
        grad = self.scheme.decoding(job).combine(results)
        if self.check:
            full = self.learner.full_gradient(job)
            self.rel_errors[job] = float((grad - full).norm() / full.norm().clamp_min(1e-30))
        self.learner.apply(job, grad)

    def _shutdown(self, mask: np.ndarray) -> None:
        """STOP to every worker, drain every channel until its FIN, then wait for the master's sends."""
        stop = self.wire.update(STOP, self.scheme.round, mask, self.learner.flat_parameters())
        for w in range(self.scheme.n):
            self._send(stop, w + 1, UPDATE_TAG)
        rnd = _Round(None, {})
        deadline = time.monotonic() + self.timeout
        while any(p is not None for p in self._channels.values()):
            if not self._poll(rnd):
                if time.monotonic() > deadline:
                    open_ = sorted({w for (w, _), p in self._channels.items() if p is not None})
                    raise CommlibError(f"shutdown: workers {open_} did not close their channels within "
                                       f"{self.timeout:g} s")
                time.sleep(self.poll)
        wait_all(self._sends, max(0.0, deadline - time.monotonic()), "the master's updates to the workers",
                 self.poll)
        self._sends = []
