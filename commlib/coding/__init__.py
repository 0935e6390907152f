"""Gradient coding and sequential gradient coding (layer 1: math, no communication).

* :mod:`.codes` — (n, s) gradient codes of Tandon et al. (ICML 2017): fractional and
  cyclic repetition, with exact or least-squares (fp64, residual-checked) decoding.
* :mod:`.schemes` — deterministic schedulers over rounds: no coding, GC(s), and the
  sequential schemes SR-SGC(B, W, λ) and M-SGC(B, W, λ) of Krishnan, Ebrahimi, Khisti
  (ICLR 2023). Each exposes its load, its delay T, every worker's tasks per round as a
  pure function of past straggler masks, and the decode of job t by round t + T.
* :mod:`.tasks` — tasks, decodes, per-sample weights and the n-bit straggler mask.
* :mod:`.stragglers` — straggler models, patterns, delays and the cutoff rule.

The user guide is ``docs/gradient_coding.md``.
"""

from __future__ import annotations

from .codes import (
    CODE_KINDS,
    RESIDUAL_TOLERANCE,
    CyclicRepetitionCode,
    DecodingError,
    FractionalRepetitionCode,
    GradientCode,
    make_code,
)
from .schemes import GC, MSGC, SRSGC, NoCoding, RoundOutcome, Scheme, make_scheme
from .tasks import Decode, Task, pack_mask, sample_weights, unit_bounds, unpack_mask

__all__ = ["GradientCode", "FractionalRepetitionCode", "CyclicRepetitionCode", "make_code", "DecodingError",
           "CODE_KINDS", "RESIDUAL_TOLERANCE", "Scheme", "RoundOutcome", "NoCoding", "GC", "SRSGC", "MSGC",
           "make_scheme", "Task", "Decode", "sample_weights", "unit_bounds", "pack_mask", "unpack_mask"]
