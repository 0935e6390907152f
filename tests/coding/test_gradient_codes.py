"""Gradient codes: exhaustive decoding on small n (fp64 gradients of a linear model), structure, errors."""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from commlib.coding import CyclicRepetitionCode, DecodingError, FractionalRepetitionCode, make_code
from commlib.rng import generator
from commlib.train.models import mlp

F64 = torch.float64
FRC_CASES = [(5, 0), (6, 1), (6, 2), (7, 2), (10, 3), (12, 3), (12, 5), (11, 4)]
CRC_CASES = [(5, 1), (6, 1), (7, 2), (9, 3), (12, 3), (12, 5), (11, 4)]


def unit_gradients(units: int, per_unit: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(U × P per-unit gradients, full gradient) of a linear softmax classifier in fp64 on random data.

    The full gradient is computed directly from the mean loss, not as the sum of the rows.
    """
    g = generator(seed, 0, "test/codes")
    batch = units * per_unit
    x = torch.randn(batch, 5, generator=g, dtype=F64)
    y = torch.randint(0, 3, (batch,), generator=g)
    model = mlp(features=5, classes=3, depth=0, seed=seed).to(F64)

    def grad(weights: torch.Tensor) -> np.ndarray:
        model.zero_grad()
        (weights * F.cross_entropy(model(x), y, reduction="none")).sum().div(batch).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy().copy()

    rows = np.stack([grad((torch.arange(batch) // per_unit == u).to(F64)) for u in range(units)])
    return rows, grad(torch.ones(batch, dtype=F64))


def straggler_sets(n: int, k: int):
    for size in range(k + 1):
        yield from combinations(range(n), size)


def received(n: int, stragglers: tuple[int, ...]) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[list(stragglers)] = False
    return mask


@pytest.mark.parametrize("kind, n, s", [("frc", *c) for c in FRC_CASES] + [("crc", *c) for c in CRC_CASES])
def test_every_set_of_at_most_s_stragglers_decodes_the_full_gradient(kind: str, n: int, s: int) -> None:
    code = make_code(kind, n, s, seed=3)
    per_unit, full = unit_gradients(code.units, seed=n * 13 + s)
    coded = code.encoding @ per_unit  # worker i's result c_i = Σ_u B[i,u] g_u
    count = 0
    for stragglers in straggler_sets(n, s):
        mask = received(n, stragglers)
        assert code.decodable(mask)
        a = code.decode(mask)
        assert not a[~mask].any(), "a decode must not use a straggler's result"
        np.testing.assert_allclose(a @ code.encoding, 1.0, rtol=0, atol=1e-9)
        np.testing.assert_allclose(a @ coded, full, rtol=1e-9, atol=1e-12)
        count += 1
    assert count == sum(len(list(combinations(range(n), k))) for k in range(s + 1))


@pytest.mark.parametrize("n, s", CRC_CASES)
def test_cyclic_code_fails_with_one_more_straggler(n: int, s: int) -> None:
    code = CyclicRepetitionCode(n, s, seed=3)
    for stragglers in combinations(range(n), s + 1):
        mask = received(n, stragglers)
        assert not code.decodable(mask)
        with pytest.raises(DecodingError, match="cannot decode"):
            code.decode(mask)
        # the least-squares solve itself cannot reach 1ᵀ either: the residual check rejects it
        with pytest.raises(DecodingError, match="residual"):
            code._coefficients(mask)


@pytest.mark.parametrize("n, s", [c for c in FRC_CASES if c[1] > 0])
def test_fractional_code_fails_exactly_when_a_whole_group_straggles(n: int, s: int) -> None:
    code = FractionalRepetitionCode(n, s)
    failures = 0
    for stragglers in combinations(range(n), s + 1):
        mask = received(n, stragglers)
        group_lost = any(not mask[code.group == g].any() for g in range(code.units))
        assert code.decodable(mask) == (not group_lost)
        failures += group_lost
    # s + 1 stragglers can wipe out a group exactly when some group has only s + 1 workers (uneven groups are larger)
    assert (failures > 0) == (np.bincount(code.group).min() == s + 1)


@pytest.mark.parametrize("n, s", [(12, 3), (13, 3), (14, 3), (15, 3), (256, 12), (256, 15)])
def test_fractional_structure_and_load(n: int, s: int) -> None:
    code = FractionalRepetitionCode(n, s)
    groups = n // (s + 1)
    sizes = np.bincount(code.group)
    assert len(sizes) == groups and sizes.min() >= s + 1 and sizes.max() - sizes.min() <= 1
    assert (np.diff(code.group) >= 0).all()  # consecutive workers
    assert code.load == Fraction(1, groups)
    assert code.load >= Fraction(s + 1, n) and (code.load == Fraction(s + 1, n)) == (n % (s + 1) == 0)
    assert set(np.unique(code.encoding)) <= {0.0, 1.0}
    assert all(code.support(i) == (code.group[i],) and code.coefficients(i) == (1.0,) for i in range(n))


@pytest.mark.parametrize("n, s", [(7, 2), (12, 5), (40, 6)])
def test_cyclic_structure(n: int, s: int) -> None:
    code = CyclicRepetitionCode(n, s, seed=1)
    assert code.units == n and code.task_units == s + 1 and code.load == Fraction(s + 1, n)
    for i in range(n):
        assert set(code.support(i)) == {(i + k) % n for k in range(s + 1)}
        assert code.encoding[i, i] == 1.0
    assert np.linalg.matrix_rank(code.encoding) == n - s
    sol, *_ = np.linalg.lstsq(code.encoding.T, np.ones(n), rcond=None)
    np.testing.assert_allclose(code.encoding.T @ sol, 1.0, atol=1e-9)  # 1 lies in the row space
    assert np.array_equal(code.encoding, CyclicRepetitionCode(n, s, seed=1).encoding)
    assert not np.array_equal(code.encoding, CyclicRepetitionCode(n, s, seed=2).encoding)


def test_cyclic_decode_is_cached_and_bounded() -> None:
    code = CyclicRepetitionCode(8, 2, cache_size=2)
    masks = [received(8, st) for st in [(0, 1), (2, 3), (4, 5)]]
    first = code.decode(masks[0])
    first[:] = 0  # the caller's copy; the cache must not change
    np.testing.assert_allclose(code.decode(masks[0]) @ code.encoding, 1.0, atol=1e-12)
    for m in masks[1:]:
        code.decode(m)
    assert len(code._cache) == 2


def test_fractional_decode_is_exact_integers() -> None:
    code = FractionalRepetitionCode(9, 2)
    a = code.decode(received(9, (0, 4, 8)))
    assert set(a) <= {0.0, 1.0} and a.sum() == 3
    assert np.array_equal(a @ code.encoding, np.ones(3))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n \\(workers\\) must be >= 1"):
        FractionalRepetitionCode(0, 0)
    with pytest.raises(ValueError, match="s \\(tolerated stragglers\\) must be in \\[0, 3\\]"):
        CyclicRepetitionCode(4, 4)
    with pytest.raises(ValueError, match="must be an integer"):
        FractionalRepetitionCode(4, True)
    with pytest.raises(ValueError, match="unknown code kind"):
        make_code("mds", 4, 1)
    code = FractionalRepetitionCode(4, 1)
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        code.decode([True, False])
    with pytest.raises(ValueError, match="booleans"):
        code.decodable(np.array([0.5, 1, 1, 1]))
    with pytest.raises(ValueError, match="worker must be in"):
        code.support(4)
