"""Sketched gradient exchange with a fresh shared sketch every step (Song, Wang, Yu & Zhang, ICML 2023).

For one tensor ``g`` (``d`` elements) of rank ``i`` at step ``t``:

1. every rank builds the same ``R_t ∈ ℝ^{s×d}`` (``s ≈ d/ratio``) from seeds
   mixed from ``(seed, t, parameter name)`` (:func:`commlib.rng.mixed_seed`);
   it changes every step, so no direction stays unsynchronised;
2. payload ``y_i = R_t g_i`` (``s`` float32 values);
3. ordered all-reduce: ``Σ_i y_i = R_t Σ_i g_i`` (linearity);
4. decode ``R_tᵀ(Σ_i y_i)/n``, where

   * ``mode="unbiased"``: ``R`` is scaled so that ``E[RᵀR] = I`` (for SRHT,
     ``√(d/s)`` times orthonormal rows, so ``RᵀR = (d/s)·P``) and ``c = 1``; the
     result is unbiased with relative error ``≈ √(d/s − 1)``: scale the
     learning rate down by about ``s/d``;
   * ``mode="projection"``: ``R`` is the orthonormal-row SRHT (``RRᵀ = I``), so
     the result is ``P·mean(g)`` with ``P = RᵀR`` an orthogonal projection
     (``P² = P`` when ``d`` is a multiple of the block), contractive with
     ``E‖Pg − g‖² ≤ (1 − s/d)‖g‖²``. Use it with error feedback
     (:class:`commlib.feedback.EF14`): ``p = e + g``, send ``R p``,
     ``e ← p − Rᵀ R p``, step with ``Rᵀ ȳ`` ("EF-projection").

Families: ``"srht"`` (block SRHT), ``"countsketch"`` (``rows`` count-sketch
rows), ``"gaussian"`` (block Gaussian, a reference for small ``d``); see
:mod:`.operators`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ... import rng
from ..base import LinearCompressor, TensorContext, WireBytes
from ..randk import uniform_subset
from .operators import BlockGaussianOperator, BlockSRHTOperator, CountSketchOperator, SketchOperator

__all__ = ["Sketch", "FAMILIES", "MODES", "check_ratio"]

FAMILIES = ("srht", "countsketch", "gaussian")
MODES = ("unbiased", "projection")
_MAX_BLOCK = 2**24


def check_ratio(ratio: object, owner: str) -> float:
    """``ratio`` (= d/s) as a float ``>= 1``, else ``ValueError`` naming ``owner``."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"{owner} ratio (d/s) must be a finite number >= 1, got {ratio!r}")
    return float(ratio)


def _check_positive_int(value: object, what: str, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"{what} must be an integer in [1, {high}], got {value!r}")


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass
class Sketch(LinearCompressor):
    """Exchange ``R_t g`` (``s ≈ d/ratio`` floats) by all-reduce; decode ``R_tᵀ ȳ`` (see the module doc).

    ``block``: SRHT and Gaussian block length (a power of two for SRHT; capped at
    the tensor's padded length); each block keeps ``round(d/(ratio·blocks))``
    rows, all of them when ``ratio == 1``. ``rows``: count-sketch rows.
    """

    ratio: float = 20.0
    family: str = "srht"
    mode: str = "unbiased"
    block: int = 4096
    rows: int = 1
    name = "sketch"

    def __post_init__(self) -> None:
        check_ratio(self.ratio, "Sketch")
        if self.family not in FAMILIES:
            raise ValueError(f"Sketch family must be one of {FAMILIES}, got {self.family!r}")
        if self.mode not in MODES:
            raise ValueError(f"Sketch mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "projection" and self.family != "srht":
            raise ValueError(f"Sketch mode 'projection' needs orthonormal rows (family 'srht'), got {self.family!r}")
        _check_positive_int(self.block, "Sketch block", _MAX_BLOCK)
        if self.family == "srht" and self.block & (self.block - 1):
            raise ValueError(f"Sketch block must be a power of two for SRHT, got {self.block}")
        _check_positive_int(self.rows, "Sketch rows", 64)
        # key -> ((seed, step, numel), operator): encode and decode of one step build R once.
        self._built: dict[str, tuple[tuple[int, int, int], SketchOperator]] = {}

    def layout(self, numel: int) -> tuple[int, int, int]:
        """``(block, blocks, rows per block)`` for SRHT and Gaussian, ``(cols, 1, rows)`` for count sketch."""
        if numel < 1:
            raise ValueError(f"Sketch needs a non-empty tensor, got {numel} elements")
        if self.family == "countsketch":
            cols = max(1, round(numel / (self.ratio * self.rows)))
            return cols, 1, self.rows
        block = min(self.block, _next_pow2(numel) if self.family == "srht" else numel)
        blocks = -(-numel // block)
        if self.ratio == 1:  # every row: R is orthogonal on the (padded) blocks
            return block, blocks, block
        per_block = min(block, max(1, round(numel / (self.ratio * blocks))))
        return block, blocks, per_block

    def sketch_size(self, numel: int) -> int:
        """s, the payload length for a tensor of ``numel`` elements."""
        a, b, c = self.layout(numel)
        return a * c if self.family == "countsketch" else b * c

    def compressible(self, shape: torch.Size) -> bool:
        return shape.numel() > 0

    def wire_bytes(self, shape: torch.Size) -> WireBytes:
        return WireBytes(values=4 * self.sketch_size(shape.numel()))

    def operator(self, numel: int, ctx: TensorContext) -> SketchOperator:
        """``R_t`` for tensor ``ctx.key`` at ``ctx.step``: identical on every rank, fresh every step."""
        tag = (ctx.seed, ctx.step, numel)
        cached = self._built.get(ctx.key)
        if cached is not None and cached[0] == tag:
            return cached[1]
        op = self._build(numel, ctx)
        self._built[ctx.key] = (tag, op)
        return op

    def _build(self, numel: int, ctx: TensorContext) -> SketchOperator:
        a, _, c = self.layout(numel)
        key = f"{ctx.key}/sketch-{self.family}"
        if self.family == "countsketch":
            seeds = [rng.mixed_seed(ctx.seed, ctx.step, f"{key}/row{j}") for j in range(c)]
            return CountSketchOperator(numel, a, seeds)
        if self.family == "gaussian":
            return BlockGaussianOperator(numel, a, c, rng.generator(ctx.seed, ctx.step, key))
        rows = uniform_subset(a, c, rng.generator(ctx.seed, ctx.step, f"{key}/rows"))
        signs = rng.mixed_seed(ctx.seed, ctx.step, f"{key}/signs")
        return BlockSRHTOperator(numel, a, rows, signs, orthonormal=self.mode == "projection")

    def encode(self, x: Tensor, ctx: TensorContext) -> Tensor:
        return self.operator(x.numel(), ctx).apply(x)

    def decode(self, total: Tensor, shape: torch.Size, ctx: TensorContext, out: Tensor | None = None) -> Tensor:
        # transpose validates the payload
        return self.operator(shape.numel(), ctx).transpose(total, out=out).view(shape)

    def compress(self, x: Tensor, ctx: TensorContext) -> Tensor:
        """This rank's dense ``C(x) = RᵀRx`` (float32), as the exchange decodes its own payload."""
        return self.decode(self.encode(x, ctx), x.shape, ctx)
