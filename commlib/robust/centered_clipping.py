"""Centered clipping (Karimireddy, He, Jaggi, "Learning from history for Byzantine robust optimization",
ICML 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Aggregator, check_count, check_positive, combine, row_distances

__all__ = ["CenteredClipping"]


class CenteredClipping(Aggregator):
    """Centered clipping, stateful: the centre is the previous aggregate.

    Step: ``v ← v + (1/n) Σᵢ clip_τ(xᵢ − v)`` with ``clip_τ(y) = y · min(1, τ/‖y‖)``,
    repeated ``iters`` times; v starts at the previous call's output (zero on the
    first call) and the output becomes the next call's start. Meant to be used
    with worker momentum. f-agnostic. ``state_dict()`` / ``load_state_dict()``
    hold the centre, so a checkpoint resumes it exactly.
    """

    name = "centered_clipping"

    def __init__(self, tau: float = 10.0, iters: int = 1) -> None:
        self.tau = check_positive(tau, "CenteredClipping tau")
        self.iters = check_count(iters, "CenteredClipping iters", minimum=1)
        self.centre: Tensor | None = None

    def _aggregate(self, X: Tensor, f: int) -> Tensor:
        n, d = X.shape
        if self.centre is not None and self.centre.shape != (d,):
            raise ValueError(f"CenteredClipping holds a centre of shape {tuple(self.centre.shape)}, "
                             f"inputs have d={d}; call reset() when the parameters change")
        v = torch.zeros(d, dtype=X.dtype, device=X.device) if self.centre is None else self.centre.to(X)
        for _ in range(self.iters):
            dist = row_distances(X, v)
            scale = torch.where(dist > self.tau, self.tau / dist, torch.ones_like(dist)) / n
            v = combine(X, scale) + v * (1.0 - float(scale.sum()))
        self.centre = v.clone()
        return v

    def reset(self) -> None:
        """Forget the centre (the next call starts from zero)."""
        self.centre = None

    def state_dict(self) -> dict[str, object]:
        return {"centre": None if self.centre is None else self.centre.clone()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        centre = state["centre"]
        if centre is not None and (not isinstance(centre, Tensor) or centre.dim() != 1):
            raise ValueError(f"CenteredClipping state 'centre' must be None or a 1-D tensor, got {centre!r}")
        self.centre = None if centre is None else centre.clone()

    def __repr__(self) -> str:
        return f"CenteredClipping(tau={self.tau}, iters={self.iters})"
