"""Bundled data (no downloads): scikit-learn's digits, split, standardised and served in deterministic batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..rng import generator

__all__ = ["Dataset", "load_digits", "global_batches", "worker_batch"]


@dataclass(frozen=True)
class Dataset:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def features(self) -> int:
        return self.x_train.shape[1]

    @property
    def classes(self) -> int:
        return int(self.y_train.max()) + 1


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """The 8×8 digits (1797 images, 10 classes), shuffled by ``seed``, standardised with training statistics."""
    from sklearn.datasets import load_digits as _sk_digits

    x_all, y_all = _sk_digits(return_X_y=True)
    x = torch.as_tensor(x_all, dtype=torch.float32)
    y = torch.as_tensor(y_all, dtype=torch.int64)
    order = torch.randperm(len(y), generator=generator(seed, 0, "digits/split"))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    mean = x[train].mean(0)
    std = x[train].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return Dataset(x[train], y[train], x[test], y[test])


def global_batches(n_samples: int, global_batch: int, epoch: int, seed: int) -> Iterator[Tensor]:
    """Index tensors of the global batches of one epoch (same on every rank; the last partial batch dropped)."""
    order = torch.randperm(n_samples, generator=generator(seed, epoch, "digits/epoch"))
    for start in range(0, n_samples - global_batch + 1, global_batch):
        yield order[start : start + global_batch]


def worker_batch(indices: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s share of a global batch: its contiguous slice."""
    per = indices.numel() // world_size
    return indices[rank * per : (rank + 1) * per]
