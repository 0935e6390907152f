"""Coordinate-wise rules on column slices (the sharded runtime's view) and the Compose mixing matrix."""

from __future__ import annotations

import pytest
import torch

from commlib import robust
from commlib.robust.base import finite_rows, row_sum

COORDINATEWISE = {
    "mean": robust.Mean,
    "median": robust.CoordinateMedian,
    "trimmed_mean": lambda: robust.TrimmedMean(f=2),
    "meamed": lambda: robust.Meamed(f=2),
    "phocas": lambda: robust.Phocas(f=2),
}


def _inputs(n: int = 7, d: int = 1003, nan_row: int | None = None) -> torch.Tensor:
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(5))
    if nan_row is not None:
        X[nan_row, 17] = float("nan")
    return X


@pytest.mark.parametrize("name", sorted(COORDINATEWISE))
@pytest.mark.parametrize("nan_row", [None, 3])
def test_slices_give_the_whole_matrix_bits(name, nan_row):
    """Slices of uneven widths, each told which rows are finite overall, reassemble rule(X) bit for bit."""
    rule = COORDINATEWISE[name]()
    X = _inputs(nan_row=nan_row)
    finite = finite_rows(X)
    sliced = torch.cat([rule.aggregate_columns(part, finite) for part in X.split([1, 250, 333, 419], dim=1)])
    assert torch.equal(sliced, rule(X))
    assert bool(torch.isfinite(sliced).all())


def test_a_slice_without_the_global_mask_would_keep_a_faulty_row():
    """The power of the mask: the slice holding no NaN, told all rows are finite, keeps row 3 and differs."""
    rule = robust.Meamed(f=2)
    X = _inputs(nan_row=3)
    part = X[:, 500:]
    kept_everywhere = torch.ones(7, dtype=torch.bool)
    assert not torch.equal(rule.aggregate_columns(part, kept_everywhere), rule(X)[500:])


def test_row_sum_adds_rows_in_order_whatever_the_width():
    X = torch.randn(5, 1001, generator=torch.Generator().manual_seed(1))
    whole = row_sum(X)
    assert torch.equal(torch.cat([row_sum(p) for p in X.split(168, dim=1)]), whole)
    expected = X[0].clone()
    for row in X[1:]:
        expected = expected + row
    assert torch.equal(whole, expected)


@pytest.mark.parametrize(
    "rule, finite, problem",
    [
        (robust.Krum(f=1), torch.ones(7, dtype=torch.bool), "not coordinate-wise"),
        (robust.FlagAggregator(m=2), torch.ones(7, dtype=torch.bool), "not coordinate-wise"),
        (robust.Mean(), torch.ones(6, dtype=torch.bool), "finite must be a bool tensor of shape"),
        (robust.Mean(), torch.ones(7), "finite must be a bool tensor of shape"),
    ],
)
def test_bad_column_requests_are_refused(rule, finite, problem):
    with pytest.raises(ValueError, match=problem):
        rule.aggregate_columns(_inputs(), finite)


def test_compose_mixing_matrix_reproduces_the_preaggregators():
    """W from the Gram matrix applied to X equals running NNM then ARC on X; G′ is the Gram matrix of W X."""
    X = _inputs().double()
    compose = robust.Compose([robust.NNM(f=2), robust.ARC(f=2)], robust.TrimmedMean(f=2))
    W, G = compose.mixing_from_gram(X @ X.T)
    mixed = robust.ARC(f=2)(robust.NNM(f=2)(X))
    torch.testing.assert_close(W @ X, mixed, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(G, mixed @ mixed.T, rtol=1e-10, atol=1e-8)
