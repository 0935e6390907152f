"""SR-SGC: gradient coding with selective repetition of unfinished tasks.

Krishnan, Ebrahimi, Khisti, "Sequential Gradient Coding for Straggler Mitigation",
ICLR 2023. Parameters (B, W, λ) with B | (W − 1); the scheme tolerates every
(B, W, λ)-bursty straggler pattern with delay T = B.

Algorithm (rounds r = 0, 1, …; jobs t = 0..J−1):

1. One (n, s) gradient code with s = ⌈Bλ / (W − 1 + B)⌉ encodes every job; worker i's
   task for job t is always its own code row (no data moves between workers).
2. Round r: every worker starts job r (idle when r ≥ J). Let u = r − B. If job u is still
   undecoded, M = the workers whose job-u result has not arrived (round-u stragglers and
   workers that spent round u repeating job u − B). If |M| > s, the |M| − s lowest-numbered
   workers of M repeat their job-u task instead of starting job r.
3. After the cutoff, every non-straggler's result counts for the job it worked on. A job
   decodes as soon as the code can decode from its received results; under the model this
   happens by round t + B.

Load = the code's load, (s + 1)/n for a code that reaches the bound.
"""

from __future__ import annotations

import numpy as np

from ..codes import make_code
from ..stragglers.models import BurstyModel
from ..validation import check_int
from .gc import SingleCodeScheme

__all__ = ["SRSGC", "sr_sgc_s"]


def sr_sgc_s(burst: int, window: int, lam: int) -> int:
    """s = ⌈Bλ / (W − 1 + B)⌉, the number of stragglers SR-SGC's per-job code must tolerate."""
    return -(-burst * lam // (window - 1 + burst))


class SRSGC(SingleCodeScheme):
    """SR-SGC(B, W, λ) over n workers and ``jobs`` jobs; ``code`` is ``"frc"`` or ``"crc"`` (seeded by ``seed``)."""

    kind = "sr-sgc"

    def __init__(self, n: int, burst: int, window: int, lam: int, jobs: int, *, code: str = "frc",
                 seed: int = 0) -> None:
        n = check_int(n, "n (workers)", 1)
        model = BurstyModel(burst, window, lam)
        if (window - 1) % burst:
            raise ValueError(f"SR-SGC needs B to divide W - 1; got B={burst}, W={window}")
        s = sr_sgc_s(burst, window, lam)
        if s > n - 1:
            raise ValueError(f"SR-SGC(B={burst}, W={window}, lambda={lam}) needs s = {s} <= n - 1 = {n - 1}")
        super().__init__(n, jobs, make_code(code, n, s, seed), delay=burst, model=model)

    @property
    def params(self) -> tuple[int, ...]:
        return (self.model.burst, self.model.window, self.model.lam)

    def _plan(self) -> None:
        r = self.round
        self.assignment[:] = r if r < self.jobs else -1
        u = r - self.delay
        if self._pending(u):
            missing = np.flatnonzero(self.recv_round[u] < 0)
            extra = len(missing) - self.code.s
            if extra > 0:
                self.assignment[missing[:extra]] = u
