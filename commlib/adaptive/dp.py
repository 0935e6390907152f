"""The L-GreCo dynamic program: one option per layer, minimum total cost under a total error budget.

Problem (Markov et al., "L-GreCo", MLSys 2024, §3): given ``cost[l, k]`` and
``error[l, k]`` for layers ``l < L`` and options ``k < K``, and a budget
``E* = α · Σ_l error[l, default_l]`` (the error of the uniform default setting),

    minimize Σ_l cost[l, c_l]   subject to   Σ_l error[l, c_l] ≤ E*.

This is a multiple-choice knapsack; it is solved exactly after discretizing
the errors into ``B`` bins of width ``w = E*/B``:

1. **Discretize, rounding up**: ``q[l, k] = ceil(error[l, k] / w)`` (bumped by one
   where floating point put ``q·w`` below the error). Since ``q·w ≥ error``, any
   choice with ``Σ q ≤ B`` has ``Σ error ≤ Σ q·w ≤ B·w = E*``: discrete solutions
   are feasible for the real errors. The price is conservatism: rounding up
   loses at most ``L`` bins of budget, so keep ``B ≫ L``. Errors above ``E*``
   (and ``inf``) can never fit, nor can ``inf`` costs: those options are dropped.
2. **Prune**: per layer, an option is dropped if another has ``q`` and cost both
   no larger (ties keep the lower index). Pruning never removes every optimum.
3. **Min-plus convolution, layer by layer**: ``D_0[b] = 0`` and
   ``D_l[b] = min_k D_{l−1}[b − q[l, k]] + cost[l, k]``, the minimum cost of layers
   ``< l`` using at most ``b`` bins. Each layer costs ``O(K·B)``, vectorized over
   ``b`` with NumPy (two array operations per kept option); total ``O(L·K·B)``
   time, ``O(L·B)`` memory. Each ``D_l`` is non-increasing in ``b``.
4. **Backtrack** from the smallest ``b`` with ``D_L[b] = D_L[B]`` (the
   lowest-error choice among the cheapest), finding per layer the option whose
   term equals ``D_l[b]`` (the same floating-point sum, so equality is exact).
5. **Never worse than uniform**: the result is compared with the uniform
   default; if the default is feasible for the real errors and cheaper (or as
   cheap with less error) it is returned. If no choice is feasible (a budget
   below the least possible error, e.g. ``α < 1`` with no slack), the uniform
   default is returned with ``feasible=False``.

Unlike the public implementation, an infeasible table never indexes with ``−1``
and the uniform default is never lost to rounding (it is checked on the real
errors). For ``α ≥ 1`` the cost is non-increasing in ``α``: a discrete
solution at ``α`` stays one at any larger ``α`` (wider bins, smaller ``q``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Solution", "discretize", "pareto_mask", "solve", "solve_discretized"]


@dataclass(frozen=True)
class Solution:
    """A choice of option per layer and what it costs.

    ``source`` is ``"dp"`` (the dynamic program's choice), ``"default"`` (the
    uniform default was feasible and no more expensive) or ``"fallback"``
    (nothing was feasible; the uniform default is returned anyway, ``feasible=False``).
    """

    choice: np.ndarray  # int64, one option index per layer
    cost: float
    error: float
    budget: float
    feasible: bool
    source: str


def _check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")


def _check_tables(cost: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cost = np.asarray(cost, dtype=np.float64)
    error = np.asarray(error, dtype=np.float64)
    if cost.ndim != 2 or cost.shape != error.shape:
        raise ValueError(f"cost and error must be 2-D tables of equal shape, got {cost.shape} and {error.shape}")
    for name, table in (("cost", cost), ("error", error)):
        if np.isnan(table).any():
            raise ValueError(f"the {name} table holds NaN")
        if (table < 0).any():
            raise ValueError(f"the {name} table holds negative values (or -inf)")
    return cost, error


def discretize(error: np.ndarray, budget: float, bins: int) -> np.ndarray:
    """``q = ceil(error / (budget/bins))`` as int64, rounded up so ``q·w ≥ error``; above the budget → ``bins + 1``.

    A budget below 0.5 is first scaled up, errors with it, by the same power
    of two (exact) to ``[0.5, 1)``, so a tiny budget's bins never underflow.
    """
    _check_bins(bins)
    if not (np.isfinite(budget) and budget > 0):
        raise ValueError(f"discretize needs a positive finite budget, got {budget!r}")
    shift = max(0, -int(np.frexp(budget)[1]))
    with np.errstate(over="ignore", invalid="ignore"):
        error = np.ldexp(np.asarray(error, dtype=np.float64), shift)  # overflow only above the budget: inf
        width = float(np.ldexp(budget, shift)) / bins
        ratio = error / width
        fits = np.isfinite(ratio) & (ratio <= bins)
        q = np.where(fits, np.ceil(np.where(fits, ratio, 0.0)), bins + 1)
        q += fits & (q * width < error)
    return np.minimum(q, bins + 1).astype(np.int64)


def pareto_mask(cost: np.ndarray, q: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Per layer, the available options not dominated by another in both ``q`` and cost (ties: lower index).

    Vectorized over layers: sort each row by ``(q, cost, index)``; an option is
    kept iff its cost is strictly below every cost before it in that order.
    """
    cost_m = np.where(available, cost, np.inf)
    q_m = np.where(available, q, np.iinfo(np.int64).max)
    order = np.lexsort((np.broadcast_to(np.arange(cost.shape[1]), cost.shape), cost_m, q_m), axis=-1)
    sorted_cost = np.take_along_axis(cost_m, order, axis=1)
    before = np.minimum.accumulate(sorted_cost, axis=1)
    before = np.concatenate([np.full((cost.shape[0], 1), np.inf), before[:, :-1]], axis=1)
    keep = np.zeros(cost.shape, dtype=bool)
    np.put_along_axis(keep, order, sorted_cost < before, axis=1)
    return keep & available


def solve_discretized(
    cost: np.ndarray, q: np.ndarray, bins: int, *, prune: bool = True
) -> tuple[np.ndarray, float] | None:
    """Exact ``min Σ cost[l, c_l]`` s.t. ``Σ q[l, c_l] ≤ bins``: ``(choice, total cost)``, or ``None`` if infeasible.

    Options with ``q > bins`` or infinite cost are unavailable. Among the
    cheapest choices, returns one with the least ``Σ q``. Steps 2–4 of the
    module docstring; ``prune=False`` skips step 2 (for testing).
    """
    _check_bins(bins)
    cost = np.asarray(cost, dtype=np.float64)
    q = np.asarray(q)
    if cost.ndim != 2 or cost.shape != q.shape or not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"cost and q must be 2-D of equal shape (q integer), got {cost.shape} and {q.shape}")
    if np.isnan(cost).any() or (cost < 0).any() or (q < 0).any():
        raise ValueError("cost must be >= 0 (inf allowed) and q >= 0")
    layers = cost.shape[0]
    if layers == 0:
        return np.zeros(0, dtype=np.int64), 0.0
    available = np.isfinite(cost) & (q <= bins)
    keep = pareto_mask(cost, q, available) if prune else available
    if not keep.any(axis=1).all():
        return None
    kept = [np.flatnonzero(row).tolist() for row in keep]
    qs, cs = q.tolist(), cost.tolist()
    table = np.empty((layers + 1, bins + 1))
    table[0] = 0.0
    scratch = np.empty(bins + 1)
    for layer in range(layers):
        prev, cur = table[layer], table[layer + 1]
        q_row, c_row = qs[layer], cs[layer]
        first, *others = kept[layer]
        cur[: q_row[first]] = np.inf  # the first kept option initializes the row
        np.add(prev[: bins + 1 - q_row[first]], c_row[first], out=cur[q_row[first] :])
        for k in others:
            shift = q_row[k]
            np.add(prev, c_row[k], out=scratch)
            np.minimum(cur[shift:], scratch[: bins + 1 - shift], out=cur[shift:])
    best = table[layers, bins]
    if not np.isfinite(best):
        return None
    b = int(np.argmax(table[layers] == best))
    choice = np.empty(layers, dtype=np.int64)
    for layer in range(layers - 1, -1, -1):
        prev, target = table[layer], table[layer + 1, b]
        match = next(k for k in kept[layer] if qs[layer][k] <= b and prev[b - qs[layer][k]] + cs[layer][k] == target)
        choice[layer] = match
        b -= qs[layer][match]
    return choice, float(cost[np.arange(layers), choice].sum())


def _check_default(default: int | np.ndarray, layers: int, options: int) -> np.ndarray:
    arr = np.asarray(default)
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim > 1:
        raise ValueError(f"default must be an option index or one index per layer, got {default!r}")
    arr = np.broadcast_to(arr, (layers,)) if arr.ndim == 0 else arr
    if arr.shape != (layers,):
        raise ValueError(f"default must hold one option index per layer ({layers}), got shape {arr.shape}")
    if layers and (arr.min() < 0 or arr.max() >= options):
        raise ValueError(f"default option indices must lie in [0, {options}), got {arr.tolist()}")
    return arr.astype(np.int64)


def solve(
    cost: np.ndarray,
    error: np.ndarray,
    default: int | np.ndarray,
    *,
    alpha: float = 1.0,
    bins: int = 10_000,
    budget: float | None = None,
) -> Solution:
    """Choose one option per layer: minimum total cost with total error within ``α · Σ error[l, default_l]``.

    ``default`` is the uniform default (one index, or one per layer where it
    differs, e.g. a fallback for layers the default cannot compress); its
    entries must have finite cost and error. ``budget`` overrides ``α``.
    Raises ``ValueError`` on NaN, negative values, bad shapes or indices.
    """
    cost, error = _check_tables(cost, error)
    _check_bins(bins)
    layers, options = cost.shape
    default = _check_default(default, layers, options)
    rows = np.arange(layers)
    d_cost, d_error = cost[rows, default], error[rows, default]
    if not (np.isfinite(d_cost).all() and np.isfinite(d_error).all()):
        bad = np.flatnonzero(~(np.isfinite(d_cost) & np.isfinite(d_error))).tolist()
        raise ValueError(f"the default option has infinite cost or error for layers {bad}")
    if budget is None:
        if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        budget = float(alpha * d_error.sum())
    elif not (np.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget must be a finite number >= 0, got {budget!r}")
    candidate: np.ndarray | None = None
    if budget > 0:
        found = solve_discretized(cost, discretize(error, budget, bins), bins)
        candidate = None if found is None else found[0]
    else:  # a zero budget: only exact zero-error options fit
        zero = (error == 0) & np.isfinite(cost)
        if zero.any(axis=1).all():
            candidate = np.argmin(np.where(zero, cost, np.inf), axis=1).astype(np.int64)

    def totals(choice: np.ndarray) -> tuple[float, float]:
        return float(cost[rows, choice].sum()), float(error[rows, choice].sum())

    default_totals = totals(default)
    default_ok = default_totals[1] <= budget
    if candidate is not None and (not default_ok or totals(candidate) < default_totals):
        total_cost, total_error = totals(candidate)
        return Solution(candidate, total_cost, total_error, budget, True, "dp")
    source = "default" if default_ok else "fallback"
    return Solution(default.copy(), default_totals[0], default_totals[1], budget, default_ok, source)
