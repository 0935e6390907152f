"""Differential privacy for sketched exchange (layer 1): clipping, the sketched Gaussian mechanism, accounting.

* :mod:`.clipping` — worker-level and per-sample clipping to norm ``C`` (Abadi et al. 2016);
* :class:`DPSketch` — orthonormal-row sketch plus ``N(0, z²C²)`` added on one rank before the all-reduce;
* :class:`PrivacyAccountant`, :func:`noise_multiplier_for` — Opacus's RDP accountant (Mironov 2017);
* :mod:`.attacks` — gradient-matching reconstruction from a sketched gradient with a known seed (Zhu et al. 2019).
"""

from __future__ import annotations

from .accounting import PrivacyAccountant, noise_multiplier_for
from .clipping import clip_per_sample, clip_update, per_sample_gradients
from .mechanism import DPSketch

__all__ = ["DPSketch", "PrivacyAccountant", "clip_per_sample", "clip_update", "noise_multiplier_for",
           "per_sample_gradients"]
