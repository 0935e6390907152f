"""Flag Aggregator (Almasi, Mishra, Shafique, Gupta, Cheng, "Flag Aggregator: scalable distributed training
under failures and augmented losses using convex optimization", ICLR 2025; arXiv 2302.05865), in Gram form.

Notation: n inputs xᵢ, unit vectors x̂ᵢ = xᵢ/‖xᵢ‖, X̂ = [x̂₁ … x̂ₙ] (d × n),
K = X̂ᵀX̂ (n × n), a subspace Y (d × m, YᵀY = I). FA fits Y by minimizing

    Σᵢ √(1 − ‖Yᵀx̂ᵢ‖²) + c² Σ_{i≠j} √|1 − ‖Yᵀ(x̂ᵢ − x̂ⱼ)‖²|,   c = λ / (n(n − 1)),

with iteratively reweighted least squares: given weights, Y is the top-m left
singular subspace of the stacked columns √wᵢ·x̂ᵢ and c·√pᵢⱼ·(x̂ᵢ − x̂ⱼ); the
output is ``(1/m) Y Yᵀ Σᵢ x̂ᵢ``.

**Gram form.** Every stacked column lies in span{x̂ᵢ}, so the stacked matrix A
satisfies A Aᵀ = X̂ M X̂ᵀ with M = diag(w) + 2c²·L(P), L(P) the Laplacian of the
pair weights. With S = M^½ and eigh(S K S) = U Λ Uᵀ, the subspace is
Y = X̂ E with E = S U_m Λ_m^(−½) (n × m), and Yᵀx̂ᵢ is column i of EᵀK. So after
one O(d·n²) Gram product, every IRLS step costs O(n³) for any λ (the direct form
needs an SVD of a d × n matrix, or d × n² when λ > 0), and the output is a
linear combination of the inputs, ``Σᵢ wᵢ xᵢ`` with
``w = E Eᵀ K 𝟙 / (m·‖x‖)`` — a weighted all-reduce in a sharded runtime.

IRLS (ε = 1e−7):

1. Start with unit weights w = 𝟙, P = 𝟙𝟙ᵀ − I (deterministic; the first step
   is the *flag mean*, which is what the authors' code computes: its random
   start in ℝᵈ gives ‖Y₀ᵀx̂ᵢ‖² ≈ m/d ≈ 0, i.e. unit weights).
2. Solve for E as above, keeping the m top eigenpairs with eigenvalues above a
   rank tolerance (fewer when the inputs span fewer directions; the output still
   divides by the configured m).
3. Objective (data term) ``Σᵢ √max(0, 1 − ‖zᵢ‖²)`` with zᵢ = (EᵀK)ᵢ; if it did
   not decrease, keep the previous E and stop; stop also when it is ≤ tol or
   decreased by ≤ tol.
4. New weights ``wᵢ = (|1 − ‖zᵢ‖²| + ε)^(−½)``, ``pᵢⱼ = (|1 − ‖zᵢ − zⱼ‖²| + ε)^(−½)``;
   go to 2, at most ``max_iter`` solves in all (``max_iter=1`` is the flag mean).

Properties: f-agnostic; invariant to a positive rescaling of each input; the
output has norm ≤ n/m (the gradients' norms are discarded) unless ``rescale``
multiplies it by m·median‖xᵢ‖/n, so that n equal inputs return that input.
Zero, non-finite and overflowing rows (Gram diagonal 0 or not finite) get
weight 0 and the rest is aggregated as if they were absent.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GramAggregator, check_count, check_gram, check_positive

__all__ = ["FlagAggregator", "flag_weights"]

_EPS = 1e-7


def _check(m: object, lam: object, max_iter: object, tol: object) -> tuple[int, float, int, float]:
    m = check_count(m, "Flag m", minimum=1)
    max_iter = check_count(max_iter, "Flag max_iter", minimum=1)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= lam < float("inf"):
        raise ValueError(f"Flag lam must be a finite number >= 0, got {lam!r}")
    return m, float(lam), max_iter, check_positive(tol, "Flag tol")


def _median(v: Tensor) -> float:
    """The median (the mean of the two middle values when the length is even)."""
    s = v.sort().values
    k = s.numel()
    return float(s[k // 2] if k % 2 else 0.5 * (s[k // 2 - 1] + s[k // 2]))


def _psd_sqrt(M: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh(M)
    return (vecs * vals.clamp_min(0.0).sqrt()) @ vecs.T


def _subspace(K: Tensor, w: Tensor, pair_scale: float, P: Tensor | None, m: int, rank_tol: float) -> Tensor:
    """E (n × r, r ≤ m) with Y = X̂E the top-r subspace of the weighted stack (step 2 of the IRLS)."""
    if P is None:
        S = torch.diag(w.sqrt())
    else:
        laplacian = torch.diag(P.sum(dim=1)) - P
        S = _psd_sqrt(torch.diag(w) + pair_scale * laplacian)
    vals, U = torch.linalg.eigh(S @ K @ S)
    vals, U = vals.flip(0), U.flip(1)
    r = min(m, int((vals > rank_tol * vals[0]).sum()))
    return (S @ U[:, :r]) / vals[:r].sqrt()


def flag_weights(G: Tensor, m: int = 1, lam: float = 0.0, max_iter: int = 10, tol: float = 1e-10,
                 rescale: bool = False) -> Tensor:
    """Row weights (fp64, length n) of the Flag Aggregator from the inputs' Gram matrix ``G = X Xᵀ``.

    The output is ``Σᵢ wᵢ xᵢ``. Row norms are read from the diagonal of G; rows
    with ``Gᵢᵢ`` zero or not finite get weight 0. In a sharded runtime, G is the
    sum of the per-shard Grams. See the module docstring for the algorithm.
    """
    G = check_gram(G)
    m, lam, max_iter, tol = _check(m, lam, max_iter, tol)
    n = G.shape[0]
    weights = torch.zeros(n, dtype=torch.float64, device=G.device)
    diag = G.diagonal()
    kept = torch.nonzero(torch.isfinite(diag) & (diag > 0)).flatten()
    k = kept.numel()
    if k == 0:
        return weights
    block = G[kept][:, kept].double()
    norms = block.diagonal().sqrt()
    K = (block / norms[:, None] / norms[None, :]).clamp_(-1.0, 1.0)
    K = 0.5 * (K + K.T)
    rank_tol = 10.0 * k * torch.finfo(G.dtype).eps
    pair_scale = 2.0 * (lam / (k * (k - 1))) ** 2 if lam > 0 and k > 1 else 0.0

    w = torch.ones(k, dtype=torch.float64, device=G.device)
    P = (torch.ones(k, k, dtype=torch.float64, device=G.device) - torch.eye(k, dtype=torch.float64, device=G.device)
         if pair_scale else None)
    best, best_objective = None, float("inf")
    for _ in range(max_iter):
        E = _subspace(K, w, pair_scale, P, m, rank_tol)
        Z = E.T @ K
        sq = (Z * Z).sum(dim=0)
        objective = float((1.0 - sq).clamp_min(0.0).sqrt().sum())
        if objective >= best_objective:
            break
        decrease = best_objective - objective
        best, best_objective = E, objective
        if objective <= tol or decrease <= tol:
            break
        w = ((1.0 - sq).abs() + _EPS).rsqrt()
        if P is not None:
            pair_sq = sq[:, None] + sq[None, :] - 2.0 * (Z.T @ Z)
            P = ((1.0 - pair_sq).abs() + _EPS).rsqrt()
            P.fill_diagonal_(0.0)
    coef = best @ (best.T @ K.sum(dim=1)) / m
    if rescale:
        coef = coef * (m * _median(norms) / k)
    weights[kept] = coef / norms
    return weights


class FlagAggregator(GramAggregator):
    """The Flag Aggregator as a rule: ``FlagAggregator(m, lam, max_iter, tol, rescale)(X) -> Tensor[d]``.

    ``m`` is the subspace size (the authors use about n/2: 8 for n = 15), ``lam``
    the pair regularizer λ (authors' default 0), ``max_iter`` the IRLS solves
    (1 = flag mean, as the authors' code runs), ``tol`` the objective tolerance,
    ``rescale`` see :func:`flag_weights`. f-agnostic; accepts any n ≥ 1.
    """

    name = "flag"

    def __init__(self, m: int = 1, lam: float = 0.0, max_iter: int = 10, tol: float = 1e-10,
                 rescale: bool = False) -> None:
        self.m, self.lam, self.max_iter, self.tol = _check(m, lam, max_iter, tol)
        self.rescale = bool(rescale)

    def weights_from_gram(self, G: Tensor) -> Tensor:
        """Row weights (fp64) from the Gram matrix; see :func:`flag_weights`."""
        return flag_weights(G, self.m, self.lam, self.max_iter, self.tol, self.rescale)

    def __repr__(self) -> str:
        return (f"FlagAggregator(m={self.m}, lam={self.lam}, max_iter={self.max_iter}, tol={self.tol}, "
                f"rescale={self.rescale})")
