"""commlib: gradient compression, error feedback, robust aggregation and straggler tolerance for PyTorch DDP."""

from __future__ import annotations

__version__ = "0.1.0"
