"""Byzantine-robust aggregation (layer 1): rules, pre-aggregators and attacks. Math only, no communication.

A rule maps the n workers' vectors (rows of an n × d tensor) to one vector:
``rule(X) -> Tensor[d]``. Gram-based rules (Krum, Multi-Krum, geometric median,
MDA, Flag) also give ``weights_from_gram(G) -> Tensor[n]`` with output
``Σᵢ wᵢ xᵢ``, so a sharded runtime only needs the n × n Gram matrix;
coordinate-wise rules (mean, median, trimmed mean, Meamed, Phocas) also run on
a column slice with ``aggregate_columns(X, finite)``. See docs/robust.md.
"""

from __future__ import annotations

from .attacks import (
    ALIE,
    IPM,
    Attack,
    Drop,
    Gaussian,
    LabelFlip,
    Mimic,
    MinMax,
    MinSum,
    NonFinite,
    OptimalALIE,
    OptimalIPM,
    SignFlip,
    Uniform,
    alie_z,
    flip_labels,
    line_maximize,
)
from .base import Aggregator, GramAggregator, combine, gram, sqdist_from_gram
from .bulyan import Bulyan
from .centered_clipping import CenteredClipping
from .coordinatewise import CoordinateMedian, Meamed, Mean, Phocas, TrimmedMean
from .flag import FlagAggregator, flag_weights
from .geomed import GeometricMedian
from .krum import Krum, MultiKrum
from .mda import MDA
from .preagg import ARC, NNM, Bucketing, Clipping, Compose, PreAggregator, mix, transform_gram

__all__ = [
    "ALIE", "ARC", "IPM", "MDA", "NNM", "Aggregator", "Attack", "Bucketing", "Bulyan", "CenteredClipping",
    "Clipping", "Compose", "CoordinateMedian", "Drop", "FlagAggregator", "Gaussian", "GeometricMedian",
    "GramAggregator", "Krum", "LabelFlip", "Meamed", "Mean", "Mimic", "MinMax", "MinSum", "MultiKrum", "NonFinite",
    "OptimalALIE", "OptimalIPM", "Phocas", "PreAggregator", "SignFlip", "TrimmedMean", "Uniform", "alie_z",
    "combine", "flag_weights", "flip_labels", "gram", "line_maximize", "mix", "sqdist_from_gram", "transform_gram",
]
