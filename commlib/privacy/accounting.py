"""Privacy accounting with Opacus's Rényi-DP accountant (Mironov 2017; Abadi et al. 2016).

Each training step is one subsampled Gaussian mechanism: sampling rate ``q``
(the expected fraction of the data in the step's batch) and noise multiplier
``z`` (noise std ``z·C`` for sensitivity ``C``). Its Rényi divergence of order
``α`` is computed by Opacus (``opacus.accountants.analysis.rdp``; ``α/(2z²)``
when ``q = 1``), composed over steps by adding, and converted to ``(ε, δ)``
at the best order. Sketching with orthonormal rows and adding the noise in
sketch space leaves ``C`` and hence the accounting unchanged (post-processing).

Caveat: the RDP analysis assumes Poisson sampling; fixed-size shuffled batches
(as in :mod:`commlib.train`) are accounted with ``q = batch/dataset`` by
convention, as Opacus users commonly do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

__all__ = ["PrivacyAccountant", "noise_multiplier_for"]


def _check(value: object, what: str, low: float, high: float, low_open: bool = True, high_open: bool = False) -> float:
    """``value`` as a float in the interval ``low … high`` (ends open as told), else ``ValueError`` naming ``what``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{what} must be a number in {interval}, got {value!r}")
    return float(value)


def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier ``z`` (to 0.01 in ε) reaching ``(target_epsilon, delta)`` after ``steps``.

    Opacus's ``get_noise_multiplier`` with the RDP accountant: a bisection on
    ``z`` over the same analysis :class:`PrivacyAccountant` uses.
    """
    _check(target_epsilon, "target_epsilon", 0.0, math.inf, high_open=True)
    _check(delta, "delta", 0.0, 1.0, high_open=True)
    _check(sample_rate, "sample_rate", 0.0, 1.0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    from opacus.accountants.utils import get_noise_multiplier  # imported on use: opacus is slow to import

    with warnings.catch_warnings():  # the bisection visits huge z, where the best order is the largest: harmless
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant="rdp"))


class PrivacyAccountant:
    """Composition of subsampled Gaussian steps: :meth:`step` each training step, :meth:`epsilon` for a ``δ``.

    State (:meth:`state_dict`) is the history ``[[z, q, steps], …]``: plain values.
    """

    def __init__(self) -> None:
        from opacus.accountants import RDPAccountant  # imported on use: opacus is slow to import

        self._rdp = RDPAccountant()

    @property
    def steps(self) -> int:
        """Steps accounted so far."""
        return sum(n for _, _, n in self._rdp.history)

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Account ``steps`` steps of the Gaussian mechanism with ``z = noise_multiplier`` at sampling rate ``q``."""
        z = _check(noise_multiplier, "noise_multiplier", 0.0, math.inf, high_open=True)
        q = _check(sample_rate, "sample_rate", 0.0, 1.0)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        for _ in range(steps):
            self._rdp.step(noise_multiplier=z, sample_rate=q)

    def epsilon(self, delta: float) -> float:
        """ε spent so far for ``δ = delta`` (0 before the first step)."""
        return float(self._rdp.get_epsilon(_check(delta, "delta", 0.0, 1.0, high_open=True)))

    def state_dict(self) -> dict[str, object]:
        return {"history": [[float(z), float(q), int(n)] for z, q, n in self._rdp.history]}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Replace the history; ``ValueError`` unless it is ``{"history": [[z > 0, q in (0, 1], steps >= 1], …]}``."""
        history = state.get("history") if isinstance(state, Mapping) else None
        if not isinstance(history, list) or set(state) != {"history"}:
            raise ValueError(f"accountant state must be {{'history': [[z, q, steps], ...]}}, got {state!r:.200}")
        loaded = []
        for entry in history:
            if not isinstance(entry, (list, tuple)) or len(entry) != 3:
                raise ValueError(f"accountant history entries must be [z, q, steps], got {entry!r}")
            z = _check(entry[0], "history noise_multiplier", 0.0, math.inf, high_open=True)
            q = _check(entry[1], "history sample_rate", 0.0, 1.0)
            n = entry[2]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"history steps must be a positive integer, got {n!r}")
            loaded.append((z, q, n))
        self._rdp.history = loaded
