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


# -- the CPU kernel (float32, contiguous): the same answer as the reference, wherever the bad value sits ------------

needs_extension = pytest.mark.skipif(ops.backend() == "reference", reason="commlib._C is not loaded")
CHUNK, GRAIN = 1 << 14, 1 << 18  # the kernel's early-exit chunk and parallel grain (csrc/cpu/finite.cpp)
BAD_BITS = [0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x7F800000, 0xFF800000]  # NaNs (quiet, signalling, negative), ±Inf


def _with_bits(n: int, position: int, bits: int) -> torch.Tensor:
    x = torch.linspace(-1e30, 1e30, n, dtype=torch.float32)
    x.view(torch.int32)[position] = torch.tensor(bits, dtype=torch.int64).to(torch.int32)
    return x


@needs_extension
@pytest.mark.parametrize("n", [GRAIN * 2 + 5, CHUNK * 3, CHUNK + 1])
def test_the_kernel_finds_a_bad_value_at_every_chunk_and_grain_border(n: int) -> None:
    positions = {0, n - 1} | {p + d for p in (CHUNK, 2 * CHUNK, GRAIN, 2 * GRAIN) for d in (-1, 0, 1) if 0 <= p + d < n}
    assert bool(torch.ops.commlib.all_finite(torch.linspace(-1e30, 1e30, n)))
    for position in sorted(positions):
        for bits in BAD_BITS:
            assert not bool(torch.ops.commlib.all_finite(_with_bits(n, position, bits))), (position, hex(bits))


@needs_extension
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3 * GRAIN), where=st.floats(0, 1, exclude_max=True), bits=st.sampled_from(BAD_BITS),
       threads=st.integers(1, 3))
def test_the_kernel_agrees_with_the_reference_for_any_size_position_and_thread_count(n, where, bits, threads) -> None:
    x = _with_bits(n, int(where * n), bits)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        kernel = bool(torch.ops.commlib.all_finite(x))
    finally:
        torch.set_num_threads(before)
    assert kernel == ops.reference.all_finite(x) == bool(torch.isfinite(x).all()) is False
    assert ops.all_finite(x) is False


@needs_extension
def test_the_kernel_passes_finite_extremes_and_rejects_what_it_does_not_take() -> None:
    f32 = torch.finfo(torch.float32)
    extremes = torch.tensor([f32.max, -f32.max, f32.tiny, f32.tiny / 8, -f32.tiny / 8, -0.0, 0.0])
    assert bool(torch.ops.commlib.all_finite(extremes))
    with pytest.raises(ValueError, match="float32"):
        torch.ops.commlib.all_finite(extremes.double())
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.commlib.all_finite(torch.zeros(4, 4).t())
    meta = torch.ops.commlib.all_finite(torch.empty(5, 3, device="meta"))
    assert meta.device.type == "meta" and meta.dtype == torch.bool and meta.shape == ()
