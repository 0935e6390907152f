"""Straggler patterns (rounds × workers booleans): random, bursty, model-conforming and adversarial.

All randomness comes from ``numpy.random.default_rng(mixed_seed(seed, 0, key))``, never
from a global generator, so a pattern depends only on its arguments.

* :func:`iid_pattern` — every worker straggles in every round with probability p.
* :func:`gilbert_elliott_pattern` — one two-state Markov chain per worker (Gilbert 1960,
  Elliott 1963): good→bad with probability ``p_gb``, bad→good with ``p_bg``; the worker
  straggles while bad (mean burst 1/p_bg, stationary straggle rate p_gb/(p_gb + p_bg)).
* :func:`conforming` — a pattern thinned round by round, greedily by worker id, until
  it obeys a :class:`~.models.StragglerModel` (stragglers that would break it are dropped).
* :class:`BurstyAdversary` — worst cases of the (B, W, λ) model: each round it straggles
  as many workers as the model admits, extending open bursts to length B first, then
  re-using workers already counted in the window, then new workers, with an optional
  priority (e.g. the workers a scheme most needs this round).
"""

from __future__ import annotations

import numpy as np

from ...rng import mixed_seed
from ..validation import check_int
from .models import BurstyModel, StragglerModel, as_pattern

__all__ = ["iid_pattern", "gilbert_elliott_pattern", "conforming", "BurstyAdversary", "adversarial_pattern",
           "check_probability"]


def check_probability(p: object, name: str) -> float:
    """``p`` as a float in [0, 1]; ``ValueError`` otherwise."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng(mixed_seed(check_int(seed, "seed", 0), 0, key))


def iid_pattern(rounds: int, n: int, p: float, seed: int = 0) -> np.ndarray:
    """Each worker straggles in each round independently with probability ``p``."""
    rounds, n, p = check_int(rounds, "rounds", 1), check_int(n, "n", 1), check_probability(p, "p")
    return _rng(seed, "stragglers/iid").random((rounds, n)) < p


def gilbert_elliott_pattern(rounds: int, n: int, p_gb: float, p_bg: float, seed: int = 0) -> np.ndarray:
    """Per-worker Gilbert–Elliott chains, started from the stationary distribution; True while bad."""
    rounds, n = check_int(rounds, "rounds", 1), check_int(n, "n", 1)
    p_gb, p_bg = check_probability(p_gb, "p_gb"), check_probability(p_bg, "p_bg")
    if p_gb + p_bg == 0:
        raise ValueError("p_gb + p_bg must be > 0 (otherwise the chain never moves)")
    u = _rng(seed, "stragglers/gilbert-elliott").random((rounds, n))
    out = np.empty((rounds, n), dtype=bool)
    bad = u[0] < p_gb / (p_gb + p_bg)
    out[0] = bad
    for r in range(1, rounds):
        bad = np.where(bad, u[r] >= p_bg, u[r] < p_gb)
        out[r] = bad
    return out


def conforming(pattern: object, model: StragglerModel) -> np.ndarray:
    """``pattern`` thinned round by round (lowest worker ids kept first) so that it obeys ``model``."""
    pat = as_pattern(pattern)
    out = np.zeros_like(pat)
    for r in range(pat.shape[0]):
        out[r] = model.thin(out[max(0, r - model.memory): r], pat[r])
    return out


class BurstyAdversary:
    """Online generator of maximal (B, W, λ)-conforming straggler sets.

    :meth:`next` returns the next round's set given the rounds so far. Workers are tried in
    this order, each joining only while :meth:`BurstyModel.thin` admits it: (1) last round's
    stragglers (their bursts grow up to length B), (2) the ``prefer`` workers, (3) workers
    already straggling in the window (free under λ), (4) everyone else; ties in a seeded
    random order. The result is maximal: no further worker can be added.
    """

    def __init__(self, n: int, model: BurstyModel, seed: int = 0) -> None:
        self.n = check_int(n, "n", 1)
        if not isinstance(model, BurstyModel):
            raise ValueError(f"BurstyAdversary needs a BurstyModel, got {type(model).__name__}")
        self.model = model
        self.rng = _rng(seed, "stragglers/adversary")

    def next(self, history: object, prefer: object | None = None) -> np.ndarray:
        """The next round's straggler set after ``history`` (rounds × n); ``prefer``: optional bool mask."""
        hist = np.asarray(history)
        hist = np.zeros((0, self.n), bool) if hist.size == 0 else as_pattern(hist, self.n)[-self.model.memory:]
        rank = self.rng.permutation(self.n).astype(float)
        if prefer is not None:
            pref = np.asarray(prefer)
            if pref.shape != (self.n,) or pref.dtype != np.bool_:
                raise ValueError(f"prefer must be a bool array of shape ({self.n},), got {pref.dtype} {pref.shape}")
            rank -= 2 * self.n * pref
        if len(hist):
            rank -= 4 * self.n * hist[-1] + self.n * hist.any(axis=0)
        order = np.argsort(rank, kind="stable")
        return self.model.thin(hist, np.ones(self.n, dtype=bool), order)


def adversarial_pattern(rounds: int, n: int, model: BurstyModel, seed: int = 0) -> np.ndarray:
    """``rounds`` rounds of :class:`BurstyAdversary` without a preference: a saturating conforming pattern."""
    rounds = check_int(rounds, "rounds", 1)
    adversary = BurstyAdversary(n, model, seed)
    out = np.zeros((rounds, n), dtype=bool)
    for r in range(rounds):
        out[r] = adversary.next(out[max(0, r - model.memory): r])
    return out
