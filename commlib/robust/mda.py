"""Minimum-diameter averaging (El Mhamdi, Guerraoui, Rouault, ICML 2018, after Rousseeuw's MVE estimator;
the (f, κ) analysis is Allouah et al., AISTATS 2023)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from .base import GramAggregator, check_count, sqdist_from_gram

__all__ = ["MDA"]

# Subsets whose k × k distance blocks are gathered at once (bounded temporary memory).
_CHUNK_ELEMENTS = 1 << 20


class MDA(GramAggregator):
    """MDA: (1) among all subsets of n − f inputs, find the one of minimum diameter (largest pairwise distance),
    (2) return its mean.

    Equal diameters are common (the same farthest pair survives in many subsets),
    so ties go to the subset with the smaller sum of squared pairwise distances,
    which keeps the rule independent of the order of the inputs (a remaining tie
    goes to the lexicographically first subset).

    Enumerates C(n, f) subsets, so it is for small n: a call that would enumerate
    more than ``max_subsets`` raises ValueError. Needs n > 2f.
    """

    name = "mda"

    def __init__(self, f: int, max_subsets: int = 100_000) -> None:
        self.f = check_count(f, "MDA f")
        self.max_subsets = check_count(max_subsets, "MDA max_subsets", minimum=1)

    def min_workers(self, f: int) -> int:
        return 2 * f + 1

    def check_workers(self, n: int) -> None:
        super().check_workers(n)
        count = math.comb(n, self.f)
        if count > self.max_subsets:
            raise ValueError(f"MDA with n={n}, f={self.f} would enumerate C(n, f) = {count} subsets "
                             f"(max_subsets={self.max_subsets}); use a smaller n or raise max_subsets")

    def weights_from_distances(self, D: Tensor, f: int | None = None) -> Tensor:
        """Weights (fp64) 1/(n − f) on the minimum-diameter subset, from finite n × n squared distances D."""
        f = self.f if f is None else f
        n = D.shape[0]
        k = n - f
        D = D.double()
        chunk = max(1, _CHUNK_ELEMENTS // (k * k))
        subsets = itertools.combinations(range(n), k)
        best, best_key = None, (float("inf"), float("inf"))
        while batch := list(itertools.islice(subsets, chunk)):
            idx = torch.tensor(batch, device=D.device)
            blocks = D[idx[:, :, None], idx[:, None, :]]
            diameters = blocks.amax(dim=(1, 2))
            spreads = blocks.sum(dim=(1, 2))
            spreads[diameters > diameters.min()] = float("inf")
            j = int(spreads.argmin())
            key = (float(diameters[j]), float(spreads[j]))
            if key < best_key:
                best, best_key = idx[j], key
        w = torch.zeros(n, dtype=torch.float64, device=D.device)
        w[best] = 1.0 / k
        return w

    def _weights(self, G: Tensor, f: int) -> Tensor:
        return self.weights_from_distances(sqdist_from_gram(G), f)

    def __repr__(self) -> str:
        return f"MDA(f={self.f})"
