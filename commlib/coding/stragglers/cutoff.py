"""The master's cutoff rule and what it does when a straggler set breaks the scheme's model.

Krishnan et al. (ICLR 2023) end a round at (1 + μ) × the fastest worker's response
time (μ = 1 in their final runs). Steps of :meth:`Cutoff.resolve`, given every active
worker's duration:

1. cutoff = (1 + μ)·min duration; the stragglers are the active workers slower than it.
2. No straggler: the round ends when the slowest active worker answers.
3. The scheme admits the straggler set: the round ends at the cutoff.
4. Otherwise a *wait-out*, logged on the ``commlib.coding`` logger and reported in the
   result: ``"wait-all"`` (the paper) waits for every worker, so the round has no
   stragglers; ``"wait-conform"`` (cheaper) waits only until the workers still missing form
   an admitted set (binary search over arrival times: admission is monotone under removing
   stragglers, and the empty set is always admitted).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Cutoff", "RoundTiming", "FALLBACKS"]

FALLBACKS = ("wait-all", "wait-conform")
log = logging.getLogger("commlib.coding")


@dataclass(frozen=True)
class RoundTiming:
    """When the round ended, who straggled, and which fallback (if any) the master took."""

    duration: float
    stragglers: np.ndarray
    wait_out: str | None


class Cutoff:
    """Cutoff (1 + ``mu``)·fastest with fallback ``"wait-all"`` or ``"wait-conform"``."""

    def __init__(self, mu: float = 1.0, fallback: str = "wait-all") -> None:
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu) or mu < 0:
            raise ValueError(f"mu must be a finite number >= 0, got {mu!r}")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        self.mu = float(mu)
        self.fallback = fallback

    def __repr__(self) -> str:
        return f"Cutoff(mu={self.mu}, fallback={self.fallback!r})"

    def resolve(self, durations: np.ndarray, active: np.ndarray,
                admissible: Callable[[np.ndarray], bool]) -> RoundTiming:
        """Apply the rule to one round (``durations`` and ``active`` of length n; ``admissible(mask) -> bool``)."""
        durations = np.asarray(durations, dtype=np.float64)
        active = np.asarray(active, dtype=bool)
        if durations.shape != active.shape or durations.ndim != 1:
            raise ValueError(f"durations {durations.shape} and active {active.shape} must be equal 1-D shapes")
        none = np.zeros(active.shape, dtype=bool)
        if not active.any():
            return RoundTiming(0.0, none, None)
        d = np.where(active, durations, -np.inf)
        slowest = float(d.max())
        cut = (1.0 + self.mu) * float(durations[active].min())
        late = d > cut
        if not late.any():
            return RoundTiming(slowest, none, None)
        if admissible(late):
            return RoundTiming(cut, late, None)
        if self.fallback == "wait-all":
            log.debug("wait-out (all): %d stragglers break the model; waiting %.3f s instead of %.3f s",
                      int(late.sum()), slowest, cut)
            return RoundTiming(slowest, none, "wait-all")
        arrivals = np.sort(d[late])  # waiting until arrivals[k] leaves the later ones as stragglers
        lo, hi = 0, len(arrivals) - 1  # invariant: waiting until arrivals[hi] is admitted (no one left)
        while lo < hi:
            mid = (lo + hi) // 2
            if admissible(d > arrivals[mid]):
                hi = mid
            else:
                lo = mid + 1
        wait = float(arrivals[lo])
        left = d > wait
        log.debug("wait-out (conform): waited %.3f s instead of %.3f s; %d of %d stragglers left",
                  wait, cut, int(left.sum()), int(late.sum()))
        return RoundTiming(wait, left, "wait-conform")
