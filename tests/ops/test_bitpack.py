"""Bit packing: the reference's layout and round trip, and the native kernel against the reference byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import commlib.ops as ops
from commlib.ops import reference

BITS = (1, 2, 4, 8)
LENGTHS = (0, 1, 7, 9, 1001)

needs_extension = pytest.mark.skipif(ops.backend() == "reference", reason="commlib._C is not loaded")


def random_codes(n: int, bits: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << bits, (n,), dtype=torch.uint8, generator=g)


@st.composite
def codes_and_bits(draw: st.DrawFn, max_len: int = 300) -> tuple[torch.Tensor, int]:
    bits = draw(st.sampled_from(BITS))
    values = draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=max_len))
    return torch.tensor(values, dtype=torch.uint8), bits


# ---------------------------------------------------------------- reference


def test_layout_worked_example() -> None:
    # bits=2: byte 0 = 1 | 0<<2 | 3<<4 | 2<<6 = 0b10_11_00_01 = 177; byte 1 holds the fifth code, zero-padded.
    codes = torch.tensor([1, 0, 3, 2, 1], dtype=torch.uint8)
    assert reference.pack_bits(codes, 2).tolist() == [177, 1]
    assert reference.pack_bits(torch.tensor([0xA, 0x5, 0xF], dtype=torch.uint8), 4).tolist() == [0x5A, 0x0F]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", LENGTHS)
def test_reference_round_trip(bits: int, n: int) -> None:
    codes = random_codes(n, bits, seed=n)
    packed = reference.pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (ops.packed_length(n, bits),)
    assert torch.equal(reference.unpack_bits(packed, bits, n), codes)


@settings(max_examples=200, deadline=None)
@given(codes_and_bits())
def test_reference_round_trip_property(case: tuple[torch.Tensor, int]) -> None:
    codes, bits = case
    n = codes.numel()
    packed = reference.pack_bits(codes, bits)
    assert packed.numel() == (n * bits + 7) // 8
    assert torch.equal(reference.unpack_bits(packed, bits, n), codes)
    used = n * bits % 8
    if used:  # the tail byte's unused high bits are zero
        assert int(packed[-1]) >> used == 0


@pytest.mark.parametrize("n", LENGTHS + (4096, 100_003))
def test_bits1_matches_numpy_packbits(n: int) -> None:
    codes = random_codes(n, 1, seed=n)
    expected = np.packbits(codes.numpy(), bitorder="little")
    assert np.array_equal(reference.pack_bits(codes, 1).numpy(), expected)
    assert np.array_equal(ops.pack_bits(codes, 1).numpy(), expected)
    assert np.array_equal(ops.unpack_bits(torch.from_numpy(expected), 1, n).numpy(), codes.numpy())


# ---------------------------------------------------------------- dispatching API (kernel when loaded)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", LENGTHS)
def test_ops_round_trip(bits: int, n: int) -> None:
    codes = random_codes(n, bits, seed=n + 1)
    packed = ops.pack_bits(codes, bits)
    assert torch.equal(packed, reference.pack_bits(codes, bits))
    assert torch.equal(ops.unpack_bits(packed, bits, n), codes)


@pytest.mark.parametrize("bits", BITS)
def test_ops_non_contiguous_input(bits: int) -> None:
    codes = random_codes(2 * 1001, bits, seed=3)[::2]
    assert not codes.is_contiguous()
    assert torch.equal(ops.pack_bits(codes, bits), reference.pack_bits(codes, bits))
    packed = reference.pack_bits(random_codes(2 * 1001, bits, seed=4), bits)
    strided = torch.stack([packed, packed]).t().reshape(-1)[::2]  # same bytes, stride 2
    assert torch.equal(ops.unpack_bits(strided, bits, 2 * 1001), reference.unpack_bits(packed, bits, 2 * 1001))


# ---------------------------------------------------------------- native kernel == reference


@needs_extension
@settings(max_examples=300, deadline=None)
@given(codes_and_bits(max_len=600))
def test_kernel_pack_equals_reference(case: tuple[torch.Tensor, int]) -> None:
    codes, bits = case
    expected = reference.pack_bits(codes, bits)
    got = torch.ops.commlib.pack_bits(codes, bits)
    assert got.dtype == torch.uint8 and got.shape == expected.shape
    assert got.tolist() == expected.tolist()


@needs_extension
@settings(max_examples=300, deadline=None)
@given(
    bits=st.sampled_from(BITS),
    data=st.binary(max_size=300),
    drop=st.integers(0, 7),
)
def test_kernel_unpack_equals_reference(bits: int, data: bytes, drop: int) -> None:
    """Any bytes, nonzero padding bits included, unpack the same on both paths, for any n that fits the bytes."""
    packed = torch.tensor(list(data), dtype=torch.uint8)
    most = len(data) * 8 // bits
    fewest = (len(data) - 1) * 8 // bits + 1 if data else 0
    n = most - min(drop, most - fewest)
    assert ops.packed_length(n, bits) == len(data)
    got = torch.ops.commlib.unpack_bits(packed, bits, n)
    assert got.tolist() == reference.unpack_bits(packed, bits, n).tolist()


@needs_extension
@pytest.mark.parametrize("bits", BITS)
def test_kernel_large_parallel(bits: int) -> None:
    """Past the grain size, so ``at::parallel_for`` splits the work (when more than one thread is allowed)."""
    n = 3 * 8 * 32768 + 5
    codes = random_codes(n, bits, seed=bits)
    packed = torch.ops.commlib.pack_bits(codes, bits)
    assert torch.equal(packed, reference.pack_bits(codes, bits))
    assert torch.equal(torch.ops.commlib.unpack_bits(packed, bits, n), codes)


@needs_extension
@pytest.mark.parametrize("bits", (1, 2, 4))
def test_kernel_rejects_large_code_anywhere(bits: int) -> None:
    """The fused range check sees a bad code in the SWAR body, in the tail, and far into a parallel chunk."""
    n = 8 * 32768 * 2 + 3
    for where in (0, 5, n // 2 + 1, n - 1):
        codes = random_codes(n, bits, seed=where)
        codes[where] = 1 << bits
        with pytest.raises(ValueError, match=f"at index {where} does not fit in {bits} bits"):
            torch.ops.commlib.pack_bits(codes, bits)
