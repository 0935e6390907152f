"""Bundled data (no downloads): scikit-learn's digits, split, standardised and served in deterministic batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..rng import generator

__all__ = ["Dataset", "load_digits", "global_batches", "worker_batch", "dirichlet_split"]


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


def dirichlet_split(labels: Tensor, n_workers: int, alpha: float, seed: int) -> list[Tensor]:
    """Split sample indices across ``n_workers`` with label skew drawn from Dirichlet(``alpha``).

    For every class c, the indices with ``labels == c`` are shuffled and cut into
    ``n_workers`` consecutive pieces whose sizes follow proportions p_c ~ Dir(α·1).
    Small ``alpha`` (e.g. 0.1) gives each worker a few dominant classes; large
    ``alpha`` (e.g. 100) approaches an iid split. Every worker receives at least one
    sample: an empty worker takes one index from the currently largest worker.

    All randomness comes from ``numpy.random.default_rng(mixed_seed(seed, 0, "dirichlet"))``
    (never a global RNG), so the split depends only on ``(labels, n_workers, alpha, seed)``.

    Returns one sorted int64 index tensor per worker; together they hold every index
    ``0 … len(labels) − 1`` exactly once.
    """
    import math

    import numpy as np

    from ..rng import mixed_seed

    if not isinstance(labels, Tensor) or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor, got {type(labels).__name__}"
                         + (f" of shape {tuple(labels.shape)}" if isinstance(labels, Tensor) else ""))
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    n = labels.numel()
    if n < n_workers:
        raise ValueError(f"cannot give each of {n_workers} workers a sample: only {n} labels")

    rng = np.random.default_rng(mixed_seed(seed, 0, "dirichlet"))
    y = labels.detach().cpu().numpy()
    parts: list[list[int]] = [[] for _ in range(n_workers)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        props = rng.dirichlet(np.full(n_workers, float(alpha)))
        cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
        for w, piece in enumerate(np.split(idx, cuts)):
            parts[w].extend(int(i) for i in piece)
    for w in range(n_workers):
        if not parts[w]:
            donor = max(range(n_workers), key=lambda r: len(parts[r]))
            parts[w].append(parts[donor].pop())
    return [torch.tensor(sorted(p), dtype=torch.int64) for p in parts]
