"""Layerwise-adaptive compression (layer 2, policy): L-GreCo and the Accordion baseline.

* :mod:`.options` — :class:`Option`, a (family, parameter) compressor configuration;
* :mod:`.tables` — error tables (every layer × option) from accumulated gradients;
* :mod:`.cost` — element, byte and time cost models, calibration on a process group;
* :mod:`.dp` — the dynamic program (minimum cost within an error budget);
* :mod:`.policy` — :class:`LGreCo`, the re-solve schedule as pure state;
* :mod:`.accordion` — :class:`Accordion` (Agarwal et al., MLSys 2021).

No communication happens here: a runtime feeds gradients, broadcasts the
decision tensor and builds the chosen compressors.
"""

from __future__ import annotations

from .accordion import Accordion, AccordionStats
from .cost import ByteCost, CostModel, ElementCost, RoundTiming, TimeCost, cost_table
from .dp import Solution, solve
from .measure import calibrate, measure_codec_times
from .options import Option, default_grid, option_grid, rank_range
from .policy import LGreCo, LGreCoStats
from .tables import ErrorAccumulator, error_table

__all__ = [
    "Accordion",
    "AccordionStats",
    "ByteCost",
    "CostModel",
    "ElementCost",
    "ErrorAccumulator",
    "LGreCo",
    "LGreCoStats",
    "Option",
    "Solution",
    "RoundTiming",
    "TimeCost",
    "calibrate",
    "cost_table",
    "default_grid",
    "error_table",
    "measure_codec_times",
    "option_grid",
    "rank_range",
    "solve",
]
