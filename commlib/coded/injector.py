"""Injected stragglers for the real runtime, and straggler specs shared with ``commlib simulate``.

:class:`StragglerInjector` makes worker i's round r last the time a
:class:`~commlib.coding.stragglers.DelayTrace` models for it: after computing, the worker
sleeps for the part of ``d[r, i](load) · time_scale`` its computation has not used. The
trace is seeded, so every run injects the same delays; real slowness adds on top (a
worker whose computation already took longer than modelled does not sleep).

:func:`straggler_trace` builds a trace from a spec string:

* ``none`` — everyone takes ``fast``;
* ``worker:I[,J,...]`` — workers I, J, … take ``slow`` in every round, the others ``fast``;
* ``iid[:P]`` — each worker takes ``slow`` in each round with probability P (default 0.05);
* ``gilbert-elliott[:PGB,PBG]`` — per-worker two-state chains (default 0.05, 0.5): ``slow`` while bad;
* ``lognormal`` / ``exponential`` — :class:`~commlib.coding.stragglers.ParametricDelays` with
  overhead ``fast`` and the heavy-tailed overhead noise of ``benchmarks/sgc_sweep.py``
  (tuned so that 5% of workers straggle at μ = 1, as in Krishnan et al.'s Lambda traces).

Every spec adds ``compute`` seconds per full job of load (the paper's load scaling).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..coding.stragglers import DelayTrace, Noise, ParametricDelays, gilbert_elliott_pattern, iid_pattern
from ..coding.validation import check_int

__all__ = ["StragglerInjector", "straggler_trace", "STRAGGLER_SPECS"]

STRAGGLER_SPECS = ("none", "worker:I[,J...]", "iid[:P]", "gilbert-elliott[:PGB,PBG]", "lognormal", "exponential")
_COMPUTE_NOISE = Noise("exponential", 0.5)
_OVERHEAD_NOISE = {"lognormal": Noise("lognormal", 0.2, 0.98), "exponential": Noise("exponential", 1 / math.log(20))}


def _floats(spec: str, text: str, count: int, defaults: tuple[float, ...]) -> tuple[float, ...]:
    if not text:
        return defaults
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"straggler spec {spec!r}: parameters must be numbers separated by commas") from None
    if len(values) != count:
        raise ValueError(f"straggler spec {spec!r} takes {count} parameter(s), got {len(values)}")
    return values


def straggler_trace(spec: str, rounds: int, n: int, *, seed: int = 0, fast: float = 0.0, slow: float = 1.0,
                    compute: float = 0.0) -> DelayTrace:
    """A (rounds × n) :class:`DelayTrace` for ``spec`` (see the module docstring); ``ValueError`` names bad input."""
    rounds, n = check_int(rounds, "rounds", 1), check_int(n, "n (workers)", 1)
    if not isinstance(spec, str):
        raise ValueError(f"straggler spec must be a string, got {spec!r}")
    kind, _, rest = spec.strip().lower().partition(":")
    if kind in _OVERHEAD_NOISE:
        if rest:
            raise ValueError(f"straggler spec {spec!r}: {kind} takes no parameters")
        return ParametricDelays(fast, compute, _OVERHEAD_NOISE[kind], _COMPUTE_NOISE).trace(rounds, n, seed)
    if kind == "none" and not rest:
        pattern = np.zeros((rounds, n), dtype=bool)
    elif kind == "worker" and rest:
        try:
            workers = sorted({int(w) for w in rest.split(",")})
        except ValueError:
            raise ValueError(f"straggler spec {spec!r}: worker ids must be integers") from None
        if workers[0] < 0 or workers[-1] >= n:
            raise ValueError(f"straggler spec {spec!r}: worker ids must be in [0, {n - 1}]")
        pattern = np.zeros((rounds, n), dtype=bool)
        pattern[:, workers] = True
    elif kind == "iid":
        pattern = iid_pattern(rounds, n, *_floats(spec, rest, 1, (0.05,)), seed=seed)
    elif kind == "gilbert-elliott":
        pattern = gilbert_elliott_pattern(rounds, n, *_floats(spec, rest, 2, (0.05, 0.5)), seed=seed)
    else:
        raise ValueError(f"unknown straggler spec {spec!r}; expected one of {', '.join(STRAGGLER_SPECS)}")
    if not (math.isfinite(fast) and math.isfinite(slow) and 0 <= fast < slow):
        raise ValueError(f"straggler durations need 0 <= fast < slow, got fast={fast!r}, slow={slow!r}")
    return DelayTrace(np.where(pattern, slow, fast), np.full(pattern.shape, compute))


class StragglerInjector:
    """Sleeps so that worker i's round r lasts at least ``trace.durations(r, load)[i] · time_scale`` seconds."""

    def __init__(self, trace: DelayTrace, time_scale: float = 1.0) -> None:
        if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) \
                or not math.isfinite(time_scale) or time_scale < 0:
            raise ValueError(f"time_scale must be a finite number >= 0, got {time_scale!r}")
        self.trace = trace
        self.time_scale = float(time_scale)

    def target(self, round: int, worker: int, load: float) -> float:
        """The modelled duration of worker ``worker``'s round ``round`` at normalized ``load``, in seconds."""
        round = check_int(round, "round", 0, self.trace.rounds - 1)
        worker = check_int(worker, "worker", 0, self.trace.n - 1)
        return float(self.trace.durations(round, np.full(self.trace.n, load))[worker]) * self.time_scale

    def pad(self, round: int, worker: int, load: float, elapsed: float) -> float:
        """Sleep for what is left of the modelled duration after ``elapsed`` seconds of work; return the sleep."""
        rest = max(0.0, self.target(round, worker, load) - elapsed)
        if rest > 0:
            time.sleep(rest)
        return rest
