"""Gradient leakage through a sketch whose seed is known (Zhu, Liu & Han, "Deep Leakage from Gradients", 2019).

Song, Wang, Yu & Zhang (ICML 2023) show that sketching does not hide the
gradient: ``R`` comes from a seed every rank holds, and ``R`` embeds the
low-dimensional set of gradients a single input can produce. The attack
(:func:`reconstruct`) matches gradients in sketch space:

1. start from a dummy input ``x̂`` (seeded normal);
2. compute the model's gradient at ``x̂`` with the known label,
   ``ĝ = ∇_w L(w; x̂, y)``, flattened over all parameters and clipped to ``C``
   like the victim's (:func:`sketched_gradient`; ``create_graph`` keeps it
   differentiable in ``x̂``);
3. minimise ``‖R ĝ − y_obs‖²`` over ``x̂`` with L-BFGS; ``R`` enters through
   :class:`SketchFunction`, whose backward is ``Rᵀ``.

Without noise the minimiser is the victim's input (for a small model); with
the DP mechanism (:class:`commlib.privacy.DPSketch`) the observation is
dominated by ``N(0, z²C²·I_s)`` and the reconstruction fails.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..compress.sketch.operators import SketchOperator
from ..rng import generator

__all__ = ["SketchFunction", "sketched_gradient", "reconstruct"]


class SketchFunction(torch.autograd.Function):
    """``R x`` as a differentiable op: forward ``operator.apply``, backward ``operator.transpose`` (``Rᵀ``)."""

    @staticmethod
    def forward(ctx, x: Tensor, operator: SketchOperator) -> Tensor:  # noqa: D102
        ctx.operator = operator
        return operator.apply(x)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return ctx.operator.transpose(grad_out.contiguous()), None


def sketched_gradient(model: nn.Module, x: Tensor, y: Tensor, operator: SketchOperator, max_norm: float | None = None,
                      loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                      create_graph: bool = False) -> Tensor:
    """``R · clip(∇_w loss_fn(model(x), y))``: the flattened gradient over all parameters, clipped to ``max_norm``."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=create_graph)
    flat = torch.cat([g.reshape(-1) for g in grads])
    if flat.numel() != operator.numel:
        raise ValueError(f"the model has {flat.numel()} parameters but the sketch expects {operator.numel}")
    if max_norm is not None:
        flat = flat * torch.clamp(max_norm / (flat.norm() + 1e-12), max=1.0)
    return SketchFunction.apply(flat, operator)


def reconstruct(model: nn.Module, operator: SketchOperator, observed: Tensor, label: Tensor, input_shape: tuple,
                max_norm: float | None = None, iterations: int = 50, seed: int = 0,
                bounds: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """DLG in sketch space: the input ``x̂`` (``input_shape``, batch included) whose sketched gradient fits ``observed``.

    ``label`` is assumed known (it can be read off the last layer's gradient
    signs, Zhao et al. 2020). L-BFGS with ``iterations`` outer steps (strong
    Wolfe line search), deterministic from ``seed``. ``bounds = (low, high)``,
    the attacker's knowledge of the data range, clamps the result.
    """
    if observed.numel() != operator.size:
        raise ValueError(f"observed has {observed.numel()} values but the sketch has {operator.size}")
    target = observed.detach().reshape(-1).to(torch.float32)
    dummy = torch.randn(input_shape, generator=generator(seed, 0, "attack/dlg")).requires_grad_(True)
    opt = torch.optim.LBFGS([dummy], lr=1.0, max_iter=20, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        fit = sketched_gradient(model, dummy, label, operator, max_norm, create_graph=True)
        loss = (fit - target).pow(2).sum()
        loss.backward()
        return loss

    for _ in range(iterations):
        opt.step(closure)
    out = dummy.detach()
    return out if bounds is None else torch.maximum(torch.minimum(out, bounds[1]), bounds[0])
