"""Sequential schedulers over rounds: no coding, GC(s), SR-SGC(B, W, λ), M-SGC(B, W, λ).

See :mod:`commlib.coding.schemes.base` for the round API every scheme exposes.
"""

from __future__ import annotations

from .base import DECODED, MISSED, PENDING, RoundOutcome, Scheme
from .gc import GC, NoCoding, SingleCodeScheme
from .multiplexed import MSGC
from .selective_repeat import SRSGC, sr_sgc_s

__all__ = ["Scheme", "RoundOutcome", "SingleCodeScheme", "GC", "NoCoding", "SRSGC", "MSGC", "sr_sgc_s",
           "make_scheme", "PENDING", "DECODED", "MISSED"]


def make_scheme(spec: str, n: int, jobs: int, *, code: str = "frc", seed: int = 0) -> Scheme:
    """A scheme from a spec string: ``"none"``, ``"gc:S"``, ``"sr-sgc:B,W,LAMBDA"`` or ``"m-sgc:B,W,LAMBDA"``."""
    if not isinstance(spec, str):
        raise ValueError(f"scheme spec must be a string, got {spec!r}")
    kind, _, rest = spec.strip().lower().partition(":")
    try:
        params = [int(p) for p in rest.split(",")] if rest else []
    except ValueError:
        raise ValueError(f"scheme spec {spec!r}: parameters must be integers separated by commas") from None
    expected = {"none": 0, "gc": 1, "sr-sgc": 3, "m-sgc": 3}
    if kind not in expected:
        raise ValueError(f"unknown scheme {kind!r} in {spec!r}; expected one of {sorted(expected)}")
    if len(params) != expected[kind]:
        raise ValueError(f"scheme {kind!r} takes {expected[kind]} parameter(s), got {len(params)} in {spec!r}")
    if kind == "none":
        return NoCoding(n, jobs)
    if kind == "gc":
        return GC(n, params[0], jobs, code=code, seed=seed)
    cls = SRSGC if kind == "sr-sgc" else MSGC
    return cls(n, *params, jobs, code=code, seed=seed)
