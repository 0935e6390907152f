"""The sketched Gaussian mechanism: DP-SGD noise added once, in sketch space, before the all-reduce.

For one tensor ``g_i`` on rank ``i`` at step ``t`` (Abadi et al. 2016's DP-SGD
with the sketch of Song, Wang, Yu & Zhang, ICML 2023):

1. with ``clip=True``, ``g_i ← g_i·min(1, C/‖g_i‖)`` (worker-level DP: pass the
   whole update as one tensor); with ``clip=False`` the caller bounds the
   sensitivity, e.g. a sum of per-sample clipped gradients
   (:func:`commlib.privacy.clip_per_sample`);
2. ``y_i = R_t g_i`` with ``R_t`` the orthonormal-row block SRHT
   (``‖R_t‖_op ≤ 1``, so the sensitivity stays ``C``), fresh every step;
3. on rank ``noise_rank`` only: ``y_i ← y_i + ξ``, ``ξ ~ N(0, z²C²·I_s)`` drawn
   from ``noise_seed`` (a secret of that rank: anyone who knows the noise can
   remove it, so it must never be the exchange's shared seed);
4. ordered all-reduce: ``Σ_i y_i = R_t Σ_i g_i + ξ`` — the noise is in the sum
   exactly once, as in Opacus's distributed optimizer (noise on rank 0);
5. decode ``c·R_tᵀ ȳ/n`` (``c = d/s`` with ``rescale``, else 1): post-processing.

Each step is then the Gaussian mechanism with noise multiplier ``z`` on the
sum: account it with :class:`commlib.privacy.PrivacyAccountant`. Error
feedback is refused (:meth:`DPSketch.exchange_local`): a residual built from
un-noised data carries data into later steps and breaks the per-step
sensitivity bound. State built only from the noised sum is post-processing.

``DPSketch.private`` is True, so :class:`~commlib.comm.exchange.GradientExchange`
sends every tensor through it, from step 0 on (1-D and small tensors too,
whatever ``start_step``, ``min_numel`` and ``min_compression_rate`` say), and on
NaN/Inf it resends nothing dense: every rank gets NaN for the bucket and only
the one-bit non-finite flag leaves a rank (that step's noised sum is still
released: account it as a step). Each tensor exchanged in a step is a release
of sensitivity ``C``: with ``P`` tensors per step account ``z/√P``, or send the
whole update as one tensor (e.g. ``("model", flat.view(1, -1))``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import ops, rng
from ..comm.collectives import Protocol
from ..compress.base import LinearCompressor, TensorContext, WireBytes
from ..compress.sketch import Sketch
from ..compress.sketch.operators import SketchOperator

__all__ = ["DPSketch"]


@dataclass
class DPSketch(LinearCompressor):
    """Clip to ``max_norm`` (optional), sketch with orthonormal rows (1/``ratio`` of d), add ``N(0, z²C²)`` once.

    ``ratio=1`` keeps every row of ``HD``: plain DP-SGD in a rotated basis.
    """

    noise_multiplier: float
    max_norm: float
    noise_seed: int = field(repr=False)
    ratio: float = 20.0
    block: int = 4096
    clip: bool = True
    rescale: bool = True
    noise_rank: int = 0
    name = "dp-sketch"
    private = True

    def __post_init__(self) -> None:
        z, c = self.noise_multiplier, self.max_norm
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not 0 <= z < math.inf:
            raise ValueError(f"DPSketch noise_multiplier must be a finite number >= 0, got {z!r}")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < math.inf:
            raise ValueError(f"DPSketch max_norm must be a positive finite number, got {c!r}")
        if isinstance(self.noise_seed, bool) or not isinstance(self.noise_seed, int):
            raise ValueError(f"DPSketch noise_seed must be an integer (a secret of the noising rank), "
                             f"got {type(self.noise_seed).__name__}")
        for flag in ("clip", "rescale"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"DPSketch {flag} must be a bool, got {getattr(self, flag)!r}")
        if isinstance(self.noise_rank, bool) or not isinstance(self.noise_rank, int) or self.noise_rank < 0:
            raise ValueError(f"DPSketch noise_rank must be a non-negative integer, got {self.noise_rank!r}")
        self.sketch = Sketch(ratio=self.ratio, family="srht", mode="projection", block=self.block)

    def config(self) -> dict[str, object]:
        """The plain values that must agree across ranks; the secret ``noise_seed`` is left out."""
        keys = ("noise_multiplier", "max_norm", "ratio", "block", "clip", "rescale", "noise_rank")
        return {"name": self.name, **{k: getattr(self, k) for k in keys}}

    def compressible(self, shape: torch.Size) -> bool:
        return shape.numel() > 0

    def wire_bytes(self, shape: torch.Size) -> WireBytes:
        return self.sketch.wire_bytes(shape)

    def operator(self, numel: int, ctx: TensorContext) -> SketchOperator:
        """``R_t`` (orthonormal rows) for ``ctx``: what every rank, and any attacker knowing the seed, can build."""
        return self.sketch.operator(numel, ctx)

    def noise(self, size: int, ctx: TensorContext) -> Tensor:
        """``ξ ~ N(0, z²C²·I_size)`` from ``(noise_seed, step, key)``; ``ValueError`` if it is the shared seed."""
        if self.noise_seed == ctx.seed:
            raise ValueError("DPSketch noise_seed equals the exchange seed: every rank could subtract the noise")
        gen = rng.generator(self.noise_seed, ctx.step, f"{ctx.key}/dp-noise")
        return torch.randn(size, generator=gen).mul_(self.noise_multiplier * self.max_norm)

    def encode(self, x: Tensor, ctx: TensorContext) -> Tensor:
        flat = x.reshape(-1).to(torch.float32)
        if not ops.all_finite(flat):
            raise ValueError(f"dp-sketch: {ctx.key!r} is not finite; clipping cannot bound it")
        if self.clip:
            norm = float(torch.linalg.vector_norm(flat))
            if norm > self.max_norm:
                flat = flat * (self.max_norm / norm)
        y = self.sketch.encode(flat, ctx)
        if ctx.rank == self.noise_rank and self.noise_multiplier > 0:
            y.add_(self.noise(y.numel(), ctx).to(y.device))
        return y

    def decode(self, total: Tensor, shape: torch.Size, ctx: TensorContext, out: Tensor | None = None) -> Tensor:
        out = self.sketch.decode(total, shape, ctx, out=out)
        if self.rescale:
            out.mul_(self.operator(shape.numel(), ctx).unbiased_scale)
        return out

    def exchange(self, x: Tensor, ctx: TensorContext) -> Protocol[Tensor]:
        if not 0 <= self.noise_rank < ctx.world_size:
            raise ValueError(f"DPSketch noise_rank {self.noise_rank} is not a rank of a world of {ctx.world_size}")
        return (yield from super().exchange(x, ctx))

    def exchange_local(self, x: Tensor, ctx: TensorContext, sparse: bool = False) -> Protocol[tuple[Tensor, Tensor]]:
        raise ValueError("DPSketch refuses error feedback: a residual of un-noised data breaks the per-step "
                         "sensitivity bound (keep error feedback off, or only on the noised sum)")
        yield  # pragma: no cover - makes this a generator
