"""Pre-aggregators: maps from n inputs to n′ inputs, applied before a rule, and their composition.

Every pre-aggregator here is *linear given the Gram matrix*: its output is
``W X`` for an n′ × n matrix ``W`` that depends only on ``G = X Xᵀ`` (NNM), on
the norms (ARC, clipping) or on the step (bucketing). ``matrix_from_gram(G, step)``
returns ``W`` — a sharded runtime can chain pre-aggregators in Gram space
(``G ← W G Wᵀ``) and finish with a Gram-based rule (:meth:`Compose.weights_from_gram`).

Non-finite rows (Gram diagonal not finite) pass through NNM, ARC and clipping
unchanged, and make their bucket non-finite; the rule downstream then drops them
and counts them against its f. For NNM and ARC they count against the
pre-aggregator's f too.

References: Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by mixing: a recipe for optimal
Byzantine ML under heterogeneity", AISTATS 2023 (NNM); Allouah, Guerraoui, Gupta, Pinot, Rizk, "Boosting
robustness by clipping gradients in distributed learning", 2024 (ARC); Karimireddy, He, Jaggi, "Byzantine-robust
learning on heterogeneous datasets via bucketing", ICLR 2022 (bucketing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..rng import generator
from .base import (
    Aggregator,
    GramAggregator,
    check_count,
    check_gram,
    check_matrix,
    check_positive,
    finite_rows,
    gram,
    sqdist_from_gram,
)

__all__ = ["ARC", "NNM", "Bucketing", "Clipping", "Compose", "PreAggregator", "mix", "transform_gram"]


def mix(X: Tensor, W: Tensor) -> Tensor:
    """``W X`` where a zero entry of ``W`` never reads its row (``0 · inf`` never makes a NaN)."""
    finite = finite_rows(X)
    Wx = W.to(X.dtype)
    if bool(finite.all()):
        return Wx @ X
    out = Wx[:, finite] @ X[finite]
    for j in torch.nonzero(~finite).flatten().tolist():
        for i in torch.nonzero(Wx[:, j]).flatten().tolist():
            out[i] += Wx[i, j] * X[j]
    return out


def transform_gram(W: Tensor, G: Tensor) -> Tensor:
    """The Gram matrix of ``W X`` from that of ``X``: ``W G Wᵀ`` (fp64) on the outputs that draw only on rows
    with a finite squared norm; the other outputs get NaN rows and columns (a rule then drops them)."""
    valid = torch.isfinite(G.diagonal())
    ok = (W[:, ~valid] == 0).all(dim=1)
    Wv = W[ok][:, valid].double()
    out = torch.full((W.shape[0], W.shape[0]), float("nan"), dtype=torch.float64, device=G.device)
    idx = torch.nonzero(ok).flatten()
    out[idx[:, None], idx[None, :]] = Wv @ G[valid][:, valid].double() @ Wv.T
    return out


class PreAggregator:
    """Base: ``__call__(X, step=0) -> Tensor[n′, d]`` is ``mix(X, matrix_from_gram(stats, step))``.

    Per-row pre-aggregators implement ``_matrix(G, f) -> Tensor[k, k]`` on the
    finite block of the Gram matrix (k finite rows, f reduced by the others).
    ``needs_gram`` says whether the full Gram matrix is needed (else the diagonal
    of squared norms suffices, which costs O(n·d) instead of O(n²·d)).
    """

    name = "preaggregator"
    needs_gram = False
    f = 0

    def matrix_from_gram(self, G: Tensor, step: int = 0) -> Tensor:
        """The n′ × n matrix W (fp64) with output ``W X``; rows with a non-finite ``Gᵢᵢ`` map to themselves."""
        G = check_gram(G)
        n = G.shape[0]
        kept = torch.nonzero(torch.isfinite(G.diagonal())).flatten()
        W = torch.eye(n, dtype=torch.float64, device=G.device)
        if kept.numel():
            f = max(self.f - (n - kept.numel()), 0)
            W[kept[:, None], kept[None, :]] = self._matrix(G[kept][:, kept].double(), f)
        return W

    def _matrix(self, G: Tensor, f: int) -> Tensor:
        raise NotImplementedError

    def __call__(self, X: Tensor, step: int = 0) -> Tensor:
        X = check_matrix(X)
        stats = gram(X) if self.needs_gram else torch.diag(torch.linalg.vector_norm(X, dim=1).double() ** 2)
        return mix(X, self.matrix_from_gram(stats, step))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(f={self.f})"


class NNM(PreAggregator):
    """Nearest-neighbour mixing: replace each input by the mean of its n − f nearest inputs (itself included,
    ties to the lower index). Composed with an (f, κ)-robust rule F, F∘NNM is (f, O(κ·f/n))-robust."""

    name = "nnm"
    needs_gram = True

    def __init__(self, f: int) -> None:
        self.f = check_count(f, "NNM f")

    def _matrix(self, G: Tensor, f: int) -> Tensor:
        n = G.shape[0]
        keep = max(n - f, 1)
        nearest = sqdist_from_gram(G).argsort(dim=1, stable=True)[:, :keep]
        W = torch.zeros(n, n, dtype=torch.float64, device=G.device)
        W.scatter_(1, nearest, 1.0 / keep)
        return W


def _scales_to(norms: Tensor, limit: Tensor) -> Tensor:
    """Per-row factors ``min(1, limit/‖xᵢ‖)`` (1 for zero rows)."""
    return torch.where(norms > limit, limit / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.ones_like(norms))


class ARC(PreAggregator):
    """Adaptive robust clipping: with k = ⌊2(f/n)(n − f)⌋, scale the k inputs of largest norm down to the norm of
    the (k+1)-th largest (ties to the lower index); the others are unchanged."""

    name = "arc"

    def __init__(self, f: int) -> None:
        self.f = check_count(f, "ARC f")

    def _matrix(self, G: Tensor, f: int) -> Tensor:
        n = G.shape[0]
        k = min(math.floor(2 * f * (n - f) / n), n - 1)
        norms = G.diagonal().clamp_min(0.0).sqrt()
        if k == 0:
            return torch.eye(n, dtype=torch.float64, device=G.device)
        order = norms.argsort(descending=True, stable=True)
        return torch.diag(_scales_to(norms, norms[order[k]]))


class Clipping(PreAggregator):
    """Static clipping: scale each input to norm at most ``c``: ``xᵢ · min(1, c/‖xᵢ‖)``."""

    name = "clipping"

    def __init__(self, c: float = 2.0) -> None:
        self.c = check_positive(c, "Clipping c")

    def _matrix(self, G: Tensor, f: int) -> Tensor:
        norms = G.diagonal().clamp_min(0.0).sqrt()
        return torch.diag(_scales_to(norms, torch.tensor(self.c, dtype=torch.float64, device=G.device)))

    def __repr__(self) -> str:
        return f"Clipping(c={self.c})"


class Bucketing(PreAggregator):
    """Bucketing: (1) a random permutation π of the n inputs from ``generator(seed, step, "robust/bucketing")``
    (identical on every rank), (2) ⌈n/s⌉ buckets of s consecutive inputs of π (the last may be smaller),
    (3) output each bucket's mean. Not permutation invariant by design."""

    name = "bucketing"

    def __init__(self, s: int = 2, seed: int = 0) -> None:
        self.s = check_count(s, "Bucketing s", minimum=1)
        self.seed = check_count(seed, "Bucketing seed")

    def matrix_from_gram(self, G: Tensor, step: int = 0) -> Tensor:
        n = check_gram(G).shape[0]
        perm = torch.randperm(n, generator=generator(self.seed, step, "robust/bucketing"))
        W = torch.zeros(math.ceil(n / self.s), n, dtype=torch.float64, device=G.device)
        for b, start in enumerate(range(0, n, self.s)):
            members = perm[start : start + self.s]
            W[b, members] = 1.0 / members.numel()
        return W

    def __repr__(self) -> str:
        return f"Bucketing(s={self.s}, seed={self.seed})"


class Compose:
    """Pre-aggregators in order, then a rule: ``Compose([NNM(f)], Krum(f))(X, step=0) -> Tensor[d]``."""

    def __init__(self, preaggregators: Sequence[PreAggregator], rule: Aggregator) -> None:
        self.preaggregators = list(preaggregators)
        for p in self.preaggregators:
            if not isinstance(p, PreAggregator):
                raise ValueError(f"Compose: {p!r} is not a PreAggregator")
        if not isinstance(rule, Aggregator):
            raise ValueError(f"Compose: {rule!r} is not an Aggregator")
        self.rule = rule

    def __call__(self, X: Tensor, step: int = 0) -> Tensor:
        for p in self.preaggregators:
            X = p(X, step)
        return self.rule(X)

    def mixing_from_gram(self, G: Tensor, step: int = 0) -> tuple[Tensor, Tensor]:
        """``(W, G′)``: the pre-aggregators as one n′ × n matrix (output rows ``W X``) and the Gram matrix of ``W X``.

        Chains the pre-aggregators in Gram space: ``Wₖ`` from the current Gram
        matrix, then ``G ← Wₖ G Wₖᵀ`` (:func:`transform_gram`), ``W ← Wₖ W``.
        """
        G = check_gram(G).double()
        total = torch.eye(G.shape[0], dtype=torch.float64, device=G.device)
        for p in self.preaggregators:
            W = p.matrix_from_gram(G, step)
            G = transform_gram(W, G)
            total = W @ total
        return total, G

    def weights_from_gram(self, G: Tensor, step: int = 0) -> Tensor:
        """Weights (fp64, length n) on the original inputs, output ``Σᵢ wᵢ xᵢ``; needs a Gram-based rule."""
        if not isinstance(self.rule, GramAggregator):
            raise ValueError(f"Compose.weights_from_gram needs a Gram-based rule, got {self.rule!r}")
        total, G = self.mixing_from_gram(G, step)
        return total.T @ self.rule.weights_from_gram(G)

    def __repr__(self) -> str:
        return f"Compose({self.preaggregators!r}, {self.rule!r})"
