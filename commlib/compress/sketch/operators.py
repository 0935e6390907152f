"""Sketch matrices ``R ∈ ℝ^{s×d}``: count sketch, block SRHT and block Gaussian, as linear operators.

Each operator applies ``R`` (:meth:`SketchOperator.apply`, ``d → s``) and its
transpose (:meth:`SketchOperator.transpose`, ``s → d``) without materialising
``R`` (except the Gaussian reference), and states two facts the compressors
rely on:

* ``unbiased_scale`` ``c`` with ``E[c·RᵀR] = I`` (expectation over the seed), so
  ``c·Rᵀ(Rg)`` is an unbiased estimate of ``g`` with relative error ≈ ``√(d/s − 1)``;
* ``orthonormal``: ``RRᵀ = I`` exactly (then ``‖R‖_op = 1``, ``P = RᵀR`` is an
  orthogonal projection and a Gaussian mechanism in sketch space keeps the
  sensitivity of the input).

The families (notation of Song, Wang, Yu & Zhang, ICML 2023):

* :class:`CountSketchOperator` (Charikar, Chen & Farach-Colton, 2002): ``r``
  independent rows of ``c`` buckets; each coordinate goes to one bucket per row
  with a random sign (bucket hash 2-wise, sign hash 4-wise independent, computed
  from the seed by :func:`commlib.ops.count_sketch_add_`); ``R = [C_1; …; C_r]/√r``.
* :class:`BlockSRHTOperator` (Ailon & Chazelle, 2006): per block of ``B = 2^q``
  coordinates, random signs ``D``, orthonormal Walsh–Hadamard ``H/√B`` and
  ``m`` of the ``B`` rows (:func:`commlib.ops.srht`). Orthonormal variant
  ``R = SHD``; unbiased variant ``√(B/m)·SHD``.
* :class:`BlockGaussianOperator`: block-diagonal, ``m × B`` i.i.d. ``N(0, 1/m)``
  per block, drawn from a seeded generator. A reference for small ``d``: it
  stores ``d·m`` floats.

Operators are built from explicit seeds; :mod:`.compressor` derives them from
``(seed, step, parameter name)`` so every rank builds the same ``R``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ... import ops
from ...errors import WireFormatError

__all__ = ["SketchOperator", "CountSketchOperator", "BlockSRHTOperator", "BlockGaussianOperator"]


def _check_input(x: Tensor, numel: int, what: str) -> Tensor:
    """``x`` as a flat float32 vector of ``numel`` elements, else ``ValueError``."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"{what}: expected a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.numel() != numel:
        raise ValueError(f"{what}: expected {numel} elements, got {x.numel()}")
    return x.reshape(-1).to(torch.float32)


def _check_sketch(y: Tensor, size: int, what: str) -> Tensor:
    """``y`` as a flat float32 sketch of ``size`` elements, else :class:`WireFormatError` (it may come from peers)."""
    if not isinstance(y, Tensor) or y.dtype != torch.float32 or y.numel() != size:
        got = f"{y.dtype} with {y.numel()} elements" if isinstance(y, Tensor) else type(y).__name__
        raise WireFormatError(f"{what}: expected a float32 sketch of {size} values, got {got}")
    return y.reshape(-1)


class SketchOperator(ABC):
    """A linear map ``R: ℝ^d → ℝ^s`` with its transpose."""

    #: d, the input length.
    numel: int
    #: s, the sketch length.
    size: int
    #: ``c`` with ``E[c·RᵀR] = I``.
    unbiased_scale: float
    #: Whether ``RRᵀ = I`` exactly.
    orthonormal: bool

    @abstractmethod
    def apply(self, x: Tensor) -> Tensor:
        """``R x``: ``x`` has ``numel`` elements (any shape); returns a float32 vector of ``size``."""

    @abstractmethod
    def transpose(self, y: Tensor, out: Tensor | None = None) -> Tensor:
        """``Rᵀ y``: ``y`` is a float32 vector of ``size``; returns a float32 vector of ``numel``.

        ``out``: a contiguous float32 vector of ``numel`` to write ``Rᵀ y`` into
        (returned), sharing no memory with ``y``; ``y`` is validated first.
        """


class CountSketchOperator(SketchOperator):
    """``R = [C_1; …; C_r]/√r``: ``r`` independent count-sketch rows of ``cols`` buckets, one seed per row.

    Row ``j`` is a one-row sketch with its own hash seed ``row_seeds[j]``, so
    both ``C_j x`` (:func:`commlib.ops.count_sketch_add_`) and ``C_jᵀ y_j`` (the
    one-row :func:`commlib.ops.count_unsketch`, a gather) use the native kernels.
    ``E[C_jᵀC_j] = I`` (distinct coordinates collide with random signs), so
    ``E[RᵀR] = I``. Not orthonormal: ``‖R‖_op² = max over rows of the largest bucket load``.
    """

    orthonormal = False
    unbiased_scale = 1.0

    def __init__(self, numel: int, cols: int, row_seeds: list[int]) -> None:
        if numel < 1 or cols < 1 or not row_seeds:
            raise ValueError(f"count sketch needs numel, cols and rows >= 1, got {numel}, {cols}, {len(row_seeds)}")
        self.numel, self.cols, self.row_seeds = numel, cols, list(row_seeds)
        self.size = len(self.row_seeds) * cols
        self._norm = 1.0 / math.sqrt(len(self.row_seeds))

    def apply(self, x: Tensor) -> Tensor:
        flat = _check_input(x, self.numel, "count sketch")
        table = torch.zeros(len(self.row_seeds), self.cols, dtype=torch.float32, device=flat.device)
        for j, seed in enumerate(self.row_seeds):
            ops.count_sketch_add_(table[j : j + 1], flat, seed)
        return table.view(-1).mul_(self._norm)

    def transpose(self, y: Tensor, out: Tensor | None = None) -> Tensor:
        table = _check_sketch(y, self.size, "count sketch").view(len(self.row_seeds), self.cols)
        (first, *others), numel = self.row_seeds, self.numel
        out = ops.count_unsketch(table[:1].contiguous(), first, 0, numel, out=out)
        for j, seed in enumerate(others, start=1):
            out.add_(ops.count_unsketch(table[j : j + 1].contiguous(), seed, 0, numel))
        return out.mul_(self._norm)


class BlockSRHTOperator(SketchOperator):
    """Block SRHT: per block of ``block`` coordinates, ``S·(H/√B)·D`` keeping rows ``rows`` (zero-padded tail).

    Orthonormal variant (``orthonormal=True``): ``RRᵀ = I`` when ``d`` is a
    multiple of ``block``; with a padded tail block ``R`` is a column submatrix
    of such a matrix, so still ``‖R‖_op ≤ 1`` and ``0 ≼ RᵀR ≼ I``. Each random
    sign makes ``E[RᵀR] = (m/B)·I`` (all Hadamard entries have magnitude
    ``1/√B``), so ``unbiased_scale = B/m``. The unbiased variant is
    ``√(B/m)`` times the orthonormal one, with ``unbiased_scale = 1``.
    """

    def __init__(self, numel: int, block: int, rows: Tensor, sign_seed: int, orthonormal: bool) -> None:
        if numel < 1:
            raise ValueError(f"SRHT needs numel >= 1, got {numel}")
        self.numel, self.block, self.rows, self.sign_seed = numel, block, rows, sign_seed
        self.blocks = -(-numel // block)
        self.size = self.blocks * rows.numel()
        self.orthonormal = orthonormal
        ratio = block / rows.numel()
        self._gain = 1.0 if orthonormal else math.sqrt(ratio)
        self.unbiased_scale = ratio if orthonormal else 1.0

    def apply(self, x: Tensor) -> Tensor:
        flat = _check_input(x, self.numel, "SRHT")
        y = ops.srht(flat, self.block, self.rows.to(flat.device), self.sign_seed).reshape(-1)
        return y if self._gain == 1.0 else y.mul_(self._gain)

    def transpose(self, y: Tensor, out: Tensor | None = None) -> Tensor:
        coeffs = _check_sketch(y, self.size, "SRHT").view(self.blocks, self.rows.numel()).contiguous()
        out = ops.srht_transpose(coeffs, self.block, self.rows.to(coeffs.device), self.numel, self.sign_seed, out=out)
        return out if self._gain == 1.0 else out.mul_(self._gain)


class BlockGaussianOperator(SketchOperator):
    """Block-diagonal Gaussian: per block of ``block`` coordinates an ``m × block`` matrix of i.i.d. ``N(0, 1/m)``.

    ``E[RᵀR] = I``. The matrices (``blocks × m × block`` floats) are drawn once
    from ``generator`` at construction; a reference sketch for small ``d``.
    """

    orthonormal = False
    unbiased_scale = 1.0

    def __init__(self, numel: int, block: int, rows: int, generator: torch.Generator) -> None:
        if numel < 1 or block < 1 or rows < 1:
            raise ValueError(f"block Gaussian needs numel, block and rows >= 1, got {numel}, {block}, {rows}")
        self.numel, self.block, self.rows = numel, block, rows
        self.blocks = -(-numel // block)
        self.size = self.blocks * rows
        self.matrix = torch.randn(self.blocks, rows, block, generator=generator).div_(math.sqrt(rows))

    def _padded(self, flat: Tensor) -> Tensor:
        pad = self.blocks * self.block - self.numel
        return torch.cat([flat, flat.new_zeros(pad)]) if pad else flat

    def apply(self, x: Tensor) -> Tensor:
        flat = _check_input(x, self.numel, "block Gaussian")
        blocks = self._padded(flat).view(self.blocks, self.block, 1)
        return torch.bmm(self.matrix.to(flat.device), blocks).reshape(-1)

    def transpose(self, y: Tensor, out: Tensor | None = None) -> Tensor:
        coeffs = _check_sketch(y, self.size, "block Gaussian").view(self.blocks, self.rows, 1)
        full = torch.bmm(self.matrix.to(coeffs.device).transpose(1, 2), coeffs).reshape(-1)[: self.numel]
        if out is None:
            return full.contiguous()
        if out.dtype != torch.float32 or out.shape != (self.numel,) or not out.is_contiguous():
            raise ValueError(f"block Gaussian: out must be a contiguous float32 vector of {self.numel} elements, "
                             f"got {out.dtype} of shape {tuple(out.shape)}")
        return out.copy_(full)
