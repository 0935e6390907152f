"""Reference training (layer 5): bundled digits data, a small MLP, and loops for DDP and the simulator."""

from __future__ import annotations

from .data import Dataset, load_digits
from .loop import TrainConfig, TrainResult, evaluate, make_optimizer, train_ddp, train_simulated
from .models import mlp

__all__ = ["Dataset", "TrainConfig", "TrainResult", "evaluate", "load_digits", "make_optimizer", "mlp", "train_ddp",
           "train_simulated"]
