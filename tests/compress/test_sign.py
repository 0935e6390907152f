"""Sign: decode = ±mean|x| per chunk, contraction of the scaled sign, exchange = mean of the local C(x_r)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from commlib.comm.local import run_lockstep
from commlib.compress import Sign, TensorContext

finite32 = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
vectors = st.lists(finite32, min_size=1, max_size=300).map(lambda v: torch.tensor(v, dtype=torch.float32))
CTX = TensorContext("w", 0, 0, 0, 1)


def exchange_all(compressors, xs, key="w", step=0, seed=0):
    n = len(xs)
    pairs = enumerate(zip(compressors, xs, strict=True))
    return run_lockstep([c.exchange(x, TensorContext(key, step, seed, r, n)) for r, (c, x) in pairs])


def expected_sign(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """The scaled sign computed independently, chunk by chunk, in float64."""
    out = []
    for part in x.double().split(chunk):
        out.append(torch.where(part >= 0, 1.0, -1.0).double() * part.abs().mean())
    return torch.cat(out)


@settings(max_examples=60, deadline=None)
@given(x=vectors, chunk=st.integers(1, 70))
def test_decode_is_plus_minus_mean_magnitude_per_chunk(x, chunk):
    c = Sign(chunk_size=chunk)
    out = torch.zeros(x.numel())
    c.decode_add(c.encode(x, CTX), out, CTX)
    expected = expected_sign(x, chunk)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-30)
    assert torch.equal(out, c.compress(x, CTX))
    assert bool(((out == 0) | ((out > 0) == (x >= 0))).all())


@settings(max_examples=40, deadline=None)
@given(x=vectors, chunk=st.integers(1, 70))
def test_scaled_sign_error(x, chunk):
    """‖C(x_c) − x_c‖² = ‖x_c‖² − ‖x_c‖₁²/|c| for each chunk (Karimireddy et al., Lemma 8)."""
    err = (Sign(chunk_size=chunk).compress(x, CTX).double() - x.double()).pow(2).sum()
    expected = sum(float(p.pow(2).sum() - p.abs().sum() ** 2 / p.numel()) for p in x.double().split(chunk))
    norm2 = float(x.double().pow(2).sum())
    assert abs(float(err) - expected) <= 1e-5 * norm2 + 1e-30


@pytest.mark.parametrize("d", [1, 7, 129, 1000])
def test_round_trip_odd_lengths_and_exchange(d):
    g = torch.Generator().manual_seed(d)
    xs = [torch.randn(d, generator=g) for _ in range(3)]
    c = Sign(chunk_size=64)
    assert c.encode(xs[0], CTX).numel() == c.payload_bytes(xs[0].shape) == (d + 7) // 8 + 4 * -(-d // 64)
    out = exchange_all([c] * 3, xs)
    expected = torch.zeros(d)
    for x in xs:
        expected += c.compress(x, CTX)
    assert all(torch.equal(o, out[0]) for o in out)
    torch.testing.assert_close(out[0], expected / 3, rtol=0, atol=0)


def test_zero_is_sent_as_plus_scale():
    c = Sign(chunk_size=4)
    x = torch.tensor([0.0, -2.0, 2.0, 0.0, 0.0, 0.0])
    assert torch.equal(c.compress(x, CTX), torch.tensor([1.0, -1.0, 1.0, 1.0, 0.0, 0.0]))


def test_empty_tensor_and_wire_bytes():
    c = Sign(chunk_size=1024)
    assert not c.compressible(torch.Size([0]))
    assert c.compress(torch.zeros(0, 3), CTX).shape == (0, 3)
    wb = c.wire_bytes(torch.Size([100, 21]))
    assert (wb.values, wb.indices, wb.scales) == (263, 0, 12)
