"""Geometric median by smoothed Weiszfeld iterations (Pillutla, Kakade, Harchaoui, "Robust aggregation for
federated learning" (RFA), IEEE TSP 2022; Weiszfeld 1937)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Aggregator, GramAggregator, check_count, check_positive, combine, row_distances, sqdist_from_gram
from .coordinatewise import CoordinateMedian

__all__ = ["GeometricMedian"]


class GeometricMedian(GramAggregator):
    """Smoothed geometric median: the minimizer of Σᵢ max(ν, ‖z − xᵢ‖)-smoothed distances, by Weiszfeld steps.

    Step: ``βᵢ = 1 / max(ν, ‖xᵢ − z‖)``, ``z ← Σᵢ βᵢ xᵢ / Σᵢ βᵢ``; repeat until the
    step is at most ``tol`` (relative) or ``max_iter`` steps ran. On vectors the
    tolerance is floored at 4 units of the dtype's precision (fp32: 4.8e−7): smaller
    steps are rounding noise, and the loop would otherwise always run to ``max_iter``. The smoothing ν
    bounds the weights (the iteration is well defined at a data point); the fixed
    point is within about ν·f/(n − f) of the exact geometric median. Breakdown point ½.

    Two paths reach the same fixed point (the smoothed objective is strictly convex):

    * ``__call__(X)`` iterates on vectors, starting at the coordinate-wise median,
      and stops when ``‖Δz‖ ≤ max(tol, 4ε)·max(‖z‖, ν)``;
    * ``weights_from_gram(G)`` iterates on the coefficients c of ``z = Σ cᵢ xᵢ``
      (distances from the Gram matrix: ``‖xᵢ − z‖² = Gᵢᵢ − 2(Gc)ᵢ + cᵀGc``),
      and stops when ``‖Δc‖₁ ≤ tol``. It returns the medoid itself when Kuhn's
      condition says that data point is the median (``‖Σᵢ uᵢ‖ ≤ η``, unit vectors
      towards the other rows, η rows equal to it: several honest workers sending
      the same vector), and otherwise starts at the centroid. Not at the medoid:
      there the distance to itself is 0 (weight 1/ν), a step moves z by about ν,
      and ``Gᵢᵢ − 2(Gc)ᵢ + cᵀGc`` cannot resolve so small a distance (it cancels
      to the rounding noise of ``G``), so the iteration would stay at the medoid.

    ByzFL's defaults (ν = 0.1, 3 steps from 0) stop far from the median; these
    defaults run to convergence.
    """

    name = "geometric_median"

    def __init__(self, nu: float = 1e-6, tol: float = 1e-8, max_iter: int = 1000) -> None:
        self.nu = check_positive(nu, "GeometricMedian nu")
        self.tol = check_positive(tol, "GeometricMedian tol")
        self.max_iter = check_count(max_iter, "GeometricMedian max_iter", minimum=1)

    __call__ = Aggregator.__call__

    def _aggregate(self, X: Tensor, f: int) -> Tensor:
        z = CoordinateMedian()._aggregate(X, 0)
        tol = max(self.tol, 4.0 * torch.finfo(X.dtype).eps)
        for _ in range(self.max_iter):
            beta = 1.0 / row_distances(X, z).clamp_min(self.nu)
            new = combine(X, beta / beta.sum())
            step = float(torch.linalg.vector_norm(new - z))
            z = new
            if step <= tol * max(float(torch.linalg.vector_norm(z)), self.nu):
                break
        return z

    def _weights(self, G: Tensor, f: int) -> Tensor:
        sq = sqdist_from_gram(G)
        medoid = int(sq.sqrt().sum(dim=1).argmin())
        if _data_point_is_median(sq, medoid):
            c = torch.zeros(G.shape[0], dtype=torch.float64, device=G.device)
            c[medoid] = 1.0
            return c
        diag = G.diagonal()
        c = torch.full((G.shape[0],), 1.0 / G.shape[0], dtype=torch.float64, device=G.device)
        for _ in range(self.max_iter):
            gc = G @ c
            dist = (diag - 2.0 * gc + c @ gc).clamp_min(0.0).sqrt()
            beta = 1.0 / dist.clamp_min(self.nu)
            new = beta / beta.sum()
            step = float((new - c).abs().sum())
            c = new
            if step <= self.tol:
                break
        return c

    def __repr__(self) -> str:
        return f"GeometricMedian(nu={self.nu}, tol={self.tol}, max_iter={self.max_iter})"


def _data_point_is_median(sq: Tensor, k: int) -> bool:
    """Whether ``x_k`` minimizes Σᵢ ‖z − xᵢ‖, from the squared distances ``sq`` (Kuhn's condition).

    With ``η`` rows equal to ``x_k`` (distance exactly 0, ``x_k`` included) and unit
    vectors ``uᵢ = (xᵢ − x_k)/‖xᵢ − x_k‖`` towards the others, ``x_k`` is a
    geometric median iff ``‖Σᵢ uᵢ‖ ≤ η``. ``uᵢ·uⱼ = (sq_ki + sq_kj − sq_ij)/(2 d_ki d_kj)``
    (law of cosines), so distances alone decide.
    """
    d = sq[k].sqrt()
    others = d > 0
    eta = int((~others).sum())
    if not bool(others.any()):
        return True
    w = torch.where(others, 1.0 / d.clamp_min(torch.finfo(d.dtype).tiny), 0.0)
    cosines = (sq[k][:, None] + sq[k][None, :] - sq) / 2.0
    return float(w @ cosines @ w) <= eta**2
