"""Tasks as one weighted backward pass, decode combination, unit bounds and the n-bit straggler mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from commlib.coding import Decode, make_scheme, pack_mask, sample_weights, unit_bounds, unpack_mask
from commlib.errors import WireFormatError
from commlib.rng import generator
from commlib.train.models import mlp

F64 = torch.float64


@pytest.mark.parametrize("units, batch", [(1, 1), (3, 10), (7, 7), (40, 123), (29, 1000)])
def test_unit_bounds_cover_the_batch_evenly(units: int, batch: int) -> None:
    b = unit_bounds(units, batch)
    sizes = np.diff(b)
    assert b[0] == 0 and b[-1] == batch and len(sizes) == units
    assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1


def test_unit_bounds_reject_a_batch_smaller_than_the_units() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 8"):
        unit_bounds(8, 7)


@pytest.mark.parametrize("spec, code", [("gc:2", "crc"), ("sr-sgc:2,3,4", "crc"), ("m-sgc:2,3,2", "crc"),
                                        ("m-sgc:1,2,2", "frc"), ("none", "frc")])
def test_one_weighted_backward_pass_gives_the_task_combination(spec: str, code: str) -> None:
    """∇ of the weighted loss == Σ coeff·g_unit (per-unit gradients computed apart), for every task of a round
    where all slots are busy and earlier stragglers caused repeats (SR-SGC) or re-attempts (M-SGC)."""
    n = 5
    scheme = make_scheme(spec, n, jobs=6, code=code)
    scheme.commit([True, True, True, False, False] if scheme.delay else [False] * n)
    while scheme.round < max(scheme.slots - 1, scheme.delay):
        scheme.commit([False] * n)
    kinds = {t.kind for i in range(n) for t in scheme.tasks(i)}
    assert kinds == ({"uncoded", "coded"} if spec.startswith("m-sgc") else {"coded"})
    units = scheme.units_per_job
    batch = 2 * units + 3  # uneven units on purpose
    g = generator(0, 0, "test/tasks")
    x = torch.randn(batch, 6, generator=g, dtype=F64)
    y = torch.randint(0, 4, (batch,), generator=g)
    model = mlp(features=6, classes=4, hidden=5, depth=1, seed=1).to(F64)

    def grad(weights: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        (weights * F.cross_entropy(model(x), y, reduction="none")).sum().div(batch).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    bounds = unit_bounds(units, batch)
    idx = torch.arange(batch)
    per_unit = torch.stack([grad(((idx >= bounds[u]) & (idx < bounds[u + 1])).to(F64)) for u in range(units)])
    torch.testing.assert_close(per_unit.sum(0), grad(torch.ones(batch, dtype=F64)), rtol=1e-12, atol=1e-14)
    for i in range(n):
        for task in scheme.tasks(i):
            expected = sum(c * per_unit[u] for u, c in zip(task.units, task.coeffs))
            torch.testing.assert_close(grad(sample_weights(task, units, batch, F64)), expected,
                                       rtol=1e-10, atol=1e-13)


def test_sample_weights_rejects_units_out_of_range() -> None:
    task = make_scheme("gc:1", 4, 1).tasks(3)[0]
    with pytest.raises(ValueError, match="out of range"):
        sample_weights(task, 1, 4)


def test_decode_combine_in_fp64() -> None:
    big, tiny = torch.tensor([1e8], dtype=torch.float32), torch.tensor([1.0], dtype=torch.float32)
    results = {(0, 0, 0): big, (0, 1, 0): tiny, (1, 2, 0): big}
    d = Decode(0, ((0, 0, 0, 1.0), (0, 1, 0, 1.0), (1, 2, 0, -1.0)))
    out = d.combine(results)
    assert out.dtype == torch.float32 and out.item() == 1.0  # fp32 accumulation would give 0
    assert d.keys == ((0, 0, 0), (0, 1, 0), (1, 2, 0))
    with pytest.raises(KeyError, match="worker 2, round 1, slot 0"):
        d.combine({k: v for k, v in results.items() if k != (1, 2, 0)})
    with pytest.raises(ValueError, match="shape"):
        d.combine({**results, (1, 2, 0): torch.zeros(2)})
    with pytest.raises(ValueError, match="at least one term"):
        Decode(3, ()).combine({})


@pytest.mark.parametrize("n", [1, 7, 8, 9, 20, 256])
def test_pack_unpack_mask_round_trip(n: int) -> None:
    mask = np.random.default_rng(n).random(n) < 0.3
    packed = pack_mask(mask, n)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert np.array_equal(unpack_mask(packed, n), mask)


def test_unpack_mask_validates_the_wire() -> None:
    with pytest.raises(WireFormatError, match="2 uint8 bytes"):
        unpack_mask(torch.zeros(3, dtype=torch.uint8), 9)
    with pytest.raises(WireFormatError, match="uint8"):
        unpack_mask(torch.zeros(2, dtype=torch.int32), 9)
    with pytest.raises(WireFormatError, match="padding bits"):
        unpack_mask(torch.tensor([0, 0b0100_0000], dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="shape \\(9,\\)"):
        pack_mask([True] * 8, 9)
