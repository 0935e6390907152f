"""In-process simulator (layer 4): many virtual workers on one machine, through the same protocols as DDP."""

from __future__ import annotations

from .simulator import Simulator

__all__ = ["Simulator"]
