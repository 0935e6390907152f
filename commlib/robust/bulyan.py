"""Bulyan (El Mhamdi, Guerraoui, Rouault, "The hidden vulnerability of distributed learning in Byzantium",
ICML 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Aggregator, check_count, gram, sqdist_from_gram
from .coordinatewise import closest_mean, columnwise, median_of_sorted, sort_columns
from .krum import krum_scores, lowest

__all__ = ["Bulyan"]


class Bulyan(Aggregator):
    """Bulyan: Krum-style selection, then a coordinate-wise trimmed average around the median.

    1. Selection (iterated Krum): θ = n − 2f times, score every remaining input by
       the sum of squared distances to its r − f − 2 nearest remaining
       inputs (r = how many remain), move the best (ties to the lower index) to
       the selected set. The neighbour count r − f − 2 is clamped to [2, r − 1]:
       with one neighbour, two mutual nearest neighbours always tie, and the
       choice would depend on the order of the inputs. Scores are recomputed on the remaining set every time.
    2. Per coordinate, of the θ selected values take the β = θ − 2f closest to
       their median (equally close: lower value first) and average them.

    Needs n ≥ 4f + 3.
    """

    name = "bulyan"

    def __init__(self, f: int) -> None:
        self.f = check_count(f, "Bulyan f")

    def min_workers(self, f: int) -> int:
        return 4 * f + 3

    def select(self, D: Tensor, f: int | None = None) -> list[int]:
        """Indices (ascending) of the θ = n − 2f inputs chosen by iterated Krum from finite squared distances D."""
        f = self.f if f is None else f
        remaining = list(range(D.shape[0]))
        chosen: list[int] = []
        for _ in range(D.shape[0] - 2 * f):
            idx = torch.tensor(remaining, device=D.device)
            scores = krum_scores(D[idx][:, idx], min(max(len(remaining) - f - 2, 2), len(remaining) - 1))
            chosen.append(remaining.pop(int(lowest(scores, 1))))
        return sorted(chosen)

    def _aggregate(self, X: Tensor, f: int) -> Tensor:
        selected = X[self.select(sqdist_from_gram(gram(X)), f)]
        beta = selected.shape[0] - 2 * f

        def one(c: Tensor) -> Tensor:
            s = sort_columns(c)
            return closest_mean(s, median_of_sorted(s), beta)

        return columnwise(selected, one)
