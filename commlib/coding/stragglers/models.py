"""Straggler models a scheme is designed for, as exact checkers over straggler patterns.

A *pattern* is a boolean array (rounds × workers), True where a worker straggled (its
results of that round are lost). A model answers three questions:

* :meth:`StragglerModel.admits` — may round r have straggler set ``mask``, given the
  earlier rounds? Checks only the windows that end at round r; applied round by round it
  checks every window, and admitting fewer stragglers never hurts (both models are
  monotone: a subset of an admitted set is admitted).
* :meth:`StragglerModel.thin` — the admitted subset of ``mask`` chosen greedily in a
  priority order (used to filter random patterns and by the adversary).
* :meth:`StragglerModel.conforms` — does a whole pattern obey the model?

Models (Krishnan, Ebrahimi, Khisti, "Sequential Gradient Coding for Straggler
Mitigation", ICLR 2023):

* :class:`PerRoundModel` (s): at most s stragglers per round (classic GC).
* :class:`BurstyModel` (B, W, λ): in every window of W consecutive rounds (a) at most λ
  distinct workers straggle and (b) each worker's straggling rounds fit in one run of at
  most B consecutive rounds. Exact check at round r: the union of stragglers in rounds
  r−W+1..r has at most λ members, and no worker straggling at r also straggled in rounds
  r−W+1..r−B (two straggles q − p ≥ B apart inside one window would span more than B rounds).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..validation import as_mask, check_int

__all__ = ["StragglerModel", "PerRoundModel", "BurstyModel", "as_pattern"]


def as_pattern(pattern: object, n: int | None = None) -> np.ndarray:
    """A (rounds × workers) boolean array; ``ValueError`` naming the problem otherwise."""
    arr = np.asarray(pattern)
    if arr.ndim != 2:
        raise ValueError(f"a straggler pattern must be 2-D (rounds × workers), got shape {arr.shape}")
    if n is not None and arr.shape[1] != n:
        raise ValueError(f"pattern has {arr.shape[1]} workers, expected {n}")
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.integer) or not np.isin(arr, (0, 1)).all():
            raise ValueError(f"a straggler pattern must hold booleans (or 0/1), got dtype {arr.dtype}")
        arr = arr.astype(bool)
    return arr


class StragglerModel(ABC):
    """A set of admissible straggler patterns, checked round by round."""

    #: how many earlier rounds :meth:`admits` looks at
    memory: int

    @abstractmethod
    def _admits(self, history: np.ndarray, mask: np.ndarray) -> bool:
        """:meth:`admits` on validated arrays; ``history`` holds at least the last ``memory`` rounds."""

    @abstractmethod
    def _thin(self, history: np.ndarray, mask: np.ndarray, order: np.ndarray) -> np.ndarray:
        """:meth:`thin` on validated arrays."""

    def _recent(self, history: object, mask: object) -> tuple[np.ndarray, np.ndarray]:
        """Validated (last ``memory`` rounds of ``history``, ``mask``)."""
        shape = np.shape(mask)
        if len(shape) != 1:
            raise ValueError(f"mask must be 1-D (one flag per worker), got shape {shape}")
        hist = as_pattern(history, shape[0])
        return hist[len(hist) - min(len(hist), self.memory):], as_mask(mask, shape[0])

    def admits(self, history: object, mask: object) -> bool:
        """Whether the next round may have straggler set ``mask`` after the rounds in ``history`` (rounds × n)."""
        return self._admits(*self._recent(history, mask))

    def thin(self, history: object, mask: object, order: object | None = None) -> np.ndarray:
        """The subset of ``mask`` kept by adding its workers in ``order`` (default: by id) while admitted."""
        hist, mask_arr = self._recent(history, mask)
        n = mask_arr.shape[0]
        order_arr = np.arange(n) if order is None else np.asarray(order)
        if sorted(order_arr.tolist()) != list(range(n)):
            raise ValueError(f"order must be a permutation of 0..{n - 1}")
        return self._thin(hist, mask_arr, order_arr)

    def conforms(self, pattern: object) -> bool:
        """Whether every round of ``pattern`` is admitted after the rounds before it."""
        return self.first_violation(pattern) is None

    def first_violation(self, pattern: object) -> int | None:
        """The first round that breaks the model, or None."""
        pat = as_pattern(pattern)
        for r in range(pat.shape[0]):
            if not self._admits(pat[max(0, r - self.memory):r], pat[r]):
                return r
        return None


class PerRoundModel(StragglerModel):
    """At most ``s`` stragglers in every round (the model of classic gradient coding)."""

    memory = 0

    def __init__(self, s: int) -> None:
        self.s = check_int(s, "s", 0)

    def _admits(self, history: np.ndarray, mask: np.ndarray) -> bool:
        return int(mask.sum()) <= self.s

    def _thin(self, history: np.ndarray, mask: np.ndarray, order: np.ndarray) -> np.ndarray:
        keep = np.zeros_like(mask)
        chosen = order[mask[order]][: self.s]
        keep[chosen] = True
        return keep

    def __repr__(self) -> str:
        return f"PerRoundModel(s={self.s})"


class BurstyModel(StragglerModel):
    """The (B, W, λ)-bursty model of Krishnan et al. (ICLR 2023); requires 1 ≤ B < W and λ ≥ 1."""

    def __init__(self, burst: int, window: int, lam: int) -> None:
        self.burst = check_int(burst, "B (burst length)", 1)
        self.window = check_int(window, "W (window)", self.burst + 1)
        self.lam = check_int(lam, "lambda (distinct stragglers per window)", 1)
        self.memory = self.window - 1

    def _parts(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(workers straggling in the last W−1 rounds, workers straggling in rounds r−W+1..r−B)."""
        h = len(history)
        recent = history.any(axis=0)
        old = history[: max(0, h - self.burst + 1)].any(axis=0)
        return recent, old

    def _admits(self, history: np.ndarray, mask: np.ndarray) -> bool:
        recent, old = self._parts(history)
        if (mask & old).any():
            return False
        return int((recent | mask).sum()) <= self.lam

    def _thin(self, history: np.ndarray, mask: np.ndarray, order: np.ndarray) -> np.ndarray:
        recent, old = self._parts(history)
        allowed = mask & ~old
        keep = allowed & recent
        room = self.lam - int(recent.sum())
        fresh = order[(allowed & ~recent)[order]][: max(0, room)]
        keep[fresh] = True
        return keep

    def __repr__(self) -> str:
        return f"BurstyModel(B={self.burst}, W={self.window}, lambda={self.lam})"
