"""What every robust rule shares: input checks, the non-finite-row policy, and Gram/distance helpers.

Conventions of :mod:`commlib.robust`:

* The n inputs are the rows of a 2-D tensor ``X`` (n workers × d coordinates).
* A rule is a callable object ``rule(X) -> Tensor[d]``, deterministic (ties go to
  the lower index or, for coordinate-wise rules, to the lower value).
* **Non-finite rows.** A row holding NaN or ±Inf (or, on a Gram path, a row whose
  squared norm is not finite) is removed and *counted against f*: with k such
  rows the rule runs on the n − k others with ``f' = max(f − k, 0)``. When more
  rows are bad than the rule can then handle (at most two left), the output is
  the mean of the finite rows; when none is finite it is zero. The output is
  never NaN.
* **Gram path.** Rules whose output depends on the inputs only through their
  Gram matrix ``G = X Xᵀ`` (Krum, Multi-Krum, geometric median, MDA, Flag)
  subclass :class:`GramAggregator` and expose ``weights_from_gram(G) -> w`` with
  ``rule(X) = Σᵢ wᵢ xᵢ``. A sharded runtime sums per-shard Grams, derives ``w``
  on every rank, and forms the output as a weighted all-reduce. Rows with weight
  0 must contribute nothing (send zeros, do not multiply a non-finite row by 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "Aggregator",
    "GramAggregator",
    "check_count",
    "check_gram",
    "check_matrix",
    "check_positive",
    "combine",
    "finite_rows",
    "gram",
    "row_distances",
    "row_mean",
    "row_sum",
    "sqdist_from_gram",
]

# Rows × columns processed at once by column-chunked and row-blocked helpers (bounded temporary memory).
BLOCK_ELEMENTS = 1 << 22
# Columns per chunk of :func:`combine` (a 1 MiB fp32 output chunk stays in a typical L2 cache).
COMBINE_CHUNK = 1 << 18


def check_matrix(X: object, what: str = "X") -> Tensor:
    """Raise ValueError unless ``X`` is a non-empty 2-D floating tensor (n workers × d); return it."""
    if not isinstance(X, Tensor):
        raise ValueError(f"{what} must be a torch.Tensor of shape (n, d), got {type(X).__name__}")
    if X.dim() != 2:
        raise ValueError(f"{what} must be 2-D (n workers × d coordinates), got shape {tuple(X.shape)}")
    if not X.dtype.is_floating_point:
        raise ValueError(f"{what} must have a floating dtype, got {X.dtype}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{what} must have at least one row and one column, got shape {tuple(X.shape)}")
    return X


def check_gram(G: object) -> Tensor:
    """Raise ValueError unless ``G`` is a non-empty square floating tensor; return it."""
    if not isinstance(G, Tensor):
        raise ValueError(f"the Gram matrix must be a torch.Tensor of shape (n, n), got {type(G).__name__}")
    if G.dim() != 2 or G.shape[0] != G.shape[1] or G.shape[0] == 0:
        raise ValueError(f"the Gram matrix must be square and non-empty (n × n), got shape {tuple(G.shape)}")
    if not G.dtype.is_floating_point:
        raise ValueError(f"the Gram matrix must have a floating dtype, got {G.dtype}")
    return G


def check_count(value: object, what: str, minimum: int = 0) -> int:
    """Raise ValueError unless ``value`` is an int ≥ ``minimum`` (bools rejected); return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive(value: object, what: str) -> float:
    """Raise ValueError unless ``value`` is a finite real number > 0; return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def finite_rows(X: Tensor) -> Tensor:
    """Boolean mask of the rows of ``X`` without NaN or ±Inf.

    Fast path: a row whose sum is finite has only finite entries (an Inf or NaN
    entry makes the sum Inf or NaN); only rows with a non-finite sum (which may
    be an overflow of finite entries) are checked entry by entry.
    """
    ok = torch.isfinite(X.sum(dim=1))
    if not bool(ok.all()):
        suspect = torch.nonzero(~ok).flatten()
        ok[suspect] = torch.isfinite(X[suspect]).all(dim=1)
    return ok


def row_sum(X: Tensor) -> Tensor:
    """The sum of the rows, added in row order by elementwise adds.

    Unlike ``X.sum(dim=0)``, whose reduction kernel groups terms differently
    for different column counts, every coordinate gets the same bits whatever
    columns surround it, so a column slice (a sharded runtime's) gives the
    whole matrix's bits.
    """
    acc = X[0].clone()
    for row in X[1:]:
        acc.add_(row)
    return acc


def row_mean(X: Tensor) -> Tensor:
    """:func:`row_sum` divided by the number of rows (same layout independence)."""
    return row_sum(X).div_(X.shape[0])


def gram(X: Tensor) -> Tensor:
    """``X Xᵀ`` (n × n) computed in ``X``'s dtype — one O(n²·d) product, no copy of ``X``."""
    return X @ X.T


def sqdist_from_gram(G: Tensor) -> Tensor:
    """Pairwise squared distances ``Dᵢⱼ = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ`` (fp64, clamped at 0, exact zeros on the diagonal)."""
    G = G.double()
    diag = G.diagonal()
    D = (diag[:, None] + diag[None, :] - 2.0 * G).clamp_min_(0.0)
    D.fill_diagonal_(0.0)
    return D


def row_distances(X: Tensor, z: Tensor) -> Tensor:
    """``‖xᵢ − z‖`` for every row (fp64), computed in blocks of rows (bounded temporary memory)."""
    n, d = X.shape
    rows = max(1, BLOCK_ELEMENTS // d)
    return torch.cat([torch.linalg.vector_norm(X[s : s + rows] - z, dim=1) for s in range(0, n, rows)]).double()


def combine(X: Tensor, weights: Tensor) -> Tensor:
    """``Σᵢ wᵢ xᵢ`` over the rows with ``wᵢ ≠ 0`` only (a zero-weight non-finite row is never read).

    Every coordinate is summed in row order, so the bits do not depend on threads;
    columns go in cache-sized chunks, so X is read once and the output written once.
    """
    out = torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)
    rows = [(i, float(weights[i])) for i in torch.nonzero(weights).flatten().tolist()]
    for start in range(0, X.shape[1], COMBINE_CHUNK):
        chunk = out[start : start + COMBINE_CHUNK]
        for i, w in rows:
            chunk.add_(X[i, start : start + COMBINE_CHUNK], alpha=w)
    return out


class Aggregator:
    """Base of the rules: ``__call__`` checks ``X``, applies the non-finite-row policy, then ``_aggregate``.

    Subclasses set ``name``, store ``f`` (0 for f-agnostic rules), implement
    ``_aggregate(X, f) -> Tensor[d]`` on finite rows, and override
    :meth:`min_workers` with the rule's requirement on n. Coordinate-wise rules
    set ``coordinatewise = True`` and may then run on column slices
    (:meth:`aggregate_columns`).
    """

    name = "aggregator"
    f = 0
    coordinatewise = False  # True when each output coordinate depends on that coordinate of the inputs only

    def min_workers(self, f: int) -> int:
        """The smallest n the rule accepts with f Byzantine inputs."""
        return 1

    def check_workers(self, n: int) -> None:
        need = self.min_workers(self.f)
        if n < need:
            raise ValueError(f"{self.name} with f={self.f} needs at least {need} inputs, got n={n}")

    def __call__(self, X: Tensor) -> Tensor:
        X = check_matrix(X)
        self.check_workers(X.shape[0])
        return self._apply(X, finite_rows(X))

    def aggregate_columns(self, X: Tensor, finite: Tensor) -> Tensor:
        """The rule on a column slice ``X`` (n × c) of the inputs, given which rows are finite across *all* columns.

        Only coordinate-wise rules (``coordinatewise = True``) can run on a
        slice: a sharded runtime gives rank j columns j·c … (j+1)·c − 1 of every
        input, applies this, and gathers the slices. ``finite`` (bool, length n)
        must be the same on every rank, so that every slice drops the same rows
        and counts them against f, exactly as ``rule(X)`` on the whole matrix.
        """
        if not self.coordinatewise:
            raise ValueError(f"{self!r} is not coordinate-wise: it cannot aggregate a column slice on its own")
        X = check_matrix(X)
        self.check_workers(X.shape[0])
        if not isinstance(finite, Tensor) or finite.dtype != torch.bool or finite.shape != (X.shape[0],):
            raise ValueError(f"finite must be a bool tensor of shape ({X.shape[0]},), got {finite!r}")
        return self._apply(X, finite)

    def _apply(self, X: Tensor, finite: Tensor) -> Tensor:
        """The non-finite-row policy (module docstring) around ``_aggregate``; ``finite`` marks the kept rows."""
        bad = X.shape[0] - int(finite.sum())
        if bad == X.shape[0]:
            return torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)
        if bad:
            X = X[finite]
        f = max(self.f - bad, 0)
        if X.shape[0] < self.min_workers(f):
            return row_mean(X)
        return self._aggregate(X, f)

    def _aggregate(self, X: Tensor, f: int) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(f={self.f})" if self.f else f"{type(self).__name__}()"


class GramAggregator(Aggregator):
    """A rule whose output is ``Σᵢ wᵢ xᵢ`` with weights computed from the Gram matrix alone.

    Subclasses implement ``_weights(G, f) -> Tensor[n']`` on the finite block of
    the Gram matrix. ``__call__(X)`` is ``combine(X, weights_from_gram(gram(X)))``.
    """

    def weights_from_gram(self, G: Tensor) -> Tensor:
        """Row weights (fp64, length n) such that the rule's output is ``Σᵢ wᵢ xᵢ``.

        Rows whose squared norm ``Gᵢᵢ`` is not finite get weight 0 and count
        against f (by Cauchy–Schwarz the block of the other rows is then finite).
        """
        G = check_gram(G)
        n = G.shape[0]
        self.check_workers(n)
        valid = torch.isfinite(G.diagonal())
        weights = torch.zeros(n, dtype=torch.float64, device=G.device)
        kept = torch.nonzero(valid).flatten()
        bad = n - kept.numel()
        if bad == n:
            return weights
        block = G[kept][:, kept].double() if bad else G.double()
        f = max(self.f - bad, 0)
        if kept.numel() < self.min_workers(f):
            weights[kept] = 1.0 / kept.numel()
        else:
            weights[kept] = self._weights(block, f)
        return weights

    def _weights(self, G: Tensor, f: int) -> Tensor:
        raise NotImplementedError

    def __call__(self, X: Tensor) -> Tensor:
        X = check_matrix(X)
        self.check_workers(X.shape[0])
        return combine(X, self.weights_from_gram(gram(X)))
