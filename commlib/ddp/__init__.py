"""DDP runtime (layer 4): ``CommState`` and ``hook`` for ``DistributedDataParallel.register_comm_hook``."""

from __future__ import annotations

from .hook import hook
from .state import CommState

__all__ = ["CommState", "hook"]
