"""Error feedback (layer 1): EF14, EF21, EF21-SGDM and EControl as per-key state machines.

Math only, no communication. Each method splits a step in two phases,
``message(key, g, ctx) -> u`` (pure) and ``commit(key, g, C(u), mean C(u)) -> out``,
so the DDP hook, the simulator and :func:`commlib.feedback.simulate.run` can
drive the same objects. See :mod:`commlib.feedback.base` and
:mod:`commlib.feedback.methods`.
"""

from __future__ import annotations

from .base import ErrorFeedback, default_eta, is_finite, local_compress, require_local_compressor
from .methods import EF14, EF21, EF21SGDM, EControl, NoFeedback

__all__ = [
    "EF14",
    "EF21",
    "EF21SGDM",
    "EControl",
    "ErrorFeedback",
    "NoFeedback",
    "default_eta",
    "is_finite",
    "local_compress",
    "require_local_compressor",
]
