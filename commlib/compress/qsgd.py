"""QSGD: stochastic uniform quantization per bucket (Alistarh et al., NeurIPS 2017).

The flat tensor is cut into buckets of ``bucket_size`` consecutive elements
(the last one shorter). For a bucket ``x_b`` with ``scale = ‖x_b‖₂`` (or
``max|x_b|`` with ``norm="max"``) and ``s`` levels, each element becomes

    Q(x_i) = sign(x_i) · scale · level_i / s,
    level_i = floor(|x_i|/scale · s + ξ_i),  ξ_i ~ U[0, 1),

so ``E Q(x_i) = x_i`` (unbiased), and for either norm

    E‖Q(x_b) − x_b‖² ≤ min(d_b/s², √d_b/s) · ‖x_b‖²   (Lemma 3.1 of the paper).

Encoding steps: (1) per-bucket float32 scales and ``y = |x|/scale · s ≤ s``,
computed via ``|x|/max|x_b|`` so tiny or huge buckets neither underflow nor
overflow (:meth:`QSGD._normalized`); (2) ``level = floor(y) + [ξ < y − floor(y)]``,
the same distribution as ``floor(y + ξ)`` but never rounded up to ``s + 1``;
(3) ``code = sign·level + s ∈ [0, 2s]``, packed with ``bits`` bits each
(:func:`commlib.ops.pack_bits`). A zero bucket has scale 0 and all codes ``s``.

Wire format (fixed by shape and config): one float32 scale per bucket,
then ``packed_length(d, bits)`` bytes of codes. ξ comes from
``rng.generator(seed, step, key + "/rank{r}")``: each rank its own stream,
reproducible from the seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops, rng
from ..errors import WireFormatError
from .base import ScaledCodesCompressor, TensorContext

__all__ = ["QSGD"]

_BITS = (2, 4, 8)
_NORMS = ("l2", "max")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class QSGD(ScaledCodesCompressor):
    """Stochastic quantization to ``s`` levels per sign, one float32 scale per bucket of ``bucket_size`` elements.

    Give exactly one of ``bits`` (2, 4 or 8; then ``s = 2**(bits-1) - 1``) or
    ``levels`` (``s ≥ 1``; then ``bits`` is the smallest of 2, 4, 8 with
    ``2s + 1 ≤ 2**bits``).
    """

    bits: int | None = None
    levels: int | None = None
    bucket_size: int = 128
    norm: str = "l2"
    name = "qsgd"

    def __post_init__(self) -> None:
        if (self.bits is None) == (self.levels is None):
            raise ValueError("QSGD needs exactly one of bits= or levels=")
        if self.bits is not None and (not _is_int(self.bits) or self.bits not in _BITS):
            raise ValueError(f"QSGD bits must be one of {_BITS}, got {self.bits!r}")
        if self.levels is not None and (not _is_int(self.levels) or not 1 <= self.levels <= 127):
            raise ValueError(f"QSGD levels must be an integer in [1, 127], got {self.levels!r}")
        if not _is_int(self.bucket_size) or self.bucket_size < 1:
            raise ValueError(f"QSGD bucket_size must be a positive integer, got {self.bucket_size!r}")
        if self.norm not in _NORMS:
            raise ValueError(f"QSGD norm must be one of {_NORMS}, got {self.norm!r}")

    @property
    def s(self) -> int:
        """Quantization levels per sign (codes span ``[0, 2s]``)."""
        return self.levels if self.levels is not None else 2 ** (self.bits - 1) - 1

    @property
    def group_size(self) -> int:
        return self.bucket_size

    @property
    def code_bits(self) -> int:
        """Bits per packed code."""
        return self.bits if self.bits is not None else next(b for b in _BITS if 2 * self.s + 1 <= 2**b)

    def variance_bound(self, numel: int) -> float:
        """``c`` with ``E‖Q(x) − x‖² ≤ c·‖x‖²`` for any ``x`` of ``numel`` elements.

        Per bucket, Lemma 3.1 of Alistarh et al. gives ``min(d_b/s², √d_b/s)``
        for the l2 norm. It holds for ``norm="max"`` too: each element's
        variance is ``(scale/s)²·p(1−p)`` with ``p`` the fractional part of
        ``|x_i|·s/scale``, at most ``(scale/s)²/4`` and at most
        ``(scale/s)·|x_i|``; sum, then use ``max|x_b| ≤ ‖x_b‖₂`` and
        ``‖x_b‖₁ ≤ √d_b·‖x_b‖₂``. Summed over buckets, the largest bucket
        (``d_b = min(bucket_size, numel)``) bounds the whole tensor.
        """
        d_b = min(self.bucket_size, numel)
        return min(d_b / self.s**2, math.sqrt(d_b) / self.s)

    def _normalized(self, buckets: Tensor) -> tuple[Tensor, Tensor]:
        """``(scales, y)``: per-bucket scales and ``y = |x|/scale · s`` per element, both float32.

        Computed from ``u = |x|/max|x_b|`` so the l2 norm neither underflows for
        tiny buckets nor overflows before the final product: ``scale = max·c``
        and ``y = u·s/c`` with ``c = ‖u‖₂`` (l2) or ``1`` (max). Since ``u ≤ 1 ≤ c``,
        ``y ≤ s``. A zero bucket gets scale 0 and ``y = 0``.
        """
        mags = buckets.abs()
        top = mags.amax(dim=1, keepdim=True)
        u = mags.div_(torch.where(top > 0, top, torch.ones_like(top)))
        if self.norm == "max":
            return top.squeeze(1), u.mul_(self.s)
        c = torch.linalg.vector_norm(u, dim=1, keepdim=True).clamp_(min=1.0)
        return (top * c).squeeze(1), u.mul_(self.s / c)

    def encode(self, x: Tensor, ctx: TensorContext) -> Tensor:
        flat = x.reshape(-1).to(torch.float32)
        numel = flat.numel()
        scales, y = self._normalized(self.groups(flat))
        if not bool(torch.isfinite(scales).all()):
            raise ValueError(f"qsgd: a bucket norm of {ctx.key!r} is not finite (NaN/Inf input or float32 overflow)")
        y = y.reshape(-1)[:numel]
        floor = y.floor()
        gen = rng.generator(ctx.seed, ctx.step, f"{ctx.key}/rank{ctx.rank}")
        xi = torch.rand(numel, generator=gen).to(flat.device)
        level = floor + (xi < y - floor).to(torch.float32)
        codes = torch.where(flat < 0, -level, level).add_(self.s).to(torch.uint8)
        return torch.cat([scales.view(torch.uint8), ops.pack_bits(codes, self.code_bits)])

    def decode_add(self, payload: Tensor, out: Tensor, ctx: TensorContext) -> None:
        numel = out.numel()
        scales, body = self.split_scaled(payload, out.shape, ctx)
        codes = ops.unpack_bits(body, self.code_bits, numel)
        if numel and int(codes.max()) > 2 * self.s:
            raise WireFormatError(f"qsgd: code {int(codes.max())} exceeds 2s = {2 * self.s} ({ctx.key})")
        levels = self.groups(codes.to(torch.float32).sub_(self.s))
        out.add_(levels.mul_((scales / self.s).unsqueeze(1)).reshape(-1)[:numel])
