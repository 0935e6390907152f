"""Straggler models for gradient coding: checkers, random and adversarial patterns, delays, the cutoff rule.

* :mod:`.models` — :class:`PerRoundModel` (at most s per round) and :class:`BurstyModel`
  ((B, W, λ)-bursty), exact round-by-round checkers.
* :mod:`.patterns` — i.i.d. and Gilbert–Elliott patterns, :func:`conforming` filtering,
  the :class:`BurstyAdversary` of worst-case conforming patterns.
* :mod:`.delays` — :class:`ParametricDelays` and recorded traces (:func:`load_trace`) as a
  :class:`DelayTrace` of per-round, per-worker durations that scale with load.
* :mod:`.cutoff` — the master's (1 + μ)·fastest cutoff with wait-out fallbacks.
"""

from __future__ import annotations

from .cutoff import FALLBACKS, Cutoff, RoundTiming
from .delays import DelayTrace, Noise, ParametricDelays, load_trace
from .models import BurstyModel, PerRoundModel, StragglerModel, as_pattern
from .patterns import BurstyAdversary, adversarial_pattern, conforming, gilbert_elliott_pattern, iid_pattern

__all__ = ["StragglerModel", "PerRoundModel", "BurstyModel", "as_pattern", "iid_pattern", "gilbert_elliott_pattern",
           "conforming", "BurstyAdversary", "adversarial_pattern", "Noise", "ParametricDelays", "DelayTrace",
           "load_trace", "Cutoff", "RoundTiming", "FALLBACKS"]
