"""The scheduler interface shared by every scheme: a deterministic replay machine over rounds.

A scheme runs J jobs over at most J + T rounds (T = :attr:`Scheme.delay`). Job t is first
worked on in round t and must be decodable by the end of round t + T. Its whole state is
the sequence of straggler masks of the rounds so far, so every rank that sees the same
n-bit mask per round computes the same tasks and the same decodings; no task messages
are needed. One round, as a runtime (master or worker) drives it:

1. ``scheme.tasks(i)`` — worker i's :class:`~commlib.coding.tasks.Task` list for the
   current round (slot k of the list is result slot k); :meth:`Scheme.round_units` gives
   every worker's work in data units at once (0 = idle).
2. Workers compute; the master applies its cutoff and gets the straggler mask.
   :meth:`Scheme.admissible` says whether that mask keeps the pattern within the scheme's
   straggler model (if not, the master waits for more results: a *wait-out*).
3. ``outcome = scheme.commit(mask)`` records the mask (stragglers lose all their results
   of the round) and returns the jobs that became decodable and the jobs whose deadline
   passed undecoded. ``scheme.decoding(t)`` then says how to combine the received results
   into job t's full gradient.

Subclasses implement the planning and bookkeeping hooks (``_plan``, ``_round_units``,
``_tasks``, ``_record``, ``_decodable``, ``_decoding``) on the current round's cached plan.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from ..stragglers.models import StragglerModel
from ..tasks import Decode, Task
from ..validation import as_mask, check_int

__all__ = ["RoundOutcome", "Scheme", "PENDING", "DECODED", "MISSED"]

PENDING, DECODED, MISSED = 0, 1, -1


@dataclass(frozen=True)
class RoundOutcome:
    """What one round resolved: jobs now decodable, and jobs whose deadline passed undecoded."""

    round: int
    decoded: tuple[int, ...]
    missed: tuple[int, ...]


class Scheme(ABC):
    """A scheduler of ``jobs`` jobs over ``n`` workers with delay ``delay`` and ``slots`` results per worker-round.

    Attributes: ``n``, ``jobs``, ``delay`` (T), ``slots`` (K), ``units_per_job`` (the
    job batch is cut into this many units), ``model`` (the straggler model it tolerates),
    ``round`` (the round to plan next), ``rounds`` (J + T, the most rounds it can take).
    """

    kind: str

    def __init__(self, n: int, jobs: int, *, delay: int, slots: int, units_per_job: int,
                 model: StragglerModel) -> None:
        self.n = check_int(n, "n (workers)", 1)
        self.jobs = check_int(jobs, "jobs", 1)
        self.delay = delay
        self.slots = slots
        self.units_per_job = units_per_job
        self.model = model
        self.rounds = self.jobs + self.delay
        self._reset()

    # ----------------------------------------------------------------- description
    @property
    @abstractmethod
    def params(self) -> tuple[int, ...]:
        """The scheme's parameters, e.g. (B, W, λ)."""

    @property
    @abstractmethod
    def load(self) -> Fraction:
        """Normalized load: the largest fraction of one job's batch a worker processes in one round."""

    @property
    def label(self) -> str:
        """``kind(params)``, e.g. ``m-sgc(1,2,27)``."""
        return f"{self.kind}({','.join(map(str, self.params))})" if self.params else self.kind

    def __repr__(self) -> str:
        return f"<{self.label} n={self.n} jobs={self.jobs} load={self.load} T={self.delay} round={self.round}>"

    # ----------------------------------------------------------------- round API
    @property
    def finished(self) -> bool:
        """True once every job is decoded or missed (later rounds would be idle)."""
        return self.round >= self.rounds or not (self.status == PENDING).any()

    def round_units(self) -> np.ndarray:
        """Data units each worker computes in the current round (int array of length n; 0 = idle)."""
        self._ensure_plan()
        return self._round_units()

    def active(self) -> np.ndarray:
        """Workers with at least one task in the current round."""
        return self.round_units() > 0

    def tasks(self, worker: int) -> tuple[Task, ...]:
        """Worker ``worker``'s tasks in the current round, in slot order (empty when idle)."""
        worker = check_int(worker, "worker", 0, self.n - 1)
        self._ensure_plan()
        return self._tasks(worker)

    def admissible(self, mask: object) -> bool:
        """Whether straggler set ``mask`` (restricted to active workers) keeps the pattern within :attr:`model`."""
        self._check_running()
        m = as_mask(mask, self.n) & self.active()
        return self.model.admits(self._recent_history(), m)

    def commit(self, mask: object) -> RoundOutcome:
        """Record the current round's straggler mask (idle workers are ignored) and advance one round."""
        self._check_running()
        r = self.round
        m = as_mask(mask, self.n) & self.active()
        self._record(m)
        self.history[r] = m
        decoded, missed = [], []
        for t in range(max(0, r - self.delay), min(r, self.jobs - 1) + 1):
            if self.status[t] != PENDING:
                continue
            if self._decodable(t):
                self.status[t], self.decoded_at[t] = DECODED, r
                decoded.append(t)
            elif t + self.delay == r:
                self.status[t] = MISSED
                missed.append(t)
        self.round = r + 1
        self._plan_round = -1
        return RoundOutcome(r, tuple(decoded), tuple(missed))

    def decoding(self, job: int) -> Decode:
        """How to combine received results into job ``job``'s full gradient; the job must be decoded."""
        job = check_int(job, "job", 0, self.jobs - 1)
        if self.status[job] != DECODED:
            state = "missed" if self.status[job] == MISSED else "not decoded yet"
            raise ValueError(f"job {job} is {state}; nothing to decode")
        return self._decoding(job)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, object]:
        """The straggler masks so far (a bool tensor, rounds × n) and the configuration; everything else replays."""
        return {"kind": self.kind, "params": list(self.params), "n": self.n, "jobs": self.jobs,
                "masks": torch.from_numpy(self.history[: self.round].copy())}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Reset and replay the recorded masks; the configuration must match."""
        mine = {"kind": self.kind, "params": list(self.params), "n": self.n, "jobs": self.jobs}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(f"state is for {theirs}, this scheme is {mine}")
        masks = state["masks"]
        if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool or masks.dim() != 2 \
                or masks.shape[1] != self.n or masks.shape[0] > self.rounds:
            raise ValueError(f"state['masks'] must be a bool tensor of shape (rounds <= {self.rounds}, {self.n})")
        self._reset()
        for row in masks.numpy():
            self.commit(row)

    # ----------------------------------------------------------------- hooks
    def _reset(self) -> None:
        self.round = 0
        self.history = np.zeros((self.rounds, self.n), dtype=bool)
        self.status = np.full(self.jobs, PENDING, dtype=np.int8)
        self.decoded_at = np.full(self.jobs, -1, dtype=np.int64)
        self._plan_round = -1
        self._reset_receipts()

    @abstractmethod
    def _reset_receipts(self) -> None:
        """Clear what was received."""

    @abstractmethod
    def _plan(self) -> None:
        """Compute the current round's assignment from the receipts (a pure function of past masks)."""

    @abstractmethod
    def _round_units(self) -> np.ndarray:
        """Units per worker under the current plan."""

    @abstractmethod
    def _tasks(self, worker: int) -> tuple[Task, ...]:
        """Worker's tasks under the current plan."""

    @abstractmethod
    def _record(self, mask: np.ndarray) -> None:
        """Store the results of the non-stragglers under the current plan."""

    @abstractmethod
    def _decodable(self, job: int) -> bool:
        """Whether the results received so far decode job ``job``."""

    @abstractmethod
    def _decoding(self, job: int) -> Decode:
        """The decode of a decodable job."""

    # ----------------------------------------------------------------- helpers
    def _ensure_plan(self) -> None:
        self._check_running()
        if self._plan_round != self.round:
            self._plan()
            self._plan_round = self.round

    def _check_running(self) -> None:
        if self.round >= self.rounds:
            raise ValueError(f"{self.label} has run all its {self.rounds} rounds")

    def _recent_history(self) -> np.ndarray:
        return self.history[max(0, self.round - self.model.memory): self.round]

    def _pending(self, job: int) -> bool:
        return 0 <= job < self.jobs and self.status[job] == PENDING
