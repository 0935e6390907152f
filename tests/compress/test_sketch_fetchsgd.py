"""FetchSGD: chunked heavy-hitter unsketch, the in-sketch momentum/error recursion, state checkpointing."""

from __future__ import annotations

import copy
import io

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from commlib import ops
from commlib.comm.local import run_lockstep
from commlib.compress import TensorContext
from commlib.compress.sketch import FetchSGD, unsketch_topk
from commlib.errors import WireFormatError

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 50), length=st.integers(1, 400), k=st.integers(1, 400),
       chunk=st.integers(1, 500), seed=st.integers(0, 2**40), ties=st.booleans())
def test_chunked_unsketch_equals_one_top_k(rows, cols, length, k, chunk, seed, ties):
    k = min(k, length)
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, cols, generator=gen)
    if ties:  # many equal magnitudes: the tie rule must survive chunking
        table = table.round()
    values, idx = unsketch_topk(table, seed, length, k, chunk)
    want_v, want_i = ops.topk_magnitude(ops.count_unsketch(table, seed, 0, length), k)
    assert torch.equal(idx, want_i.to(torch.int64)) and torch.equal(values, want_v)


def dense_reference(grads_per_step: list[torch.Tensor], k: int, rho: float) -> list[torch.Tensor]:
    """FetchSGD without sketching: virtual momentum u, error e, top-k of e, both zeroed where the update is."""
    u = e = torch.zeros_like(grads_per_step[0])
    out = []
    for g in grads_per_step:
        u = rho * u + g
        e = e + u
        _, idx = ops.topk_magnitude(e, k)
        delta = torch.zeros_like(e)
        delta[idx.long()] = e[idx.long()]
        u, e = u.masked_fill(delta != 0, 0), e.masked_fill(delta != 0, 0)
        out.append(delta)
    return out


def test_matches_dense_momentum_and_error_feedback_when_the_sketch_is_wide():
    """With far more buckets than coordinates the median of 5 rows recovers every coordinate: FetchSGD = dense rule."""
    n, d, steps = 3, 60, 6
    c = FetchSGD(ratio=1.0, rows=5, density=0.1, momentum=0.9)
    c.cols = lambda numel: 4000  # a wide sketch: collisions are rare and outvoted by the median
    workers = [copy.deepcopy(c) for _ in range(n)]
    gen = torch.Generator().manual_seed(0)
    per_step = [[torch.randn(d, generator=gen) for _ in range(n)] for _ in range(steps)]
    got = []
    for t, xs in enumerate(per_step):
        out = run_lockstep([w.exchange(x, TensorContext("p", t, 1, r, n)) for r, (w, x) in enumerate(zip(workers, xs))])
        assert all(torch.equal(o, out[0]) for o in out)
        got.append(out[0])
    expected = dense_reference([sum(xs) / n for xs in per_step], k=6, rho=0.9)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_recovers_heavy_hitters_from_a_small_sketch():
    """A 5-row sketch of d/5 cells finds the 5 spikes among 20000 small coordinates, for every hash seed tried."""
    d, heavy = 20000, torch.tensor([17, 4242, 9999, 15000, 19999])
    x = 0.01 * torch.randn(d, generator=torch.Generator().manual_seed(3))
    x[heavy] = torch.tensor([5.0, -4.0, 6.0, -7.0, 3.0])
    c = FetchSGD(ratio=5, rows=5, density=5 / d, momentum=0.0, chunk=3000)
    for seed in range(10):
        out = run_lockstep([c.exchange(x, TensorContext(f"w{seed}", 0, seed, 0, 1))])[0]
        assert torch.equal(out.nonzero().view(-1), heavy)
        torch.testing.assert_close(out[heavy], x[heavy], rtol=0, atol=0.2)


def test_hashes_are_fixed_across_steps():
    c = FetchSGD()
    assert c.hash_seed(TensorContext("w", 0, 5, 0, 2)) == c.hash_seed(TensorContext("w", 99, 5, 1, 2))
    assert c.hash_seed(TensorContext("w", 0, 5, 0, 2)) != c.hash_seed(TensorContext("v", 0, 5, 0, 2))


def test_state_dict_round_trip_resumes_bit_for_bit():
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(30, 40, generator=gen) for _ in range(4)]
    run = FetchSGD(ratio=8, density=0.05)
    outs = [run_lockstep([run.exchange(x, TensorContext("w", t, 0, 0, 1))])[0] for t, x in enumerate(xs)]
    first = FetchSGD(ratio=8, density=0.05)
    for t, x in enumerate(xs[:2]):
        run_lockstep([first.exchange(x, TensorContext("w", t, 0, 0, 1))])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    resumed = FetchSGD(ratio=8, density=0.05)
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for t, x in list(enumerate(xs))[2:]:
        assert torch.equal(run_lockstep([resumed.exchange(x, TensorContext("w", t, 0, 0, 1))])[0], outs[t])


@pytest.mark.parametrize("state, match", [
    ({"other": {}}, "single key"), ({"state": {"w": {"momentum": torch.zeros(5, 3)}}}, "exactly"),
    ({"state": {"w": {"momentum": torch.zeros(4, 3), "error": torch.zeros(4, 3)}}}, "5-row"),
    ({"state": {"w": {"momentum": torch.zeros(5, 3), "error": torch.full((5, 3), float("inf"))}}}, "finite"),
])
def test_load_state_dict_rejects_malformed_state(state, match):
    with pytest.raises(ValueError, match=match):
        FetchSGD(rows=5).load_state_dict(state)


def test_malformed_sum_raises_and_leaves_state_untouched():
    c = FetchSGD(ratio=4)
    proto = c.exchange(torch.randn(100), TensorContext("w", 0, 0, 0, 2))
    request = next(proto)
    with pytest.raises(WireFormatError):
        proto.send(torch.full_like(request.tensor, float("nan")))
    assert c.state_dict() == {"state": {}}


@pytest.mark.parametrize("kwargs", [{"ratio": 0}, {"rows": 0}, {"density": 0}, {"momentum": 1.0}, {"chunk": 0}])
def test_bad_configuration_raises_value_error(kwargs):
    with pytest.raises(ValueError):
        FetchSGD(**kwargs)


def test_exactly_sparse_vector_is_recovered_exactly():
    """A k-sparse vector: each spike sits alone in most of the 5 rows, so the median is its value, bit for bit.

    One FetchSGD step (no momentum, k = number of spikes) then returns the vector
    itself and leaves an all-zero error sketch (every cell it touched is cleared).
    """
    d, cols = 20000, 2000  # a coordinate meets a spike in 3 of 5 rows with probability ~10·(8/2000)³
    for seed in range(1, 6):  # hash seed 0 is degenerate: row 0 then puts every coordinate in one bucket
        gen = torch.Generator().manual_seed(seed)
        heavy = torch.randperm(d, generator=gen)[:8].sort().values
        x = torch.zeros(d)
        x[heavy] = torch.randn(8, generator=gen) * 10
        table = torch.zeros(5, cols)
        ops.count_sketch_add_(table, x, seed)
        values, idx = unsketch_topk(table, seed, d, 8, chunk=3000)
        assert torch.equal(idx, heavy) and torch.equal(values, x[heavy])
        c = FetchSGD(ratio=d / (5 * cols), rows=5, density=8 / d, momentum=0.0)
        out = run_lockstep([c.exchange(x, TensorContext(f"w{seed}", 0, seed, 0, 1))])[0]
        assert torch.equal(out, x)
        assert not bool(c.state_dict()["state"][f"w{seed}"]["error"].any())
