"""Coordinate-wise rules: mean, median, trimmed mean, Meamed and Phocas.

Each coordinate j is aggregated from the n values ``x₁ⱼ … xₙⱼ`` alone, so the
rules shard over coordinates (an all-to-all gives each rank a slice of every
input), and every reduction over the n values adds them in row order
(:func:`~.base.row_sum`), so a slice gets the bits of the whole matrix.
Columns are processed in chunks, so the temporary memory stays O(n · chunk)
whatever d is. Every rule first sorts a coordinate's values; rules
that then rank them by distance to a centre use a stable sort, so equally
distant values are taken lower value first and the result does not depend on
the order of the inputs.

References: Yin, Chen, Ramchandran, Bartlett, "Byzantine-robust distributed
learning: towards optimal statistical rates", ICML 2018 (median, trimmed mean);
Xie, Koyejo, Gupta, "Phocas: dimensional Byzantine-resilient stochastic
gradient descent", 2018, and "Generalized Byzantine-tolerant SGD", 2018
(Meamed, Phocas).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .base import BLOCK_ELEMENTS, Aggregator, check_count, row_mean, row_sum

__all__ = ["CoordinateMedian", "Mean", "Meamed", "Phocas", "TrimmedMean", "columnwise", "sort_columns"]


def columnwise(X: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``fn`` ((n, c) → (c,)) to column chunks of ``X`` and concatenate: bounded temporary memory."""
    n, d = X.shape
    chunk = max(1, BLOCK_ELEMENTS // n)
    if chunk >= d:
        return fn(X)
    out = torch.empty(d, dtype=X.dtype, device=X.device)
    for start in range(0, d, chunk):
        out[start : start + chunk] = fn(X[:, start : start + chunk])
    return out


def _numpy_ok(c: Tensor) -> bool:
    return c.device.type == "cpu" and c.dtype in (torch.float32, torch.float64)


def sort_columns(c: Tensor) -> Tensor:
    """Each column of ``c`` sorted ascending (NumPy on CPU: torch's sort along a short dim is ~10× slower)."""
    if _numpy_ok(c):
        return torch.from_numpy(np.sort(c.T.contiguous().numpy(), axis=1)).T
    return c.sort(dim=0).values


def median_of_sorted(s: Tensor) -> Tensor:
    """Median of each column of the column-sorted ``s`` (the mean of the two middle values when n is even)."""
    n = s.shape[0]
    mid = n // 2
    return s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])


def trimmed_of_sorted(s: Tensor, f: int) -> Tensor:
    """Mean of each column of the column-sorted ``s`` without its f lowest and f highest values."""
    return row_mean(s[f : s.shape[0] - f])


def closest_mean(s: Tensor, centre: Tensor, keep: int) -> Tensor:
    """Mean of the ``keep`` values of each sorted column closest to ``centre`` (equally close: lower value first).

    In a sorted column those values form a window; it is found by dropping, n − keep
    times, whichever end of the window is farther from the centre (the upper end
    on a tie), then summed with a mask (no cumulative-sum cancellation).
    """
    n, c = s.shape
    lo = torch.zeros(1, c, dtype=torch.int64, device=s.device)
    hi = torch.full((1, c), n - 1, dtype=torch.int64, device=s.device)
    for _ in range(n - keep):
        drop_low = (centre - s.gather(0, lo)) > (s.gather(0, hi) - centre)
        lo = lo + drop_low.long()
        hi = hi - (~drop_low).long()
    rank = torch.arange(n, device=s.device)[:, None]
    inside = (rank >= lo) & (rank <= hi)
    return row_sum(torch.where(inside, s, torch.zeros((), dtype=s.dtype, device=s.device))).div_(keep)


class Mean(Aggregator):
    """The arithmetic mean ``(1/n) Σᵢ xᵢ`` (breakdown point 0: one input moves it anywhere)."""

    name = "mean"
    coordinatewise = True

    def _aggregate(self, X: Tensor, f: int) -> Tensor:
        return row_mean(X)


class CoordinateMedian(Aggregator):
    """Coordinate-wise median (Yin et al. 2018): per coordinate, sort the n values and take the middle one
    (the mean of the two middle ones when n is even). Breakdown point ½."""

    name = "median"
    coordinatewise = True

    def _aggregate(self, X: Tensor, f: int) -> Tensor:
        return columnwise(X, lambda c: median_of_sorted(sort_columns(c)))


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, sort the n values, drop the f lowest
    and the f highest, average the n − 2f left. Needs n > 2f."""

    name = "trimmed_mean"
    coordinatewise = True

    def __init__(self, f: int) -> None:
        self.f = check_count(f, "TrimmedMean f")

    def min_workers(self, f: int) -> int:
        return 2 * f + 1

    def _aggregate(self, X: Tensor, f: int) -> Tensor:
        return columnwise(X, lambda c: trimmed_of_sorted(sort_columns(c), f))


class Meamed(Aggregator):
    """Mean around the median (Xie et al. 2018): per coordinate, (1) the median m of the n values,
    (2) the n − f values closest to m, (3) their mean. Needs n > 2f."""

    name = "meamed"
    coordinatewise = True

    def __init__(self, f: int) -> None:
        self.f = check_count(f, "Meamed f")

    def min_workers(self, f: int) -> int:
        return 2 * f + 1

    def _aggregate(self, X: Tensor, f: int) -> Tensor:
        def one(c: Tensor) -> Tensor:
            s = sort_columns(c)
            return closest_mean(s, median_of_sorted(s), s.shape[0] - f)

        return columnwise(X, one)


class Phocas(Aggregator):
    """Phocas (Xie et al. 2018): per coordinate, (1) the f-trimmed mean t of the n values, (2) the n − f
    values closest to t, (3) their mean. Needs n > 2f."""

    name = "phocas"
    coordinatewise = True

    def __init__(self, f: int) -> None:
        self.f = check_count(f, "Phocas f")

    def min_workers(self, f: int) -> int:
        return 2 * f + 1

    def _aggregate(self, X: Tensor, f: int) -> Tensor:
        def one(c: Tensor) -> Tensor:
            s = sort_columns(c)
            return closest_mean(s, trimmed_of_sorted(s, f), s.shape[0] - f)

        return columnwise(X, one)
