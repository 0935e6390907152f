"""Shared, explicit randomness (DESIGN.md, principle 4).

Every random choice in commlib (random-k indices, PowerSGD's initial Q, QSGD's
rounding, sketch matrices) draws from a ``torch.Generator`` seeded from
``(seed, step, key)``. The mix is a SHA-256 of the three values, so it is the
same in every process and every Python run (unlike ``hash()``), and the global
RNG is never touched.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["mixed_seed", "generator"]


def mixed_seed(seed: int, step: int, key: str) -> int:
    """A 63-bit seed derived from ``(seed, step, key)``, identical on every rank."""
    digest = hashlib.sha256(f"{int(seed)}/{int(step)}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, step: int, key: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with :func:`mixed_seed`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(mixed_seed(seed, step, key))
    return gen
