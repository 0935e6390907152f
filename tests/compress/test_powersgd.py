"""PowerSGD: full rank = mean, warm start, two ordered rounds, state commit after the last round, checkpoints, EF."""

from __future__ import annotations

import copy
import io

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from commlib.comm.collectives import AllReduce, as_round
from commlib.comm.local import execute_local, run_lockstep
from commlib.compress import PowerSGD, TensorContext
from commlib.compress.powersgd import orthonormalize_
from commlib.errors import WireFormatError


def exchange_all(compressors, xs, key="w", step=0, seed=0):
    n = len(xs)
    pairs = enumerate(zip(compressors, xs, strict=True))
    return run_lockstep([c.exchange(x, TensorContext(key, step, seed, r, n)) for r, (c, x) in pairs])


def workers(c: PowerSGD, n: int) -> list[PowerSGD]:
    return [copy.deepcopy(c) for _ in range(n)]


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@settings(max_examples=40, deadline=None)
@given(n_rows=st.integers(1, 10), m=st.integers(1, 10), n=st.sampled_from([2, 4]), seed=st.integers(0, 2**31))
def test_full_rank_equals_mean(n_rows, m, n, seed):
    xs = [randn(n_rows, m, seed=seed + r) for r in range(n)]
    mean = sum(xs) / n
    c = PowerSGD(rank=min(n_rows, m))
    out = exchange_all(workers(c, n), xs, seed=seed)
    assert all(torch.equal(o, out[0]) for o in out)
    assert relative_error(out[0], mean) <= 1e-4


@settings(max_examples=15, deadline=None)
@given(n_rows=st.integers(4, 10), seed=st.integers(0, 2**31))
def test_full_rank_equals_mean_for_ill_conditioned_means(n_rows, seed):
    """Mean with condition number 1e4: needs orthonormality to rounding level (one float32 MGS pass is not enough)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n_rows, n_rows, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n_rows, n_rows, generator=g, dtype=torch.float64))
    mean = (u * torch.logspace(0, -4, n_rows, dtype=torch.float64)) @ v.t()
    noise = torch.randn(n_rows, n_rows, generator=g, dtype=torch.float64)
    xs = [(mean + noise).float(), (mean - noise).float()]
    out = exchange_all(workers(PowerSGD(rank=n_rows), 2), xs, seed=seed)
    assert relative_error(out[0], (xs[0] + xs[1]) / 2) <= 1e-4


@settings(max_examples=30, deadline=None)
@given(
    n_rows=st.integers(2, 12),
    m=st.integers(2, 12),
    n=st.sampled_from([2, 4]),
    seed=st.integers(0, 2**31),
    log_scale=st.integers(-12, 6),
)
def test_full_rank_equals_mean_for_rank_deficient_means_over_warm_steps(n_rows, m, n, seed, log_scale):
    """Dead units (zero rows) and batches smaller than the layer make gradients rank-deficient; at any scale."""
    g = torch.Generator().manual_seed(seed)
    compressors = workers(PowerSGD(rank=min(n_rows, m)), n)
    for step in range(3):
        k = int(torch.randint(0, min(n_rows, m), (1,), generator=g))
        basis = torch.randn(k, m, generator=g) * 10.0**log_scale
        xs = [torch.randn(n_rows, k, generator=g) @ basis for _ in range(n)]
        dead = torch.rand(n_rows, generator=g) < 0.2
        for x in xs:
            x[dead] = 0
        mean = sum(xs) / n
        out = exchange_all(compressors, xs, step=step, seed=seed)
        assert (out[0] - mean).norm() <= 1e-4 * mean.norm()


@pytest.mark.parametrize("scale", [1e-13, 1e-6, 1e8])
def test_warm_steps_are_exact_at_any_gradient_scale(scale):
    """Warm Q carries the previous gradient's scale; P = M Q must not scale with its square (float32 underflow)."""
    compressors = workers(PowerSGD(rank=6), 2)
    for step in range(3):
        xs = [randn(6, 6, seed=10 * step + r) * scale for r in range(2)]
        mean = (xs[0] + xs[1]) / 2
        out = exchange_all(compressors, xs, step=step)
        assert relative_error(out[0], mean) <= 1e-4


def test_higher_order_tensors_are_viewed_as_matrices():
    xs = [randn(4, 3, 2, 2, seed=r) for r in range(2)]
    out = exchange_all(workers(PowerSGD(rank=4), 2), xs)
    assert out[0].shape == (4, 3, 2, 2)
    assert relative_error(out[0], (xs[0] + xs[1]) / 2) <= 1e-4


def test_low_rank_result_is_projection_of_mean():
    """rank r < min(n, m): the result is P Pᵀ mean(M) with P orthonormal (n × r)."""
    xs = [randn(12, 9, seed=r) for r in range(3)]
    mean = sum(xs) / 3
    out = exchange_all(workers(PowerSGD(rank=2), 3), xs)[0]
    u, _, _ = torch.linalg.svd(out)
    p = u[:, :2]
    torch.testing.assert_close(out, p @ p.t() @ mean, rtol=1e-4, atol=1e-5)
    assert torch.linalg.matrix_rank(out) == 2


def test_two_ordered_all_reduces():
    c = PowerSGD(rank=3)
    x = randn(7, 5, seed=0)
    gen = c.exchange(x, TensorContext("w", 0, 0, 0, 1))
    first = as_round(next(gen))
    assert len(first) == 1 and isinstance(first[0], AllReduce) and first[0].ordered
    assert first[0].tensor.shape == (7, 3) and first[0].tensor.dtype == torch.float32
    second = as_round(gen.send(execute_local(first)[0]))
    assert len(second) == 1 and isinstance(second[0], AllReduce) and second[0].ordered
    assert second[0].tensor.shape == (5, 3) and second[0].tensor.dtype == torch.float32
    with pytest.raises(StopIteration):
        gen.send(execute_local(second)[0])


def test_warm_start_reuses_q():
    xs0 = [randn(16, 12, seed=r) for r in range(2)]
    xs1 = [randn(16, 12, seed=10 + r) for r in range(2)]
    warm = workers(PowerSGD(rank=2), 2)
    exchange_all(warm, xs0, step=0)
    q0 = warm[0].state_dict()["q"]["w"]
    warm_out = exchange_all(warm, xs1, step=1)[0]
    cold_out = exchange_all(workers(PowerSGD(rank=2), 2), xs1, step=1)[0]
    assert relative_error(warm_out, cold_out) > 1e-3
    # the warm step is one power iteration started from the stored Q
    mean = (xs1[0] + xs1[1]) / 2
    p = orthonormalize_(mean @ q0, 1e-8)
    torch.testing.assert_close(warm_out, p @ (mean.t() @ p).t(), rtol=1e-4, atol=1e-5)


def test_cold_start_draws_a_fresh_q_each_step():
    xs = [randn(16, 12, seed=r) for r in range(2)]
    c = workers(PowerSGD(rank=2, warm_start=False), 2)
    exchange_all(c, xs, step=0)
    again = exchange_all(c, xs, step=1)[0]
    fresh = exchange_all(workers(PowerSGD(rank=2, warm_start=False), 2), xs, step=1)[0]
    assert torch.equal(again, fresh)
    assert relative_error(again, exchange_all(workers(PowerSGD(rank=2, warm_start=False), 2), xs, step=0)[0]) > 1e-3


def test_state_dict_round_trip_through_torch_save():
    xs = [randn(9, 6, 2, seed=r) for r in range(2)]
    c = workers(PowerSGD(rank=3), 2)
    exchange_all(c, xs, key="layer.weight")
    buf = io.BytesIO()
    torch.save(c[0].state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    restored = [PowerSGD(rank=3) for _ in range(2)]
    for r in restored:
        r.load_state_dict(state)
    assert torch.equal(state["q"]["layer.weight"], c[0].state_dict()["q"]["layer.weight"])
    xs1 = [randn(9, 6, 2, seed=5 + r) for r in range(2)]
    expected = exchange_all(c, xs1, key="layer.weight", step=1)
    got = exchange_all(restored, xs1, key="layer.weight", step=1)
    assert torch.equal(expected[0], got[0])


def test_load_empty_state_clears():
    c = PowerSGD(rank=2)
    exchange_all([c], [randn(5, 5, seed=0)])
    assert c.state_dict()["q"]
    c.load_state_dict({})
    assert c.state_dict() == {"q": {}}


@pytest.mark.parametrize(
    "junk",
    [
        {"p": {}},
        {"q": 3},
        {"q": {"w": "not a tensor"}},
        {"q": {1: torch.zeros(3, 2)}},
        {"q": {"w": torch.zeros(3)}},
        {"q": {"w": torch.zeros(3, 2, dtype=torch.int64)}},
        {"q": {"w": torch.full((3, 2), float("nan"))}},
        [1, 2],
    ],
)
def test_load_state_dict_rejects_junk(junk):
    c = PowerSGD(rank=2)
    with pytest.raises(ValueError, match="PowerSGD state"):
        c.load_state_dict(junk)


def test_non_finite_factor_from_a_peer_is_rejected_and_state_untouched():
    c = PowerSGD(rank=2)
    gen = c.exchange(randn(8, 6, seed=1), TensorContext("w", 0, 0, 0, 1))
    request = next(gen)
    bad = request.tensor.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(WireFormatError, match="non-finite"):
        gen.send(bad)
    assert c.state_dict() == {"q": {}}


def test_zeros_give_zeros_and_do_not_poison_the_warm_start():
    c = workers(PowerSGD(rank=3), 2)
    zeros = [torch.zeros(6, 4) for _ in range(2)]
    out = exchange_all(c, zeros, step=0)
    assert all(bool(torch.isfinite(o).all()) and not bool(o.any()) for o in out)
    assert bool(torch.isfinite(c[0].state_dict()["q"]["w"]).all())
    xs = [randn(6, 4, seed=r) for r in range(2)]
    mean = (xs[0] + xs[1]) / 2
    full = workers(PowerSGD(rank=4), 2)
    exchange_all(full, zeros, step=0)
    assert relative_error(exchange_all(full, xs, step=1)[0], mean) <= 1e-4
    assert relative_error(exchange_all(c, xs, step=1)[0], mean) < 1


def test_input_is_not_mutated_and_wire_bytes_match():
    x = randn(10, 3, 3, seed=0)
    keep = x.clone()
    c = PowerSGD(rank=4)
    exchange_all([c], [x])
    assert torch.equal(x, keep)
    assert c.wire_bytes(torch.Size([10, 3, 3])).values == 4 * (10 + 9) * 4
    assert c.wire_bytes(torch.Size([2, 50])).values == 4 * (2 + 50) * 2


def test_compressible_shapes():
    c = PowerSGD()
    assert not c.compressible(torch.Size([10]))
    assert not c.compressible(torch.Size([0, 5]))
    assert not c.compressible(torch.Size([5, 0]))
    assert c.compressible(torch.Size([1, 1]))
    assert c.compressible(torch.Size([3, 4, 5]))
    with pytest.raises(ValueError, match="2-D"):
        next(c.exchange(torch.zeros(5), TensorContext("w", 0, 0, 0, 1)))


# --- error feedback (the paper's Algorithm: M = G + e; e ← M − P Q̄ᵀ) ---------------------------------------------


def errors(compressors: list[PowerSGD], key: str = "w") -> list[torch.Tensor]:
    return [c.state_dict()["e"][key] for c in compressors]


@settings(max_examples=20, deadline=None)
@given(n_rows=st.integers(2, 16), m=st.integers(2, 16), rank=st.integers(1, 3), n=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 2**31))
def test_error_feedback_sums_of_outputs_are_sums_of_mean_inputs_minus_the_mean_error(n_rows, m, rank, n, seed):
    """Σₜ outₜ = Σₜ mean(Gₜ) − mean(e_T), and each rank's error is its own M minus the shared output."""
    g = torch.Generator().manual_seed(seed)
    compressors = workers(PowerSGD(rank=rank, error_feedback=True), n)
    total_in, total_out = torch.zeros(n_rows, m), torch.zeros(n_rows, m)
    previous = [torch.zeros(n_rows, m)] * n
    for step in range(6):
        xs = [torch.randn(n_rows, m, generator=g) for _ in range(n)]
        out = exchange_all(compressors, xs, step=step, seed=seed)
        assert all(torch.equal(o, out[0]) for o in out)
        for x, e_old, e_new in zip(xs, previous, errors(compressors), strict=True):
            torch.testing.assert_close(e_new, x + e_old - out[0], rtol=0, atol=1e-5)  # e ← M − P Q̄ᵀ, per rank
        previous = errors(compressors)
        total_in += sum(xs) / n
        total_out += out[0]
    mean_error = sum(previous) / n
    assert (total_out + mean_error - total_in).norm() <= 1e-5 * total_in.norm()


def test_error_feedback_makes_the_running_mean_of_outputs_track_the_gradient():
    """A rank-1 exchange of a noisy rank-12 gradient: with EF, Σ out ≈ Σ mean G; without, a projection stays."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 12, generator=g)
    xs_per_step = [[base + 0.3 * torch.randn(16, 12, generator=g) for _ in range(3)] for _ in range(60)]
    gaps = {}
    for feedback in (True, False):
        compressors = workers(PowerSGD(rank=1, error_feedback=feedback), 3)
        total_in, total_out = torch.zeros(16, 12), torch.zeros(16, 12)
        for step, xs in enumerate(xs_per_step):
            total_out += exchange_all(compressors, xs, step=step)[0]
            total_in += sum(xs) / 3
        gaps[feedback] = relative_error(total_out, total_in)
    assert gaps[True] < 0.2 < 0.6 < gaps[False]


@settings(max_examples=25, deadline=None)
@given(n_rows=st.integers(2, 12), m=st.integers(2, 12), n=st.sampled_from([2, 4]), seed=st.integers(0, 2**31),
       log_scale=st.integers(-8, 6), full=st.booleans())
def test_error_feedback_is_exact_for_rank_deficient_gradients(n_rows, m, n, seed, log_scale, full):
    """Gradients sharing a rank-k row space (dead rows too): rank k (or full rank) stays exact with EF, mean error 0."""
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(1, min(n_rows, m) + 1, (1,), generator=g))
    basis = torch.randn(k, m, generator=g) * 10.0**log_scale
    compressors = workers(PowerSGD(rank=min(n_rows, m) if full else k, error_feedback=True), n)
    scale = 0.0  # the largest gradient so far: rounding carried in the error is relative to it
    # float32 rounding, amplified by the conditioning of M·Q for the random start Q: 1.1e-4·scale at worst
    # seen (12 × 12 of rank 9, seed 0), under 2e-6 in 400 random draws; a wrong projection or mean is O(1)
    tol = 1e-3
    for step in range(4):
        xs = [torch.randn(n_rows, k, generator=g) @ basis for _ in range(n)]
        dead = torch.rand(n_rows, generator=g) < 0.2
        for x in xs:
            x[dead] = 0
        mean = sum(xs) / n
        scale = max(scale, *(float(x.norm()) for x in xs))
        out = exchange_all(compressors, xs, step=step, seed=seed)[0]
        assert (out - mean).norm() <= tol * scale
        assert (sum(errors(compressors)) / n).norm() <= tol * scale


def test_error_feedback_is_carried_into_the_next_step():
    """Step 2 of an EF run is the plain exchange of G₂ + e₁ (per rank), warm-started from the same Q."""
    xs1 = [randn(10, 7, seed=r) for r in range(2)]
    xs2 = [randn(10, 7, seed=5 + r) for r in range(2)]
    ef = workers(PowerSGD(rank=2, error_feedback=True), 2)
    exchange_all(ef, xs1, step=0)
    e1, q1 = errors(ef), ef[0].state_dict()["q"]["w"]
    plain = workers(PowerSGD(rank=2), 2)
    for c in plain:
        c.load_state_dict({"q": {"w": q1}})
    want = exchange_all(plain, [x + e for x, e in zip(xs2, e1)], step=1)
    got = exchange_all(ef, xs2, step=1)
    assert torch.equal(got[0], want[0])
    assert relative_error(got[0], exchange_all(workers(PowerSGD(rank=2), 2), xs2, step=1)[0]) > 1e-3


def test_error_feedback_state_round_trip_through_torch_save():
    xs = [randn(9, 6, 2, seed=r) for r in range(2)]
    c = workers(PowerSGD(rank=3, error_feedback=True), 2)
    exchange_all(c, xs, key="layer.weight")
    states = []
    for ci in c:
        buf = io.BytesIO()
        torch.save(ci.state_dict(), buf)
        buf.seek(0)
        states.append(torch.load(buf, weights_only=True))
    assert not torch.equal(states[0]["e"]["layer.weight"], states[1]["e"]["layer.weight"])  # the error is per rank
    assert states[0]["e"]["layer.weight"].shape == (9, 12)
    restored = [PowerSGD(rank=3, error_feedback=True) for _ in range(2)]
    for r, s in zip(restored, states):
        r.load_state_dict(s)
    xs1 = [randn(9, 6, 2, seed=5 + r) for r in range(2)]
    expected = exchange_all(c, xs1, key="layer.weight", step=1)
    got = exchange_all(restored, xs1, key="layer.weight", step=1)
    assert torch.equal(expected[0], got[0])
    assert all(torch.equal(a, b) for a, b in zip(errors(c, "layer.weight"), errors(restored, "layer.weight")))
    restored[0].load_state_dict({})
    assert restored[0].state_dict() == {"q": {}, "e": {}}


@pytest.mark.parametrize(
    "junk, match",
    [
        ({"e": 3}, "'e' must be a dict"),
        ({"e": {"w": torch.zeros(3)}}, "finite 2-D"),
        ({"e": {"w": torch.full((3, 2), float("inf"))}}, "finite 2-D"),
        ({"e": {2: torch.zeros(3, 2)}}, "map names"),
        ({"q": {"w": torch.zeros(5, 2)}, "e": {"w": torch.zeros(3, 4)}}, "does not fit"),
    ],
)
def test_load_state_dict_rejects_junk_error_buffers(junk, match):
    c = PowerSGD(rank=2, error_feedback=True)
    with pytest.raises(ValueError, match=match):
        c.load_state_dict(junk)


def test_error_buffers_need_error_feedback_on():
    with pytest.raises(ValueError, match="error_feedback=False"):
        PowerSGD(rank=2).load_state_dict({"q": {}, "e": {"w": torch.zeros(3, 2)}})
    assert "e" not in PowerSGD(rank=2).state_dict()  # the format without EF is unchanged


def test_error_buffer_of_another_shape_is_a_clear_error():
    c = PowerSGD(rank=2, error_feedback=True)
    c.load_state_dict({"e": {"w": torch.zeros(4, 4)}})
    with pytest.raises(ValueError, match="error-feedback buffer of 'w' has shape"):
        next(c.exchange(randn(5, 5, seed=0), TensorContext("w", 0, 0, 0, 1)))


@pytest.mark.parametrize("error_feedback", [False, True])
@pytest.mark.parametrize("rounds_done", [0, 1])
def test_closing_mid_protocol_leaves_state_untouched(rounds_done, error_feedback):
    """Q (and the error) stay as they were; after a few steps, once M is formed in a reused scratch buffer (it must
    never be the error's)."""
    c = PowerSGD(rank=2, error_feedback=error_feedback)
    for step in range(3):
        exchange_all([c], [randn(8, 6, seed=step)], step=step)
    before = c.state_dict()
    gen = c.exchange(randn(8, 6, seed=9), TensorContext("w", 3, 0, 0, 1))
    request = next(gen)
    for _ in range(rounds_done):
        request = gen.send(execute_local(as_round(request))[0])
    gen.close()
    after = c.state_dict()
    assert torch.equal(before["q"]["w"], after["q"]["w"])
    assert not error_feedback or torch.equal(before["e"]["w"], after["e"]["w"])


def test_error_feedback_non_finite_step_leaves_error_untouched_through_the_exchange():
    """A NaN on one rank: the bucket goes dense, e and Q keep their bits on every rank; the next step as if skipped."""
    from commlib.comm.exchange import ExchangeConfig, GradientExchange

    def exchanges():
        return [GradientExchange(PowerSGD(rank=2, error_feedback=True), r, 2, ExchangeConfig(start_step=0))
                for r in range(2)]

    def step(ws, grads, t):
        return run_lockstep([w.protocol([("w", g)], t) for w, g in zip(ws, grads)])

    g0, g2 = [randn(32, 24, seed=r) for r in range(2)], [randn(32, 24, seed=7 + r) for r in range(2)]
    bad = [randn(32, 24, seed=3), torch.full((32, 24), float("nan"))]
    hit, clean = exchanges(), exchanges()
    for t in range(3):
        step(hit, g0, t)
        step(clean, g0, t)
    before = [copy.deepcopy(w.compressor.state_dict()) for w in hit]
    (means, report), _ = step(hit, bad, 3)
    assert report.non_finite and bool(means[0].isnan().any())
    for w, old in zip(hit, before, strict=True):
        assert torch.equal(w.compressor.state_dict()["e"]["w"], old["e"]["w"])
        assert torch.equal(w.compressor.state_dict()["q"]["w"], old["q"]["w"])
    assert torch.equal(step(hit, g2, 4)[0][0][0], step(clean, g2, 4)[0][0][0])


def test_resized_keeps_the_error_buffer():
    """An L-GreCo rank change (``resized``) shares the error store: the new rank compresses G + e_old."""
    xs0, xs1 = [randn(24, 40, seed=r) for r in range(2)], [randn(24, 40, seed=4 + r) for r in range(2)]
    first = workers(PowerSGD(rank=2, error_feedback=True), 2)
    exchange_all(first, xs0, step=0)
    e0, q0 = errors(first), first[0].state_dict()["q"]["w"]
    second = [c.resized(5) for c in first]
    assert all(s.error_feedback and s.rank == 5 for s in second)
    got = exchange_all(second, xs1, step=1)[0]
    fresh = [PowerSGD(rank=5, error_feedback=True) for _ in range(2)]
    for f, e in zip(fresh, e0):
        f.load_state_dict({"q": {"w": q0}, "e": {"w": e}})
    assert torch.equal(got, exchange_all(fresh, xs1, step=1)[0])
    assert all(torch.equal(a, b) for a, b in zip(errors(first), errors(second)))  # one store, updated once


def test_error_feedback_is_part_of_the_config():
    from commlib.comm.fingerprint import fingerprint

    on, off = PowerSGD(rank=4, error_feedback=True), PowerSGD(rank=4)
    assert on.config()["error_feedback"] is True and off.config()["error_feedback"] is False
    assert fingerprint(on.config()) != fingerprint(off.config())
    assert on.wire_bytes(torch.Size([10, 9])) == off.wire_bytes(torch.Size([10, 9]))  # EF costs no wire bytes
    with pytest.raises(ValueError, match="error_feedback must be a bool"):
        PowerSGD(error_feedback=1)


@pytest.mark.parametrize("error_feedback", [False, True])
def test_writable_input_receives_the_result_with_the_same_bits(error_feedback: bool) -> None:
    """A handed-over input (``ctx.writable``, the DDP bucket) is overwritten with the result, bit for bit the
    result written elsewhere, over warm-started steps; without ``writable`` the input is never written."""
    n = 3
    kept, handed = workers(PowerSGD(2, error_feedback=error_feedback), n), workers(
        PowerSGD(2, error_feedback=error_feedback), n)
    for step in range(3):
        xs = [randn(6, 2, 5, seed=10 * step + r) for r in range(n)]
        originals = [x.clone() for x in xs]
        plain = run_lockstep([c.exchange(x, TensorContext("w", step, 0, r, n)) for r, (c, x) in
                              enumerate(zip(kept, xs))])
        assert all(torch.equal(x, o) for x, o in zip(xs, originals))  # not handed over: untouched
        inputs = [o.clone() for o in originals]
        written = run_lockstep([c.exchange(x, TensorContext("w", step, 0, r, n, writable=True)) for r, (c, x) in
                                enumerate(zip(handed, inputs))])
        for x, out, ref in zip(inputs, written, plain):
            assert out.data_ptr() == x.data_ptr() and torch.equal(x, ref)


def test_exchange_hands_over_the_bucket_only_when_inplace() -> None:
    """``protocol(inplace=True)`` (the DDP hook) lets PowerSGD write into the gradient itself, with the same bits
    as ``inplace=False``, which leaves the gradient untouched; dense tensors keep their own path."""
    from commlib.comm.exchange import ExchangeConfig, GradientExchange

    def results(inplace: bool) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        ws = [GradientExchange(PowerSGD(rank=2), r, 2, ExchangeConfig(start_step=0)) for r in range(2)]
        grads = [[randn(32, 24, seed=r), randn(300, seed=5 + r)] for r in range(2)]
        outs = run_lockstep([w.protocol([("w", g[0]), ("b", g[1])], 0, inplace=inplace) for w, g in zip(ws, grads)])
        return grads, [means for means, _ in outs]

    kept_grads, kept = results(inplace=False)
    handed_grads, handed = results(inplace=True)
    assert all(torch.equal(g[0], randn(32, 24, seed=r)) for r, g in enumerate(kept_grads))
    for g, means, ref in zip(handed_grads, handed, kept):
        assert means[0].data_ptr() == g[0].data_ptr()  # the matrix's result is written into its gradient
        assert torch.equal(means[0], ref[0]) and torch.equal(means[1], ref[1])
