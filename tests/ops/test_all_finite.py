"""``commlib.ops.all_finite``: the one-pass NaN / Inf check every compressor and error-feedback step relies on."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from commlib import ops

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
BAD = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("bad", BAD, ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("n", [1, 2, 17, 1000])
def test_every_position_of_a_bad_value_is_found(dtype: torch.dtype, bad: float, n: int) -> None:
    base = torch.linspace(-3, 3, n, dtype=dtype)
    assert ops.all_finite(base)
    for i in sorted({0, n // 2, n - 1}):
        x = base.clone()
        x[i] = bad
        assert not ops.all_finite(x), (i, bad)


def test_views_complex_integers_and_empty() -> None:
    m = torch.arange(12.0).view(3, 4)
    m[2, 1] = float("nan")
    assert not ops.all_finite(m.t())  # non-contiguous
    assert ops.all_finite(m[:2].t())
    assert not ops.all_finite(torch.tensor([1 + 1j, complex(0, float("inf"))]))
    assert ops.all_finite(torch.tensor([1 + 1j, -2j]))
    assert ops.all_finite(torch.tensor([1, -(2**40)])) and ops.all_finite(torch.tensor([True, False]))
    assert ops.all_finite(torch.empty(0)) and ops.all_finite(torch.empty(0, 3))
    assert ops.all_finite(torch.tensor([torch.finfo(torch.float32).max, torch.finfo(torch.float32).tiny / 4]))


def test_not_a_tensor_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="all_finite expects a tensor"):
        ops.all_finite([1.0, float("nan")])  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=40))
def test_agrees_with_isfinite_all(values: list[float]) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    assert ops.all_finite(x) == bool(torch.isfinite(x).all())
