"""What a worker computes and how the master combines it: tasks, decodings, per-sample weights, masks.

A job's batch of G samples is cut into ``units`` contiguous units (unit u holds samples
⌊uG/U⌋..⌊(u+1)G/U⌋−1, so sizes differ by at most one). With the job's gradient written
g = ∇ (1/G)·Σ_x ℓ(x) = Σ_u g_u, a :class:`Task` asks for the linear combination
Σ_k coeffs[k]·g_{units[k]}. A worker computes it in one backward pass: weight sample x by
the coefficient of its unit (:func:`sample_weights`), then differentiate (1/G)·Σ_x w_x ℓ(x).

A :class:`Decode` lists which received results to combine, and with which coefficients,
to get the job's full gradient. Results are keyed by ``(round, worker, slot)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import WireFormatError
from .validation import as_mask, check_int

__all__ = ["Task", "Decode", "ResultKey", "unit_bounds", "sample_weights", "pack_mask", "unpack_mask"]

ResultKey = tuple[int, int, int]
"""``(round, worker, slot)``: where and when a coded result was computed."""


@dataclass(frozen=True)
class Task:
    """One result a worker sends in a round: Σ_k ``coeffs[k]``·g_``units[k]`` of job ``job``'s batch.

    ``slot`` numbers the worker's results within the round (0 for GC and SR-SGC, 0..K−1 for
    M-SGC); ``kind`` is ``"coded"`` (a gradient-code row) or ``"uncoded"`` (a plain chunk).
    """

    job: int
    slot: int
    units: tuple[int, ...]
    coeffs: tuple[float, ...]
    kind: str


@dataclass(frozen=True)
class Decode:
    """Job ``job``'s full gradient is Σ coeff·result[(round, worker, slot)] over ``terms``."""

    job: int
    terms: tuple[tuple[int, int, int, float], ...]

    @property
    def keys(self) -> tuple[ResultKey, ...]:
        """The results the decode needs."""
        return tuple((r, w, s) for r, w, s, _ in self.terms)

    def combine(self, results: Mapping[ResultKey, Tensor]) -> Tensor:
        """Σ coeff·result, accumulated in fp64 and returned in the results' dtype.

        Raises ``KeyError`` naming the first missing result and ``ValueError`` when shapes differ.
        """
        total: Tensor | None = None
        dtype = None
        for r, w, s, c in self.terms:
            if (r, w, s) not in results:
                raise KeyError(f"job {self.job}: result of worker {w}, round {r}, slot {s} is missing")
            x = results[(r, w, s)]
            if total is None:
                total, dtype = torch.zeros(x.shape, dtype=torch.float64, device=x.device), x.dtype
            elif x.shape != total.shape:
                raise ValueError(f"job {self.job}: result ({r}, {w}, {s}) has shape {tuple(x.shape)}, "
                                 f"expected {tuple(total.shape)}")
            total.add_(x.to(torch.float64), alpha=c)
        if total is None:
            raise ValueError(f"job {self.job}: a decode needs at least one term")
        return total.to(dtype)


def unit_bounds(units: int, batch_size: int) -> np.ndarray:
    """Start offsets of the ``units`` units of a batch of ``batch_size`` samples, plus the end (length units+1)."""
    units = check_int(units, "units", 1)
    batch_size = check_int(batch_size, "batch_size", units)
    return (np.arange(units + 1) * batch_size) // units


def sample_weights(task: Task, units: int, batch_size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-sample weights w (length ``batch_size``) with Σ_x w_x ∇ℓ(x)/G = the task's coded gradient.

    Samples outside the task's units get weight 0; a worker may skip them.
    """
    bounds = unit_bounds(units, batch_size)
    if any(not 0 <= u < units for u in task.units):
        raise ValueError(f"task units {task.units} out of range for {units} units")
    per_unit = torch.zeros(units, dtype=dtype)
    per_unit[list(task.units)] = torch.tensor(task.coeffs, dtype=dtype)
    return torch.repeat_interleave(per_unit, torch.as_tensor(np.diff(bounds)))


def pack_mask(mask: object, n: int) -> Tensor:
    """An n-worker straggler mask as ⌈n/8⌉ uint8 bytes (bit i = worker i, MSB first): what the master broadcasts."""
    return torch.from_numpy(np.packbits(as_mask(mask, n)))


def unpack_mask(packed: Tensor, n: int) -> np.ndarray:
    """Inverse of :func:`pack_mask`; raises :class:`WireFormatError` on a wrong size, dtype or padding bits."""
    n = check_int(n, "n", 1)
    nbytes = (n + 7) // 8
    if packed.dtype != torch.uint8 or packed.shape != (nbytes,):
        raise WireFormatError(f"straggler mask for {n} workers must be {nbytes} uint8 bytes, "
                              f"got dtype {packed.dtype} and shape {tuple(packed.shape)}")
    bits = np.unpackbits(packed.cpu().numpy())
    if bits[n:].any():
        raise WireFormatError(f"straggler mask for {n} workers has padding bits set")
    return bits[:n].astype(bool)
