"""dirichlet_split: a deterministic partition with label skew controlled by alpha."""

from __future__ import annotations

import pytest
import torch

from commlib.train.data import dirichlet_split


def _labels(n_per_class: int = 100, classes: int = 10) -> torch.Tensor:
    return torch.arange(classes).repeat_interleave(n_per_class)


def _mean_max_class_fraction(labels: torch.Tensor, parts: list[torch.Tensor]) -> float:
    fractions = []
    for p in parts:
        counts = torch.bincount(labels[p], minlength=int(labels.max()) + 1)
        fractions.append(counts.max().item() / p.numel())
    return sum(fractions) / len(fractions)


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 100.0])
@pytest.mark.parametrize("n_workers", [1, 4, 7])
def test_partition_every_index_once_and_no_empty_worker(alpha: float, n_workers: int) -> None:
    labels = _labels()
    parts = dirichlet_split(labels, n_workers, alpha, seed=3)
    assert len(parts) == n_workers
    assert all(p.numel() >= 1 and p.dtype == torch.int64 for p in parts)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(labels.numel()))


def test_every_worker_gets_a_sample_when_barely_possible() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1])
    for seed in range(20):
        parts = dirichlet_split(labels, 5, 0.01, seed=seed)
        assert [p.numel() for p in parts] == [1] * 5


def test_deterministic_for_a_seed() -> None:
    labels = _labels()
    a = dirichlet_split(labels, 4, 0.5, seed=7)
    b = dirichlet_split(labels, 4, 0.5, seed=7)
    c = dirichlet_split(labels, 4, 0.5, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_global_rng_untouched() -> None:
    state = torch.random.get_rng_state()
    dirichlet_split(_labels(), 4, 0.1, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_small_alpha_skews_large_alpha_does_not() -> None:
    # With as many workers as classes, alpha = 0.1 leaves each worker dominated by about one class;
    # alpha = 100 is close to iid (max-class fraction near 1/10).
    labels = _labels()
    skewed = [_mean_max_class_fraction(labels, dirichlet_split(labels, 10, 0.1, seed=s)) for s in range(5)]
    even = [_mean_max_class_fraction(labels, dirichlet_split(labels, 10, 100.0, seed=s)) for s in range(5)]
    assert sum(skewed) / len(skewed) > 0.5
    assert max(even) < 0.3
    # With 4 workers (about 2.5 classes each) the skew is weaker but still far from iid.
    skewed4 = [_mean_max_class_fraction(labels, dirichlet_split(labels, 4, 0.1, seed=s)) for s in range(5)]
    even4 = [_mean_max_class_fraction(labels, dirichlet_split(labels, 4, 100.0, seed=s)) for s in range(5)]
    assert min(skewed4) > 2 * max(even4)


@pytest.mark.parametrize(
    ("labels", "n_workers", "alpha", "seed", "match"),
    [
        (torch.zeros(2, 3, dtype=torch.int64), 2, 1.0, 0, "1-D"),
        ([0, 1, 2], 2, 1.0, 0, "1-D"),
        (torch.zeros(4), 2, 1.0, 0, "integer"),
        (torch.zeros(4, dtype=torch.int64), 0, 1.0, 0, "n_workers"),
        (torch.zeros(4, dtype=torch.int64), 2.0, 1.0, 0, "n_workers"),
        (torch.zeros(4, dtype=torch.int64), True, 1.0, 0, "n_workers"),
        (torch.zeros(4, dtype=torch.int64), 2, 0.0, 0, "alpha"),
        (torch.zeros(4, dtype=torch.int64), 2, -1.0, 0, "alpha"),
        (torch.zeros(4, dtype=torch.int64), 2, float("nan"), 0, "alpha"),
        (torch.zeros(4, dtype=torch.int64), 2, float("inf"), 0, "alpha"),
        (torch.zeros(4, dtype=torch.int64), 2, 1.0, 0.5, "seed"),
        (torch.zeros(3, dtype=torch.int64), 4, 1.0, 0, "only 3 labels"),
    ],
)
def test_bad_arguments(labels, n_workers, alpha, seed, match) -> None:
    with pytest.raises(ValueError, match=match):
        dirichlet_split(labels, n_workers, alpha, seed)
