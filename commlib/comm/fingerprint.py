"""Config fingerprint: ranks with different settings fail with a clear error on every rank.

The configuration (plain values) is serialised canonically, hashed with
SHA-256, and the first 8 bytes are all-gathered as an int64 tensor — no
pickled object crosses ranks. Every rank compares all fingerprints, so every
rank raises, and none hangs waiting for a collective the others never issue.
"""

from __future__ import annotations

import hashlib
import json

import torch

from ..errors import ConfigMismatchError
from .collectives import AllGather, Protocol

__all__ = ["fingerprint", "verify_same_config"]


def fingerprint(config: dict[str, object]) -> int:
    """A signed 64-bit hash of ``config`` (canonical JSON, SHA-256)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)


def verify_same_config(config: dict[str, object], rank: int, device: torch.device | str = "cpu") -> Protocol[None]:
    """Protocol: all-gather the fingerprint of ``config``; raise ``ConfigMismatchError`` if any rank differs.

    ``device`` is where the backend wants its tensors (CUDA for NCCL).
    """
    mine = fingerprint(config)
    everyone = yield AllGather(torch.tensor([mine], dtype=torch.int64, device=device))
    values = [int(v) for v in everyone.reshape(-1)]
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise ConfigMismatchError(
            f"commlib config mismatch: ranks {differ} differ from rank 0 "
            f"(fingerprints {values}); this is rank {rank} with config "
            f"{json.dumps(config, sort_keys=True, default=str)}"
        )
