"""Sketched gradient exchange (linear compressors, so they all-reduce).

* :class:`Sketch` — a fresh shared sketch every step: ``mode="unbiased"``
  (Song, Wang, Yu & Zhang, ICML 2023) or ``mode="projection"`` (orthonormal
  rows, for error feedback: "EF-projection");
* :class:`FetchSGD` — fixed count-sketch hashes, momentum and error inside the
  all-reduced sketch, top-k heavy hitters (Rothchild et al., ICML 2020);
* :class:`SketchedSGD` — a sketch finds the top k, a second round fetches their
  exact values; momentum and error on each rank (Ivkin et al., NeurIPS 2019);
* the sketch families as linear operators (:mod:`.operators`): count sketch,
  block SRHT, block Gaussian.
"""

from __future__ import annotations

from .compressor import FAMILIES, MODES, Sketch
from .fetchsgd import FetchSGD, unsketch_topk
from .operators import BlockGaussianOperator, BlockSRHTOperator, CountSketchOperator, SketchOperator
from .sketched_sgd import SketchedSGD

__all__ = [
    "FAMILIES",
    "MODES",
    "BlockGaussianOperator",
    "BlockSRHTOperator",
    "CountSketchOperator",
    "FetchSGD",
    "Sketch",
    "SketchOperator",
    "SketchedSGD",
    "unsketch_topk",
]
