"""QSGD: stochastic uniform quantization per bucket (Alistarh et al., NeurIPS 2017).

The flat tensor is cut into buckets of ``bucket_size`` consecutive elements
(the last one shorter). For a bucket ``x_b`` with ``scale = ‖x_b‖₂`` (or
``max|x_b|`` with ``norm="max"``) and ``s`` levels, each element becomes

    Q(x_i) = sign(x_i) · scale · level_i / s,
    level_i = floor(y_i) + [ξ_i < y_i − floor(y_i)],  y_i = |x_i|/scale · s,  ξ_i ~ U[0, 1),

so ``E Q(x_i) = x_i`` (unbiased), and for either norm

    E‖Q(x_b) − x_b‖² ≤ min(d_b/s², √d_b/s) · ‖x_b‖²   (Lemma 3.1 of the paper).

Encoding is one fused kernel, :func:`commlib.ops.qsgd_encode` (C++ when built,
else its pure-torch twin): per bucket the norm (in float64, so tiny buckets
neither underflow nor overflow), ``y ≤ s``, the rounding, and
``code = sign·level + s ∈ [0, 2s]`` packed with ``bits`` bits each. ξ_i comes
from a counter-based hash of ``(mixed_seed(seed, step, key/rank r), i)``: each
rank its own stream, reproducible from the seeds and independent of threads.
Decoding (:func:`commlib.ops.qsgd_decode_add`) validates every scale and code,
then adds ``scale/s · (code − s)`` in place. A zero bucket has scale 0 and all
codes ``s``.

Wire format (fixed by shape and config): one float32 scale per bucket,
then ``packed_length(d, bits)`` bytes of codes.
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

    def encode(self, x: Tensor, ctx: TensorContext) -> Tensor:
        flat = x.reshape(-1).to(torch.float32)
        if not ops.all_finite(flat):
            raise ValueError(f"qsgd: {ctx.key!r} holds NaN or Inf")
        seed = rng.mixed_seed(ctx.seed, ctx.step, f"{ctx.key}/rank{ctx.rank}")
        try:
            scales, packed = ops.qsgd_encode(flat, self.bucket_size, self.s, self.code_bits, self.norm == "max", seed)
        except ValueError as exc:
            raise ValueError(f"qsgd: cannot encode {ctx.key!r}: {exc}") from exc
        return torch.cat([scales.view(torch.uint8), packed])

    def check_payload(self, payload: Tensor, shape: torch.Size, ctx: TensorContext) -> None:
        """The length and scales, then every code ``≤ 2s`` on the packed bytes (:func:`commlib.ops.qsgd_check`)."""
        scales, body = self.split_scaled(payload, shape, ctx)
        try:
            ops.qsgd_check(scales, body, shape.numel(), self.bucket_size, self.s, self.code_bits)
        except ValueError as exc:
            raise WireFormatError(f"qsgd: malformed payload for {ctx.key!r}: {exc}") from exc

    def decode_add(self, payload: Tensor, out: Tensor, ctx: TensorContext, subtract: bool = False) -> None:
        scales, body = self.split_scaled(payload, out.shape, ctx)
        try:
            ops.qsgd_decode_add(out, scales, body, self.bucket_size, self.s, self.code_bits, subtract)
        except ValueError as exc:
            raise WireFormatError(f"qsgd: malformed payload for {ctx.key!r}: {exc}") from exc
