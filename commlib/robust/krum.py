"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine learning with adversaries:
Byzantine tolerant gradient descent", NeurIPS 2017; Multi-Krum from El Mhamdi, Guerraoui, Rouault, ICML 2018).

Both depend on the inputs only through the pairwise squared distances
``Dᵢⱼ = ‖xᵢ − xⱼ‖²``, which the Gram matrix gives: ``Dᵢⱼ = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GramAggregator, check_count, sqdist_from_gram

__all__ = ["Krum", "MultiKrum", "krum_scores"]


def krum_scores(D: Tensor, neighbours: int) -> Tensor:
    """Krum score of each row: the sum of its ``neighbours`` smallest squared distances to the other rows."""
    n = D.shape[0]
    off = D + torch.diag(torch.full((n,), float("inf"), dtype=D.dtype, device=D.device))
    return off.sort(dim=1).values[:, :neighbours].sum(dim=1)


def lowest(scores: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` lowest scores (ties to the lower index)."""
    return scores.argsort(stable=True)[:count]


class Krum(GramAggregator):
    """Krum: (1) score each input by the sum of squared distances to its n − f − 2 nearest other inputs,
    (2) return the input with the lowest score (ties to the lower index). Needs n > 2f + 2.

    With n − f − 2 = 1 neighbour, two mutual nearest neighbours always tie, so the
    choice between them goes by index (the only case where the order of generic
    inputs matters)."""

    name = "krum"

    def __init__(self, f: int) -> None:
        self.f = check_count(f, "Krum f")

    def min_workers(self, f: int) -> int:
        return 2 * f + 3

    def weights_from_distances(self, D: Tensor, f: int | None = None) -> Tensor:
        """One-hot weights (fp64) on the selected row, from the n × n squared-distance matrix."""
        f = self.f if f is None else f
        n = D.shape[0]
        w = torch.zeros(n, dtype=torch.float64, device=D.device)
        w[lowest(krum_scores(D.double(), n - f - 2), 1)] = 1.0
        return w

    def _weights(self, G: Tensor, f: int) -> Tensor:
        return self.weights_from_distances(sqdist_from_gram(G), f)


class MultiKrum(GramAggregator):
    """Multi-Krum: (1) Krum scores as in :class:`Krum`, (2) the mean of the ``m`` inputs with the lowest scores
    (default m = n − f, as in ByzFL). Needs n > 2f + 2."""

    name = "multi_krum"

    def __init__(self, f: int, m: int | None = None) -> None:
        self.f = check_count(f, "MultiKrum f")
        self.m = None if m is None else check_count(m, "MultiKrum m", minimum=1)

    def min_workers(self, f: int) -> int:
        return max(2 * f + 3, self.m or 1)

    def weights_from_distances(self, D: Tensor, f: int | None = None) -> Tensor:
        """Weights (fp64) 1/m on the m selected rows, from the n × n squared-distance matrix."""
        f = self.f if f is None else f
        n = D.shape[0]
        m = min(self.m or n - f, n)
        w = torch.zeros(n, dtype=torch.float64, device=D.device)
        w[lowest(krum_scores(D.double(), n - f - 2), m)] = 1.0 / m
        return w

    def _weights(self, G: Tensor, f: int) -> Tensor:
        return self.weights_from_distances(sqdist_from_gram(G), f)

    def __repr__(self) -> str:
        return f"MultiKrum(f={self.f}, m={self.m})"
