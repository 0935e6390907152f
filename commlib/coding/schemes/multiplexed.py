"""M-SGC: multiplexed sequential gradient coding.

Krishnan, Ebrahimi, Khisti, "Sequential Gradient Coding for Straggler Mitigation",
ICLR 2023. Parameters (B, W, λ), 1 ≤ B < W, 1 ≤ λ ≤ n; tolerates every (B, W, λ)-bursty
pattern with delay T = W − 2 + B. Each job is split into an uncoded part D1 handled by
repetition and a part D2 protected by an (n, λ) gradient code; work on K = W − 1 + B jobs
is multiplexed in every round.

Layout of one job's batch (units as in :mod:`commlib.coding.tasks`), with the (n, λ) code
covering U_c units of which each task takes m_c:

* D1: n·(W − 1) chunks of m_c units; chunk (i, k) belongs to worker i, k = 0..W−2.
* D2: B groups of U_c units each, group j encoded with the code.

Every mini-task (a D1 chunk or a code task) has m_c units, so units per job =
n(W−1)m_c + B·U_c and load = K·m_c / units; with a code of load (λ+1)/n this is
(λ+1)(W−1+B) / (n(B + (W−1)(λ+1))). When λ = n there is no D2 (m_c = 1) and the load is
(W−1+B) / (n(W−1)).

Algorithm, round r, worker i, slot m = 0..K−1 working on job t = r − m (if t is pending):

1. m ≤ W − 2: compute D1 chunk (i, m).
2. m = W − 1 + j: if worker i holds all its W − 1 D1 chunks of job t, compute its code
   task for D2 group j (idle when λ = n); otherwise re-attempt its lowest missing D1 chunk.
3. A straggler loses all K results of the round. Job t decodes when every D1 chunk of
   every worker has arrived and each D2 group can be decoded (at least n − λ results for a
   code that reaches the bound): g(t) = Σ D1 chunks + Σ_j decode(group j).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ..codes import make_code
from ..stragglers.models import BurstyModel
from ..tasks import Decode, Task
from ..validation import check_int
from .base import Scheme

__all__ = ["MSGC"]


class MSGC(Scheme):
    """M-SGC(B, W, λ) over n workers and ``jobs`` jobs; ``code`` (``"frc"``/``"crc"``) protects D2."""

    kind = "m-sgc"

    def __init__(self, n: int, burst: int, window: int, lam: int, jobs: int, *, code: str = "frc",
                 seed: int = 0) -> None:
        n = check_int(n, "n (workers)", 1)
        model = BurstyModel(burst, window, lam)
        check_int(lam, "lambda", 1, n)
        self.code = make_code(code, n, lam, seed) if lam < n else None
        self.chunk_units = self.code.task_units if self.code else 1
        self.d1_units = n * (window - 1) * self.chunk_units
        units = self.d1_units + (burst * self.code.units if self.code else 0)
        super().__init__(n, jobs, delay=window - 2 + burst, slots=window - 1 + burst, units_per_job=units,
                         model=model)

    @property
    def params(self) -> tuple[int, ...]:
        return (self.model.burst, self.model.window, self.model.lam)

    @property
    def load(self) -> Fraction:
        return Fraction(self.slots * self.chunk_units, self.units_per_job)

    @property
    def _chunks(self) -> int:
        return self.model.window - 1

    def _reset_receipts(self) -> None:
        # d1_round[t, i, k]: round in which chunk (i, k) of job t arrived (−1: not yet); the slot is round − t
        self.d1_round = np.full((self.jobs, self.n, self._chunks), -1, dtype=np.int64)
        # d2_recv[t, j, i]: worker i's code result for D2 group j of job t arrived (in round t + W − 1 + j)
        self.d2_recv = np.zeros((self.jobs, self.model.burst, self.n), dtype=bool)
        # plan[m, i]: what worker i computes in slot m: −1 idle, k < W − 1 chunk k, W − 1 + j group j
        self.plan = np.full((self.slots, self.n), -1, dtype=np.int64)

    def _plan(self) -> None:
        self.plan[:] = -1
        w1 = self._chunks
        for m in range(self.slots):
            t = self.round - m
            if not self._pending(t):
                continue
            if m < w1:
                self.plan[m] = m
                continue
            missing = self.d1_round[t] < 0
            complete = ~missing.any(axis=1)
            coded = m if self.code is not None else -1  # slot W − 1 + j computes D2 group j (plan value m)
            self.plan[m] = np.where(complete, coded, missing.argmax(axis=1))

    def _round_units(self) -> np.ndarray:
        return (self.plan >= 0).sum(axis=0) * self.chunk_units

    def _tasks(self, worker: int) -> tuple[Task, ...]:
        out = []
        w1, cu = self._chunks, self.chunk_units
        for m in range(self.slots):
            what = int(self.plan[m, worker])
            if what < 0:
                continue
            job = self.round - m
            if what < w1:
                start = (worker * w1 + what) * cu
                out.append(Task(job, m, tuple(range(start, start + cu)), (1.0,) * cu, "uncoded"))
            else:
                offset = self.d1_units + (what - w1) * self.code.units  # type: ignore[union-attr]
                units = tuple(offset + u for u in self.code.support(worker))  # type: ignore[union-attr]
                out.append(Task(job, m, units, self.code.coefficients(worker), "coded"))  # type: ignore[union-attr]
        return tuple(out)

    def _record(self, mask: np.ndarray) -> None:
        w1, r = self._chunks, self.round
        for m in range(self.slots):
            what = self.plan[m]
            ok = (what >= 0) & ~mask
            if not ok.any():
                continue
            t = r - m
            chunk = ok & (what < w1)
            self.d1_round[t, np.flatnonzero(chunk), what[chunk]] = r
            coded = ok & (what >= w1)
            if coded.any():
                self.d2_recv[t, m - w1, coded] = True

    def _decodable(self, job: int) -> bool:
        if (self.d1_round[job] < 0).any():
            return False
        return self.code is None or all(self.code.decodable(self.d2_recv[job, j]) for j in range(self.model.burst))

    def _decoding(self, job: int) -> Decode:
        terms = [(int(r), int(i), int(r) - job, 1.0) for (i, _), r in np.ndenumerate(self.d1_round[job])]
        if self.code is not None:
            w1 = self._chunks
            for j in range(self.model.burst):
                a = self.code.decode(self.d2_recv[job, j])
                terms += [(job + w1 + j, int(i), w1 + j, float(a[i])) for i in np.flatnonzero(a)]
        return Decode(job, tuple(terms))
