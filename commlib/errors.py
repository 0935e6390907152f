"""Exceptions raised by commlib; each names the problem it reports."""

from __future__ import annotations

__all__ = ["CommlibError", "ConfigMismatchError", "ProtocolMismatchError", "StateDivergenceError", "WireFormatError"]


class CommlibError(RuntimeError):
    """Base class of commlib's runtime errors."""


class ConfigMismatchError(CommlibError):
    """Ranks were configured differently (their config fingerprints disagree)."""


class ProtocolMismatchError(CommlibError):
    """Workers issued collectives that do not match (kind, dtype or shape)."""


class StateDivergenceError(CommlibError):
    """State that must be identical on every rank (e.g. error feedback's global estimate h) differs."""


class WireFormatError(CommlibError, ValueError):
    """A payload received from a peer is malformed (size, index range, non-finite values)."""
