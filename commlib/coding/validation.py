"""Argument checks shared by :mod:`commlib.coding`: each failure is a ``ValueError`` naming the problem."""

from __future__ import annotations

import numpy as np

__all__ = ["check_int", "as_mask"]


def check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; a clear ``ValueError`` otherwise (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def as_mask(mask: object, n: int, name: str = "mask") -> np.ndarray:
    """A length-``n`` boolean numpy array from a sequence, array or tensor of bools (or 0/1)."""
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()  # type: ignore[union-attr]
    arr = np.asarray(mask)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.integer) or not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans (or 0/1), got dtype {arr.dtype}")
        arr = arr.astype(bool)
    return arr
