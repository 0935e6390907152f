"""Worker response times per round: parametric models and replayed traces, both as a :class:`DelayTrace`.

A trace gives, for round r and worker i at normalized load L,

    d[r, i](L) = base[r, i] + slope[r, i] · (L − reference_load),

the load scaling of Krishnan et al. (ICLR 2023, §experiments): they probed AWS Lambda
workers, fitted duration against load by linear regression (slope ≈ 2.2 s per full job
on MNIST) and simulated a scheme of load L as d_probe(L = 0) + L·slope.

* :class:`ParametricDelays` — base = overhead·(1 + E_o) and slope = compute·(1 + E_c),
  with E_o, E_c i.i.d. per (round, worker) from a :class:`Noise` (none, exponential or
  lognormal), seeded; with exponential noise the overhead is a shifted exponential.
* :func:`load_trace` — recorded durations (rounds × workers, seconds) from a ``.csv`` or
  ``.npy`` file, replayed as the base at the load they were recorded at.
* :meth:`DelayTrace.from_pattern` — a given straggler pattern as durations (``fast`` for
  everyone, ``slow`` for stragglers), so a pattern can drive the timing simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...rng import mixed_seed
from ..validation import check_int
from .models import as_pattern

__all__ = ["Noise", "ParametricDelays", "DelayTrace", "load_trace"]

NOISE_KINDS = ("none", "exponential", "lognormal")


def _positive(x: object, name: str, allow_zero: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) \
            or (x < 0 if allow_zero else x <= 0):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {x!r}")
    return float(x)


@dataclass(frozen=True)
class Noise:
    """The excess E ≥ 0 of a multiplicative factor 1 + E.

    ``kind``: ``"none"`` (E = 0), ``"exponential"`` (E ~ Exp with mean ``scale``) or
    ``"lognormal"`` (E = ``scale``·exp(σZ), Z ~ N(0, 1): median ``scale``, heavy right tail).
    """

    kind: str = "none"
    scale: float = 0.0
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {self.kind!r}")
        _positive(self.scale, "noise scale", allow_zero=True)
        _positive(self.sigma, "noise sigma")

    def sample(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        """Draw E with the given shape."""
        if self.kind == "none" or self.scale == 0:
            return np.zeros(shape)
        if self.kind == "exponential":
            return rng.exponential(self.scale, shape)
        return self.scale * np.exp(self.sigma * rng.standard_normal(shape))


@dataclass(frozen=True)
class DelayTrace:
    """Durations d[r, i](L) = base[r, i] + slope[r, i]·(L − reference_load), clipped at 0 (seconds)."""

    base: np.ndarray
    slope: np.ndarray
    reference_load: float = 0.0

    def __post_init__(self) -> None:
        base = np.asarray(self.base, dtype=np.float64)
        if base.ndim != 2 or base.size == 0:
            raise ValueError(f"delay trace must be a non-empty 2-D array (rounds × workers), got shape {base.shape}")
        slope = np.broadcast_to(np.asarray(self.slope, dtype=np.float64), base.shape)
        for name, arr in (("durations", base), ("slope", slope)):
            if not np.isfinite(arr).all() or (arr < 0).any():
                raise ValueError(f"delay trace {name} must be finite and >= 0")
        _positive(self.reference_load, "reference_load", allow_zero=True)
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "slope", slope)

    @property
    def rounds(self) -> int:
        return self.base.shape[0]

    @property
    def n(self) -> int:
        return self.base.shape[1]

    def durations(self, r: int, load: np.ndarray) -> np.ndarray:
        """Every worker's duration in round ``r`` when worker i carries normalized load ``load[i]``."""
        return np.maximum(self.base[r] + self.slope[r] * (load - self.reference_load), 0.0)

    def segment(self, start: int, rounds: int) -> DelayTrace:
        """Rounds ``start .. start + rounds − 1`` as a trace of their own."""
        start, rounds = check_int(start, "start", 0), check_int(rounds, "rounds", 1)
        if start + rounds > self.rounds:
            raise ValueError(f"segment [{start}, {start + rounds}) exceeds the trace's {self.rounds} rounds")
        sl = slice(start, start + rounds)
        return DelayTrace(self.base[sl], self.slope[sl], self.reference_load)

    @classmethod
    def from_pattern(cls, pattern: object, fast: float = 1.0, slow: float = 3.0) -> DelayTrace:
        """Durations ``fast`` for everyone and ``slow`` where ``pattern`` is True, independent of load.

        With the cutoff (1 + μ)·fastest and fast·(1 + μ) < slow, the stragglers found are exactly the pattern's
        (in every round with at least one non-straggler).
        """
        pat = as_pattern(pattern)
        fast, slow = _positive(fast, "fast"), _positive(slow, "slow")
        if slow <= fast:
            raise ValueError(f"slow ({slow}) must exceed fast ({fast})")
        return cls(np.where(pat, slow, fast), np.zeros(pat.shape))


@dataclass(frozen=True)
class ParametricDelays:
    """d = overhead·(1 + E_o) + compute·L·(1 + E_c), E_o ~ ``overhead_noise``, E_c ~ ``compute_noise``.

    ``overhead`` is the fixed per-round cost (invocation and network latency; ≈ 1.2 s on
    the paper's Lambda workers), ``compute`` the seconds one worker needs for a whole job
    (≈ 2.2 s there).
    """

    overhead: float = 1.2
    compute: float = 2.2
    overhead_noise: Noise = Noise()
    compute_noise: Noise = Noise()

    def __post_init__(self) -> None:
        _positive(self.overhead, "overhead", allow_zero=True)
        _positive(self.compute, "compute", allow_zero=True)

    def trace(self, rounds: int, n: int, seed: int = 0) -> DelayTrace:
        """A seeded (rounds × n) trace of this model."""
        rounds, n, seed = check_int(rounds, "rounds", 1), check_int(n, "n", 1), check_int(seed, "seed", 0)
        rng = np.random.default_rng(mixed_seed(seed, 0, "stragglers/delays"))
        base = self.overhead * (1.0 + self.overhead_noise.sample(rng, (rounds, n)))
        slope = self.compute * (1.0 + self.compute_noise.sample(rng, (rounds, n)))
        return DelayTrace(base, slope)


def load_trace(path: str | Path, *, reference_load: float = 0.0, slope: float = 0.0) -> DelayTrace:
    """Recorded durations (rounds × workers, seconds) from ``.csv`` (comma-separated, ``#`` comments) or ``.npy``.

    The file's values are the base at ``reference_load``; ``slope`` (seconds per unit load)
    rescales them to other loads, as the paper does with its probed traces.
    """
    path = Path(path)
    if path.suffix == ".npy":
        data = np.load(path, allow_pickle=False)
    elif path.suffix == ".csv":
        data = np.loadtxt(path, delimiter=",", comments="#", ndmin=2)
    else:
        raise ValueError(f"delay trace {path}: expected a .csv or .npy file")
    if not np.issubdtype(np.asarray(data).dtype, np.number):
        raise ValueError(f"delay trace {path}: expected numbers, got dtype {np.asarray(data).dtype}")
    return DelayTrace(np.asarray(data, dtype=np.float64), np.full(np.shape(data), _positive(
        slope, "slope", allow_zero=True)), reference_load)
