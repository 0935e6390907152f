"""Schemes with one gradient code per job and one result per worker-round: classic GC(s) and no coding.

:class:`SingleCodeScheme` holds what GC(s) and SR-SGC share: every job is encoded with
the same (n, s) code, each worker sends one coded result (slot 0) per round, and job t
decodes once the code can decode from the workers whose job-t result arrived.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..codes import GradientCode, make_code
from ..stragglers.models import PerRoundModel, StragglerModel
from ..tasks import Decode, Task
from ..validation import check_int
from .base import Scheme

__all__ = ["SingleCodeScheme", "GC", "NoCoding"]


class SingleCodeScheme(Scheme):
    """Base of GC and SR-SGC: the plan is one job index per worker (−1 = idle), slot 0."""

    def __init__(self, n: int, jobs: int, code: GradientCode, *, delay: int, model: StragglerModel) -> None:
        self.code = code
        super().__init__(n, jobs, delay=delay, slots=1, units_per_job=code.units, model=model)

    @property
    def load(self) -> Fraction:
        return self.code.load

    def _reset_receipts(self) -> None:
        # recv_round[t, i]: round in which worker i's job-t result arrived, −1 if none yet
        self.recv_round = np.full((self.jobs, self.n), -1, dtype=np.int64)
        self.assignment = np.full(self.n, -1, dtype=np.int64)

    def _round_units(self) -> np.ndarray:
        return np.where(self.assignment >= 0, self.code.task_units, 0)

    def _tasks(self, worker: int) -> tuple[Task, ...]:
        job = int(self.assignment[worker])
        if job < 0:
            return ()
        return (Task(job, 0, self.code.support(worker), self.code.coefficients(worker), "coded"),)

    def _record(self, mask: np.ndarray) -> None:
        done = np.flatnonzero((self.assignment >= 0) & ~mask)
        self.recv_round[self.assignment[done], done] = self.round

    def _decodable(self, job: int) -> bool:
        return self.code.decodable(self.recv_round[job] >= 0)

    def _decoding(self, job: int) -> Decode:
        rounds = self.recv_round[job]
        a = self.code.decode(rounds >= 0)
        return Decode(job, tuple((int(rounds[i]), int(i), 0, float(a[i])) for i in np.flatnonzero(a)))


class GC(SingleCodeScheme):
    """Classic gradient coding (Tandon et al., ICML 2017): every round, every worker sends its coded task of job r.

    T = 0, load = the code's load ((s+1)/n when the code allows it), tolerates any s
    stragglers per round (:class:`~commlib.coding.stragglers.models.PerRoundModel`).
    ``code`` is ``"frc"`` (exact; uneven groups when (s+1) ∤ n) or ``"crc"`` (seeded by ``seed``).
    """

    kind = "gc"

    def __init__(self, n: int, s: int, jobs: int, *, code: str = "frc", seed: int = 0) -> None:
        n = check_int(n, "n (workers)", 1)
        s = check_int(s, "s (tolerated stragglers)", 0, n - 1)
        super().__init__(n, jobs, make_code(code, n, s, seed), delay=0, model=PerRoundModel(s))

    @property
    def params(self) -> tuple[int, ...]:
        return (self.code.s,)

    def _plan(self) -> None:
        self.assignment[:] = self.round if self.round < self.jobs else -1


class NoCoding(GC):
    """Plain data parallelism: worker i computes partition i of job r (load 1/n); any straggler forces a wait."""

    kind = "none"

    def __init__(self, n: int, jobs: int) -> None:
        super().__init__(n, 0, jobs)

    @property
    def params(self) -> tuple[int, ...]:
        return ()
