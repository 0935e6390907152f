"""SketchedSGD: two rounds (sketch finds the top k, exact values fetched), local momentum and error, bytes, state."""

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
from commlib.compress.sketch import SketchedSGD
from commlib.errors import WireFormatError

pytestmark = pytest.mark.usefixtures("one_thread")


def run_steps(c: SketchedSGD, per_step: list[list[torch.Tensor]], seed: int = 1) -> tuple[list, list]:
    """Every step through ``n`` copies in lockstep; returns rank 0's updates and the final copies."""
    n = len(per_step[0])
    workers = [copy.deepcopy(c) for _ in range(n)]
    got = []
    for t, xs in enumerate(per_step):
        protocols = [w.exchange(x, TensorContext("p", t, seed, r, n)) for r, (w, x) in enumerate(zip(workers, xs))]
        out = run_lockstep(protocols)
        assert all(torch.equal(o, out[0]) for o in out)  # every rank applies the same update
        got.append(out[0])
    return got, workers


def dense_reference(per_step: list[list[torch.Tensor]], k: int, rho: float) -> list[torch.Tensor]:
    """Without sketching: local u_i, e_i; global top k of Σ e_i; exact mean there; u_i, e_i zeroed there."""
    n = len(per_step[0])
    u = [torch.zeros_like(per_step[0][0]) for _ in range(n)]
    e = [torch.zeros_like(per_step[0][0]) for _ in range(n)]
    out = []
    for xs in per_step:
        u = [rho * ui + g for ui, g in zip(u, xs)]
        e = [ei + ui for ei, ui in zip(e, u)]
        _, idx = ops.topk_magnitude(sum(e), k)
        idx = idx.long()
        delta = torch.zeros_like(e[0])
        delta[idx] = sum(ei[idx] for ei in e) / n
        u = [ui.index_fill(0, idx, 0.0) for ui in u]
        e = [ei.index_fill(0, idx, 0.0) for ei in e]
        out.append(delta)
    return out


def test_matches_the_dense_rule_when_the_sketch_is_wide():
    """Far more buckets than coordinates: the sketch finds the true top k, and the values are exact anyway."""
    n, d, steps = 3, 60, 6
    c = SketchedSGD(ratio=1.0, rows=5, share=0.1, momentum=0.9)
    c.cols = lambda numel: 4000
    gen = torch.Generator().manual_seed(0)
    per_step = [[torch.randn(d, generator=gen) for _ in range(n)] for _ in range(steps)]
    got, _ = run_steps(c, per_step)
    for a, b in zip(got, dense_reference(per_step, k=6, rho=0.9)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4), d=st.integers(8, 300), steps=st.integers(1, 5), ratio=st.sampled_from([2.0, 4.0, 10.0]),
       rows=st.integers(1, 5), share=st.sampled_from([0.25, 0.5, 0.75]), rho=st.sampled_from([0.0, 0.9]),
       seed=st.integers(0, 2**31))
def test_nothing_is_lost_however_small_the_sketch(n, d, steps, ratio, rows, share, rho, seed):
    """Error feedback conserves mass: Σ_t Δ_t + mean_i e_i = Σ_t mean_i u_i,t, and Δ is the exact mean where nonzero.

    Holds for any sketch, however overloaded: the sketch only picks the
    coordinates, the second round fetches their exact values.
    """
    gen = torch.Generator().manual_seed(seed)
    per_step = [[torch.randn(d, generator=gen) for _ in range(n)] for _ in range(steps)]
    c = SketchedSGD(ratio=ratio, rows=rows, share=share, momentum=rho)
    got, workers = run_steps(c, per_step, seed)
    u = [torch.zeros(d) for _ in range(n)]
    pushed = torch.zeros(d)
    for t, xs in enumerate(per_step):
        u = [rho * ui + g for ui, g in zip(u, xs)]
        pushed += sum(u) / n
        assert int((got[t] != 0).sum()) <= c.count(d)
        u = [ui.masked_fill(got[t] != 0, 0.0) for ui in u]
    residual = sum(w.state_dict()["state"]["p"]["error"] for w in workers) / n
    torch.testing.assert_close(sum(got) + residual, pushed, rtol=1e-5, atol=1e-5)
    for w, ui in zip(workers, u):
        torch.testing.assert_close(w.state_dict()["state"]["p"]["momentum"], ui, rtol=1e-5, atol=1e-5)


def test_bytes_are_the_sketch_plus_the_exact_values_and_match_the_budget():
    for d, ratio, rows, share in [(205120, 20, 1, 0.5), (205120, 100, 5, 0.25), (5056, 20, 5, 0.75)]:
        c = SketchedSGD(ratio=ratio, rows=rows, share=share)
        wire = c.wire_bytes(torch.Size([d])).total
        assert wire == 4 * (rows * c.cols(d) + c.count(d))
        assert abs(wire / 4 - d / ratio) <= rows  # equal bytes to a sketch of d/ratio cells, up to rounding
        assert c.count(d) == round(share * d / ratio)


def test_collectives_are_the_sketch_then_the_k_values():
    d, c = 1000, SketchedSGD(ratio=10, rows=2, share=0.5)
    proto = c.exchange(torch.randn(d), TensorContext("w", 0, 0, 0, 1))
    first = next(proto)
    assert first.tensor.numel() == 2 * c.cols(d)
    second = proto.send(first.tensor.clone())
    assert second.tensor.numel() == c.count(d)


def test_state_dict_round_trip_resumes_bit_for_bit():
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(30, 40, generator=gen) for _ in range(4)]
    run = SketchedSGD(ratio=8)
    outs = [run_lockstep([run.exchange(x, TensorContext("w", t, 0, 0, 1))])[0] for t, x in enumerate(xs)]
    first = SketchedSGD(ratio=8)
    for t, x in enumerate(xs[:2]):
        run_lockstep([first.exchange(x, TensorContext("w", t, 0, 0, 1))])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    resumed = SketchedSGD(ratio=8)
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for t, x in list(enumerate(xs))[2:]:
        assert torch.equal(run_lockstep([resumed.exchange(x, TensorContext("w", t, 0, 0, 1))])[0], outs[t])


@pytest.mark.parametrize("state, match", [
    ({"other": {}}, "single key"), ({"state": {"w": {"momentum": torch.zeros(5)}}}, "exactly"),
    ({"state": {"w": {"momentum": torch.zeros(4, 3), "error": torch.zeros(4, 3)}}}, "1-D"),
    ({"state": {"w": {"momentum": torch.zeros(5), "error": torch.full((5,), float("inf"))}}}, "finite"),
])
def test_load_state_dict_rejects_malformed_state(state, match):
    with pytest.raises(ValueError, match=match):
        SketchedSGD().load_state_dict(state)


@pytest.mark.parametrize("round_", [0, 1])
def test_malformed_sum_in_either_round_raises_and_leaves_state_untouched(round_):
    c = SketchedSGD(ratio=4)
    proto = c.exchange(torch.randn(100), TensorContext("w", 0, 0, 0, 2))
    request = next(proto)
    if round_ == 1:
        request = proto.send(request.tensor.clone())
    with pytest.raises(WireFormatError):
        proto.send(torch.full_like(request.tensor, float("nan")))
    assert c.state_dict() == {"state": {}}


@pytest.mark.parametrize("kwargs", [{"ratio": 0}, {"rows": 0}, {"share": 0}, {"share": 1.0}, {"momentum": 1.0},
                                    {"chunk": 0}, {"share": True}])
def test_bad_configuration_raises_value_error(kwargs):
    with pytest.raises(ValueError):
        SketchedSGD(**kwargs)
