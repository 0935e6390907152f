"""In-process simulator (layer 4): many virtual workers on one machine, through the same protocols as DDP."""

from __future__ import annotations

from .simulator import Simulator, ddp_bucket_layout

__all__ = ["Simulator", "ddp_bucket_layout"]
