"""Clipping that bounds the sensitivity of a worker's message to ``C`` (Abadi et al., CCS 2016).

* Worker level (:func:`clip_update`): the whole update — all tensors together —
  is scaled by ``min(1, C/‖g‖₂)``; neighbouring runs differ in one worker's data.
* Sample level (:func:`clip_per_sample`): each sample's gradient (all tensors
  together) is scaled by ``min(1, C/‖g_j‖₂)`` and the clipped gradients are
  summed; adding or removing one sample moves the sum by at most ``C``.
  :func:`per_sample_gradients` computes the per-sample gradients with
  ``torch.func`` (``vmap`` of ``grad``).

Non-finite gradients raise ``ValueError``: no clipping bounds them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["clip_update", "clip_per_sample", "per_sample_gradients"]


def _check_max_norm(max_norm: object) -> float:
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not 0 < max_norm < math.inf:
        raise ValueError(f"max_norm (the clipping bound C) must be a positive finite number, got {max_norm!r}")
    return float(max_norm)


def _check_tensors(tensors: Sequence[Tensor], what: str) -> None:
    if not tensors or not all(isinstance(t, Tensor) and t.is_floating_point() for t in tensors):
        raise ValueError(f"{what} must be a non-empty sequence of floating-point tensors")


def clip_update(tensors: Sequence[Tensor], max_norm: float) -> list[Tensor]:
    """New tensors: ``tensors`` scaled together by ``min(1, C/‖g‖₂)``, ``‖g‖₂`` the norm of all of them."""
    c = _check_max_norm(max_norm)
    _check_tensors(tensors, "clip_update tensors")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors]))
    if not bool(torch.isfinite(norm)):
        raise ValueError("clip_update: the update is not finite; clipping cannot bound it")
    factor = torch.clamp(c / (norm + 1e-12), max=1.0)
    return [t.float() * factor for t in tensors]


def clip_per_sample(per_sample: Sequence[Tensor], max_norm: float) -> list[Tensor]:
    """``Σ_j min(1, C/‖g_j‖₂)·g_j`` per tensor; ``per_sample[i]`` has samples on dim 0, ``g_j`` spans all tensors."""
    c = _check_max_norm(max_norm)
    _check_tensors(per_sample, "clip_per_sample tensors")
    batch = per_sample[0].shape[0] if per_sample[0].dim() else 0
    if batch < 1 or any(t.dim() == 0 or t.shape[0] != batch for t in per_sample):
        raise ValueError("clip_per_sample: every tensor needs the same number (>= 1) of samples on dim 0")
    squares = torch.stack([t.float().reshape(batch, -1).pow(2).sum(1) for t in per_sample]).sum(0)
    if not bool(torch.isfinite(squares).all()):
        raise ValueError("clip_per_sample: a per-sample gradient is not finite; clipping cannot bound it")
    factors = torch.clamp(c / (squares.sqrt() + 1e-12), max=1.0)
    return [torch.einsum("b,b...->...", factors, t.float()) for t in per_sample]


def per_sample_gradients(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor,
                         y: Tensor) -> Mapping[str, Tensor]:
    """``{name: (batch, *shape)}``: the gradient of ``loss_fn(model(x_j), y_j)`` for every sample ``j``."""
    from torch.func import functional_call, grad, vmap

    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.shape[0] != y.shape[0] or x.shape[0] < 1:
        raise ValueError("per_sample_gradients needs inputs x and targets y with the same batch size >= 1")
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss_one(p: dict[str, Tensor], xj: Tensor, yj: Tensor) -> Tensor:
        return loss_fn(functional_call(model, p, (xj.unsqueeze(0),)), yj.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
