"""A tiny in-process driver: n virtual workers running one error-feedback method on one tensor.

For tests and as the math core the simulator can reuse. No communication:
each worker's ``Δ = C(u)`` comes from the compressor's local ``compress``, and
the exchange is replaced by an average in rank order (sum left to right, then
divide by n), which is what every runtime must reproduce bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..compress.base import Compressor, TensorContext
from .base import ErrorFeedback, local_compress, require_local_compressor

__all__ = ["SimResult", "run", "rank_order_mean"]

#: ``grads_fn(x, i, t)``: worker i's gradient at x in step t (same shape as x).
GradsFn = Callable[[Tensor, int, int], Tensor]


@dataclass
class SimResult:
    """Final iterate, each worker's method object (with its state), and ``‖x − x_ref‖`` per step if asked."""

    x: Tensor
    workers: list[ErrorFeedback]
    distances: list[float] = field(default_factory=list)


def rank_order_mean(parts: list[Tensor]) -> Tensor:
    """Mean of ``parts`` summed left to right in rank order, then divided by their count."""
    total = parts[0].clone()
    for p in parts[1:]:
        total.add_(p)
    return total.div_(len(parts))


def run(
    method_factory: Callable[[], ErrorFeedback],
    compressor: Compressor,
    grads_fn: GradsFn,
    x0: Tensor,
    lr: float,
    steps: int,
    n: int,
    *,
    warm_start: bool = False,
    key: str = "x",
    seed: int = 0,
    x_ref: Tensor | None = None,
    stop_above: float | None = None,
    on_step: Callable[[int, Tensor, list[ErrorFeedback], list[Tensor]], None] | None = None,
) -> SimResult:
    """Run ``steps`` steps of ``x ← x − lr·out`` with ``n`` workers, each a deepcopy of ``method_factory()``.

    Per step t: every worker i computes ``g = grads_fn(x, i, t)``, ``u = message``,
    ``Δᵢ = compressor.compress(u, ctx)`` with ``ctx = TensorContext(key, t, seed, i, n)``;
    ``Δ̄`` is the rank-order mean; each worker commits; all outputs are identical,
    and worker 0's is applied. ``x`` keeps ``x0``'s dtype.

    ``warm_start``: before step 0, set every worker's state with the dense
    gradients at ``x0`` (:meth:`ErrorFeedback.warm_start`). ``x_ref``: record
    ``‖x − x_ref‖`` after each step. ``stop_above``: stop early once that distance
    exceeds it (divergence). ``on_step(t, x_new, workers, grads)`` is called after
    each step.
    """
    require_local_compressor(compressor)
    if n < 1 or steps < 0:
        raise ValueError(f"need n >= 1 and steps >= 0, got n={n}, steps={steps}")
    proto = method_factory()
    workers = [copy.deepcopy(proto) for _ in range(n)]
    x = x0.clone()
    if warm_start:
        g0 = [grads_fn(x, i, 0) for i in range(n)]
        gm = rank_order_mean([g.to(proto.dtype) for g in g0])
        for w, g in zip(workers, g0):
            w.warm_start(key, g, gm)
    distances: list[float] = []
    for t in range(steps):
        grads = [grads_fn(x, i, t) for i in range(n)]
        deltas = []
        for i, (w, g) in enumerate(zip(workers, grads)):
            u = w.message(key, g)
            deltas.append(local_compress(compressor, u, TensorContext(key, t, seed, i, n)).to(proto.dtype))
        dm = rank_order_mean(deltas)
        outs = [w.commit(key, g, d, dm) for w, g, d in zip(workers, grads, deltas)]
        x = x - lr * outs[0].to(x.dtype)
        if on_step is not None:
            on_step(t, x, workers, grads)
        if x_ref is not None:
            dist = float(torch.linalg.vector_norm(x - x_ref))
            distances.append(dist)
            if stop_above is not None and not dist <= stop_above:
                break
    return SimResult(x=x, workers=workers, distances=distances)
