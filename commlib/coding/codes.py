"""Gradient codes (Tandon, Lei, Dimakis, Karampatziakis, "Gradient Coding", ICML 2017).

A job's data is cut into ``units`` equal pieces with gradients g_1..g_U, and the full
gradient is g = Σ_u g_u. Worker i sends one coded vector c_i = Σ_u B[i,u]·g_u, where row
B[i] is non-zero only on the units worker i stores (its *support*). An (n, s) code lets
the master recover g from any n − s workers: for every received set I with |I| ≥ n − s
there is a vector a, zero outside I, with aᵀB = 1ᵀ, so Σ_{i∈I} a_i c_i = g.

Two constructions:

* :class:`FractionalRepetitionCode` — workers form ⌊n/(s+1)⌋ groups of consecutive
  workers (sizes differ by at most one when (s+1) ∤ n, each at least s+1); the data is cut
  into one unit per group and every worker of a group sends its group's unit with
  coefficient 1. Decoding picks one surviving worker per group: exact, integer
  coefficients. Load 1/⌊n/(s+1)⌋, which is (s+1)/n when (s+1) | n and slightly more
  otherwise.
* :class:`CyclicRepetitionCode` — Tandon et al.'s cyclic construction: worker i stores
  units i..i+s (mod n) and B's rows span the null space of a random s×n matrix H with
  H·1 = 0. Load (s+1)/n for every n; decoding solves B_Iᵀa = 1 by least squares in fp64.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from fractions import Fraction

import numpy as np

from ..errors import CommlibError
from ..rng import mixed_seed
from .validation import as_mask, check_int

__all__ = ["DecodingError", "GradientCode", "FractionalRepetitionCode", "CyclicRepetitionCode", "make_code",
           "CODE_KINDS", "RESIDUAL_TOLERANCE"]

RESIDUAL_TOLERANCE = 1e-6
"""A least-squares decode is rejected when ‖B_Iᵀa − 1‖∞ exceeds this."""

CODE_KINDS = ("frc", "crc")


class DecodingError(CommlibError):
    """The received results cannot reproduce the full gradient (too few, or numerically rejected)."""


class GradientCode(ABC):
    """An (n, s) gradient code over ``units`` equal data units; every worker's task covers ``task_units`` units."""

    kind: str

    def __init__(self, n: int, s: int) -> None:
        self.n = check_int(n, "n (workers)", 1)
        self.s = check_int(s, "s (tolerated stragglers)", 0, self.n - 1)
        self.encoding = self._build()
        self.units = self.encoding.shape[1]
        self._supports = [tuple(int(u) for u in np.flatnonzero(row)) for row in self.encoding]
        self.task_units = len(self._supports[0])

    @abstractmethod
    def _build(self) -> np.ndarray:
        """The n×units encoding matrix B in fp64."""

    @abstractmethod
    def _decodable(self, received: np.ndarray) -> bool:
        """:meth:`decodable` on a validated mask."""

    @abstractmethod
    def _coefficients(self, received: np.ndarray) -> np.ndarray:
        """Decoding vector a (length n, zero outside ``received``) for a decodable ``received``."""

    @property
    def load(self) -> Fraction:
        """Fraction of the data one worker processes: ``task_units / units``."""
        return Fraction(self.task_units, self.units)

    def support(self, worker: int) -> tuple[int, ...]:
        """The units worker ``worker`` computes on."""
        return self._supports[check_int(worker, "worker", 0, self.n - 1)]

    def coefficients(self, worker: int) -> tuple[float, ...]:
        """Worker ``worker``'s encoding coefficients, aligned with :meth:`support`."""
        return tuple(float(self.encoding[worker, u]) for u in self.support(worker))

    def decodable(self, received: object) -> bool:
        """Whether the results of the workers in the boolean mask ``received`` determine the full gradient."""
        return self._decodable(as_mask(received, self.n, "received"))

    def decode(self, received: object) -> np.ndarray:
        """Decoding vector a (fp64, length n, zero for workers not received) with aᵀB = 1ᵀ.

        Raises :class:`DecodingError` when ``received`` is not decodable.
        """
        mask = as_mask(received, self.n, "received")
        if not self._decodable(mask):
            raise DecodingError(f"{type(self).__name__}(n={self.n}, s={self.s}) cannot decode from "
                                f"{int(mask.sum())} results (missing workers {np.flatnonzero(~mask).tolist()})")
        return self._coefficients(mask)


class FractionalRepetitionCode(GradientCode):
    """Fractional repetition (Tandon et al. 2017, §3): ⌊n/(s+1)⌋ groups, one data unit per group.

    Steps: (1) g = ⌊n/(s+1)⌋ groups of consecutive workers, the first n mod g groups one
    worker larger; (2) unit j is group j's data, B[i, group(i)] = 1; (3) decode: a_i = 1
    for the lowest-numbered surviving worker of every group, 0 elsewhere. Decodable iff
    every group has a survivor, which holds for any s stragglers (and for many larger sets).
    """

    kind = "frc"

    def _build(self) -> np.ndarray:
        groups = self.n // (self.s + 1)
        base, extra = divmod(self.n, groups)
        sizes = [base + 1] * extra + [base] * (groups - extra)
        self.group = np.repeat(np.arange(groups), sizes)
        enc = np.zeros((self.n, groups))
        enc[np.arange(self.n), self.group] = 1.0
        return enc

    def _decodable(self, received: np.ndarray) -> bool:
        return bool(np.bincount(self.group[received], minlength=self.units).all())

    def _coefficients(self, received: np.ndarray) -> np.ndarray:
        a = np.zeros(self.n)
        survivors = np.flatnonzero(received)
        _, first = np.unique(self.group[survivors], return_index=True)
        a[survivors[first]] = 1.0
        return a


class CyclicRepetitionCode(GradientCode):
    """Cyclic repetition (Tandon et al. 2017, Algorithm 2): supports {i..i+s} mod n, rows in null(H).

    Steps: (1) H ∈ ℝ^{s×n} with i.i.d. N(0,1) columns 0..n−2 and last column −Σ of the
    others, so H·1 = 0 (seeded by ``seed``); (2) row i: B[i,i] = 1 and the s entries x on
    columns i+1..i+s (mod n) solve H[:, i+1..i+s]·x = −H[:, i], so B·Hᵀ = 0; (3) any n − s rows
    span null(H) ∋ 1 with probability one, so a received set is decodable iff |I| ≥ n − s;
    (4) decode: a_I = argmin ‖B_Iᵀa − 1‖₂ in fp64, rejected with :class:`DecodingError` when
    ‖B_Iᵀa − 1‖∞ > ``RESIDUAL_TOLERANCE``, and cached per received set (LRU of ``cache_size``).
    """

    kind = "crc"

    def __init__(self, n: int, s: int, seed: int = 0, cache_size: int = 1024) -> None:
        self.seed = check_int(seed, "seed", 0)
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_size = check_int(cache_size, "cache_size", 1)
        super().__init__(n, s)

    def _build(self) -> np.ndarray:
        n, s = self.n, self.s
        enc = np.eye(n)
        if s == 0:
            return enc
        rng = np.random.default_rng(mixed_seed(self.seed, 0, f"coding/crc/{n}/{s}"))
        h = np.empty((s, n))
        h[:, :-1] = rng.standard_normal((s, n - 1))
        h[:, -1] = -h[:, :-1].sum(axis=1)
        for i in range(n):
            cols = (i + 1 + np.arange(s)) % n
            enc[i, cols] = np.linalg.solve(h[:, cols], -h[:, i])
        return enc

    def _decodable(self, received: np.ndarray) -> bool:
        return int(received.sum()) >= self.n - self.s

    def _coefficients(self, received: np.ndarray) -> np.ndarray:
        key = np.packbits(received).tobytes()
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached.copy()
        rows = np.flatnonzero(received)
        b_t = self.encoding[rows].T
        sol, *_ = np.linalg.lstsq(b_t, np.ones(self.units), rcond=None)
        residual = float(np.abs(b_t @ sol - 1.0).max())
        if not residual <= RESIDUAL_TOLERANCE:
            raise DecodingError(f"cyclic code (n={self.n}, s={self.s}): least-squares residual {residual:.3g} "
                                f"exceeds {RESIDUAL_TOLERANCE:g} for received workers {rows.tolist()}")
        a = np.zeros(self.n)
        a[rows] = sol
        self._cache[key] = a
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return a.copy()


def make_code(kind: str, n: int, s: int, seed: int = 0) -> GradientCode:
    """An (n, s) code of kind ``"frc"`` (fractional repetition) or ``"crc"`` (cyclic repetition, seeded)."""
    if kind == "frc":
        return FractionalRepetitionCode(n, s)
    if kind == "crc":
        return CyclicRepetitionCode(n, s, seed=seed)
    raise ValueError(f"unknown code kind {kind!r}; expected one of {CODE_KINDS}")
