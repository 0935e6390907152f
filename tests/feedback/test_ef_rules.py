"""Update rules, identities, the two-phase contract, checkpointing and argument checks of commlib.feedback."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from commlib.compress import FP16, QSGD, PowerSGD, RandK, Sign, TensorContext, TopK
from commlib.feedback import (
    EF14,
    EF21,
    EF21SGDM,
    EControl,
    NoFeedback,
    default_eta,
    is_finite,
    local_compress,
)
from commlib.feedback.simulate import rank_order_mean, run

F64 = torch.float64


def ctx(i: int = 0, n: int = 1, step: int = 0, key: str = "w") -> TensorContext:
    return TensorContext(key=key, step=step, seed=7, rank=i, world_size=n)


def step_all(workers, grads, compressor, t: int, key: str = "w"):
    """One synchronous step of all workers through message → compress → rank-order mean → commit."""
    n = len(workers)
    deltas = [
        local_compress(compressor, w.message(key, g), ctx(i, n, t, key)).to(w.dtype)
        for i, (w, g) in enumerate(zip(workers, grads))
    ]
    dm = rank_order_mean(deltas)
    return [w.commit(key, g, d, dm) for w, g, d in zip(workers, grads, deltas)], deltas, dm


# ---------------------------------------------------------------------------------------------------------
# Exact update rules on a hand-checked step
# ---------------------------------------------------------------------------------------------------------


def test_rules_by_hand_two_workers_top1():
    c = TopK(k=1)
    g = [torch.tensor([1.0, -4.0, 2.0], dtype=F64), torch.tensor([3.0, 0.5, -1.0], dtype=F64)]
    # EF14 step 1: Δ₀ = (0,-4,0), Δ₁ = (3,0,0); e₀ = (1,0,2), e₁ = (0,.5,-1); out = (1.5,-2,0)
    w = [EF14(dtype=F64) for _ in range(2)]
    out, _, _ = step_all(w, g, c, 0)
    assert torch.equal(out[0], torch.tensor([1.5, -2.0, 0.0], dtype=F64))
    assert torch.equal(w[0].get("w")["e"], torch.tensor([1.0, 0.0, 2.0], dtype=F64))
    # EF14 step 2 with the same g: u₀ = (2,-4,4) → Δ₀ = (0,-4,0) (ties to the lower index), e₀ = (2,0,4)
    assert torch.equal(w[0].message("w", g[0]), torch.tensor([2.0, -4.0, 4.0], dtype=F64))
    out, d, _ = step_all(w, g, c, 1)
    assert torch.equal(d[0], torch.tensor([0.0, -4.0, 0.0], dtype=F64))
    assert torch.equal(w[0].get("w")["e"], torch.tensor([2.0, 0.0, 4.0], dtype=F64))

    # EControl(η = 0.5), state after a first step from zero: hᵢ = Δᵢ, eᵢ = g − Δᵢ, h = mean Δ
    w = [EControl(eta=0.5, dtype=F64) for _ in range(2)]
    step_all(w, g, c, 0)
    s0 = w[0].get("w")
    assert torch.equal(s0["h_local"], torch.tensor([0.0, -4.0, 0.0], dtype=F64))
    assert torch.equal(s0["e"], torch.tensor([1.0, 0.0, 2.0], dtype=F64))
    assert torch.equal(s0["h"], torch.tensor([1.5, -2.0, 0.0], dtype=F64))
    # step 2, worker 0, g' = (0, 0, 1): u = 0.5·(1,0,2) + (0,0,1) − (0,−4,0) = (0.5, 4, 2)
    g2 = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    assert torch.equal(w[0].message("w", g2), torch.tensor([0.5, 4.0, 2.0], dtype=F64))
    delta = torch.tensor([0.0, 4.0, 0.0], dtype=F64)
    dm = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    out = w[0].commit("w", g2, delta, dm)
    assert torch.equal(s0["e"], torch.tensor([1.0, 0.0, 3.0], dtype=F64))  # e + g − hᵢ − Δ
    assert torch.equal(s0["h_local"], torch.tensor([0.0, 0.0, 0.0], dtype=F64))
    assert torch.equal(out, torch.tensor([2.5, -1.0, 1.0], dtype=F64))

    # EF21-SGDM(β = 0.25) from zero: v = 0.25·g, u = v − hᵢ; then v = 0.75·v + 0.25·g
    w = EF21SGDM(beta=0.25, dtype=F64)
    assert torch.equal(w.message("w", g[0]), torch.tensor([0.25, -1.0, 0.5], dtype=F64))
    w.commit("w", g[0], torch.tensor([0.0, -1.0, 0.0], dtype=F64), torch.zeros(3, dtype=F64))
    assert torch.equal(w.get("w")["v"], torch.tensor([0.25, -1.0, 0.5], dtype=F64))
    assert torch.equal(w.message("w", g[0]), torch.tensor([0.4375, -0.75, 0.875], dtype=F64))


def test_outputs_are_fresh_tensors_not_state():
    w = EF21()
    out = w.commit("w", torch.ones(3), torch.ones(3), torch.ones(3))
    out.zero_()
    assert torch.equal(w.get("w")["h"], torch.ones(3))


# ---------------------------------------------------------------------------------------------------------
# Identities for arbitrary gradient sequences (hypothesis)
# ---------------------------------------------------------------------------------------------------------

finite = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 4))
    d = draw(st.integers(1, 6))
    steps = draw(st.integers(1, 6))
    grads = draw(
        st.lists(
            st.lists(st.lists(finite, min_size=d, max_size=d), min_size=n, max_size=n),
            min_size=steps,
            max_size=steps,
        )
    )
    kind = draw(st.sampled_from(["topk", "randk", "sign", "qsgd"]))
    density = draw(st.sampled_from([0.1, 0.34, 0.5, 1.0]))
    comp = {
        "topk": TopK(density=density),
        "randk": RandK(density=density),
        "sign": Sign(),
        "qsgd": QSGD(levels=1, bucket_size=4),
    }[kind]
    warm = draw(st.booleans())
    return torch.tensor(grads, dtype=F64), comp, warm


def close(a: torch.Tensor, b: torch.Tensor, scale: float) -> bool:
    return bool((a - b).abs().max() <= 1e-12 * max(1.0, scale))


@settings(max_examples=60, deadline=None)
@given(problems(), st.floats(0.0, 0.3), st.floats(0.01, 1.0))
def test_econtrol_identities(problem, eta, lr):
    grads, comp, warm = problem
    steps, n, d = grads.shape
    workers = [EControl(eta=eta, dtype=F64) for _ in range(n)]
    if warm:
        gm = rank_order_mean(list(grads[0]))
        for w, g in zip(workers, grads[0]):
            w.warm_start("w", g, gm)
    x = torch.zeros(d, dtype=F64)
    x_tilde = x.clone()  # SGD on the mean gradient, from the same start
    for t in range(steps):
        before = [{b: v.clone() for b, v in w.get("w").items()} if w.get("w") else None for w in workers]
        outs, _, _ = step_all(workers, list(grads[t]), comp, t)
        x = x - lr * outs[0]
        x_tilde = x_tilde - lr * rank_order_mean(list(grads[t]))
        states = [w.get("w") for w in workers]
        scale = max(float(s[b].abs().max()) for s in states for b in s) + float(grads[t].abs().max())
        assert all(torch.equal(o, outs[0]) for o in outs)  # every rank steps with the same bits
        assert close(states[0]["h"], rank_order_mean([s["h_local"] for s in states]), scale)
        assert all(torch.equal(s["h"], states[0]["h"]) for s in states)
        for s, prev, g in zip(states, before, grads[t]):
            e0 = prev["e"] if prev else torch.zeros(d, dtype=F64)
            assert close(s["e"] + s["h_local"], e0 + g, scale)  # eᵢ' + hᵢ' = eᵢ + gᵢ
        e_bar = rank_order_mean([s["e"] for s in states])
        assert close(x - lr * e_bar, x_tilde, scale * max(1.0, lr * (t + 1)))  # virtual iterate = SGD


@settings(max_examples=40, deadline=None)
@given(problems(), st.floats(0.01, 1.0))
def test_ef14_virtual_iterate_is_sgd(problem, lr):
    grads, comp, _ = problem
    steps, n, d = grads.shape
    workers = [EF14(dtype=F64) for _ in range(n)]
    x = torch.zeros(d, dtype=F64)
    x_tilde = x.clone()
    for t in range(steps):
        outs, _, dm = step_all(workers, list(grads[t]), comp, t)
        assert torch.equal(outs[0], dm)
        x = x - lr * outs[0]
        x_tilde = x_tilde - lr * rank_order_mean(list(grads[t]))
        e_bar = rank_order_mean([w.get("w")["e"] for w in workers])
        scale = float(e_bar.abs().max()) + float(grads[: t + 1].abs().sum(0).max())
        assert close(x - lr * e_bar, x_tilde, scale)


@settings(max_examples=40, deadline=None)
@given(problems(), st.floats(0.0, 1.0), st.floats(0.01, 0.5))
def test_ef21_family_h_is_mean_of_local_estimates(problem, beta_or_zero, lr):
    grads, comp, warm = problem
    steps, n, d = grads.shape
    beta = max(beta_or_zero, 0.05)
    for make in (lambda: EF21(dtype=F64), lambda: EF21SGDM(beta=beta, dtype=F64)):
        workers = [make() for _ in range(n)]
        for t in range(steps):
            step_all(workers, list(grads[t]), comp, t)
            states = [w.get("w") for w in workers]
            scale = max(float(s[b].abs().max()) for s in states for b in s)
            assert close(states[0]["h"], rank_order_mean([s["h_local"] for s in states]), scale)


def _trajectory(factory, grads_fn, comp, n: int, d: int, steps: int, warm: bool):
    res = run(factory, comp, grads_fn, torch.linspace(-1, 1, d, dtype=F64), lr=0.1, steps=steps, n=n, warm_start=warm)
    return res.x, [w.get("x") for w in res.workers]


@settings(max_examples=30, deadline=None)
@given(problems())
def test_econtrol_eta_zero_is_ef21_bit_for_bit(problem):
    grads, comp, warm = problem
    steps, n, d = grads.shape

    def grads_fn(x, i, t):  # depends on x, so the whole trajectory is compared
        return grads[t, i] + 0.5 * x

    x_ec, s_ec = _trajectory(lambda: EControl(eta=0.0, dtype=F64), grads_fn, comp, n, d, steps, warm)
    x_21, s_21 = _trajectory(lambda: EF21(dtype=F64), grads_fn, comp, n, d, steps, warm)
    assert torch.equal(x_ec, x_21)
    for a, b in zip(s_ec, s_21):
        assert torch.equal(a["h_local"], b["h_local"]) and torch.equal(a["h"], b["h"])
    # and EF21-SGDM with β = 1 is EF21 too
    x_m, _ = _trajectory(lambda: EF21SGDM(beta=1.0, dtype=F64), grads_fn, comp, n, d, steps, warm)
    assert torch.equal(x_m, x_21)


# ---------------------------------------------------------------------------------------------------------
# Two-phase contract, dtypes, non-finite gradients
# ---------------------------------------------------------------------------------------------------------

ALL = [NoFeedback, EF14, EF21, lambda: EF21SGDM(beta=0.3), lambda: EControl(eta=0.2)]


@pytest.mark.parametrize("make", ALL, ids=["none", "ef14", "ef21", "ef21sgdm", "econtrol"])
def test_message_does_not_touch_state(make):
    w = make()
    g = torch.tensor([1.0, -2.0, 3.0, 0.5])
    w.message("w", g)
    assert w.keys() == []  # lazily created only at commit
    c = TopK(k=2)
    for t in range(3):
        u = w.message("w", g * (t + 1))
        d = c.compress(u)
        w.commit("w", g * (t + 1), d, d)
    before = copy.deepcopy(w.state_dict())
    for _ in range(2):
        u = w.message("w", g)
        u.add_(1.0)  # the message is a fresh tensor: writing to it must not reach the state
        after = w.state_dict()
        for k in before["state"]:
            for b in before["state"][k]:
                assert torch.equal(before["state"][k][b], after["state"][k][b])


@pytest.mark.parametrize("make", ALL[1:], ids=["ef14", "ef21", "ef21sgdm", "econtrol"])
def test_state_is_fp32_for_other_float_inputs(make):
    w = make()
    g = torch.tensor([1.0, -2.0, 3.0], dtype=torch.bfloat16)
    u = w.message("w", g)
    assert u.dtype == torch.float32
    d = TopK(k=1).compress(u)
    out = w.commit("w", g, d.half(), d.double())
    assert out.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in w.get("w").values())
    assert set(w.get("w")) == set(type(w).buffers)
    with pytest.raises(ValueError, match="shape"):
        w.message("w", torch.ones(4))
    with pytest.raises(ValueError, match="delta_mean"):
        w.commit("w", torch.ones(3), torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="floating"):
        w.message("w", torch.ones(3, dtype=torch.int64))


def test_non_finite_gradient_skip_leaves_state_untouched():
    c = TopK(k=1)
    w = EControl(eta=0.1)
    g = torch.tensor([0.3, -1.0, 2.0])
    for _ in range(3):
        u = w.message("w", g)
        w.commit("w", g, c.compress(u), c.compress(u))
    snapshot = w.state_dict()
    bad = torch.tensor([0.3, float("inf"), 2.0])
    assert is_finite(g) and not is_finite(bad) and not is_finite(torch.tensor([float("nan")]))
    # the driver's protocol: a non-finite g is passed through dense and commit is not called
    if is_finite(bad):
        u = w.message("w", bad)
        w.commit("w", bad, c.compress(u), c.compress(u))
    for b, t in snapshot["state"]["w"].items():
        assert torch.equal(w.get("w")[b], t)


def test_warm_start_sets_estimators():
    gl, gm = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    for make, expect in [
        (EF14, {"e": 0 * gl}),
        (EF21, {"h_local": gl, "h": gm}),
        (lambda: EF21SGDM(beta=0.5), {"v": gl, "h_local": gl, "h": gm}),
        (EControl, {"e": 0 * gl, "h_local": gl, "h": gm}),
    ]:
        w = make()
        w.warm_start("w", gl.double(), gm)
        assert set(w.get("w")) == set(expect)
        for b, v in expect.items():
            assert torch.equal(w.get("w")[b], v)
    # right after a warm start with the same g, EF21/EControl send nothing and output the dense mean
    w = EControl()
    w.warm_start("w", gl, gm)
    assert torch.equal(w.message("w", gl), torch.zeros(2))
    assert torch.equal(w.commit("w", gl, torch.zeros(2), torch.zeros(2)), gm)


def test_bytes_per_element():
    got = [m().bytes_per_element() for m in ALL]
    assert got == [0, 4, 8, 12, 12]
    assert EControl(dtype=F64).bytes_per_element() == 24


# ---------------------------------------------------------------------------------------------------------
# Checkpointing
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", ALL, ids=["none", "ef14", "ef21", "ef21sgdm", "econtrol"])
def test_state_dict_round_trip_through_torch_save(make):
    c = TopK(k=2)
    gen = torch.Generator().manual_seed(0)
    a = make()
    for _t in range(4):
        for key, shape in (("layer.weight", (3, 4)), ("layer.bias", (4,))):
            g = torch.randn(shape, generator=gen)
            d = c.compress(a.message(key, g))
            a.commit(key, g, d, 0.5 * d)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    b = make()
    b.load_state_dict(loaded)
    assert loaded["config"] == a.config()
    assert sorted(b.keys()) == sorted(a.keys())
    for _t in range(3):
        for key, shape in (("layer.weight", (3, 4)), ("layer.bias", (4,))):
            g = torch.randn(shape, generator=gen)
            ua, ub = a.message(key, g), b.message(key, g)
            assert torch.equal(ua, ub)
            d = c.compress(ua)
            assert torch.equal(a.commit(key, g, d, d), b.commit(key, g, d, d))
    # loading is a copy: later steps of b do not alias the loaded dict
    if a.buffers:
        first = next(iter(loaded["state"]["layer.bias"].values()))
        assert not any(first.data_ptr() == t.data_ptr() for t in b.get("layer.bias").values())


def test_load_state_dict_rejects_mismatches():
    sd = EControl().state_dict()
    with pytest.raises(ValueError, match="econtrol"):
        EF21().load_state_dict(sd)
    bad = {"name": "econtrol", "config": {}, "state": {"w": {"e": torch.zeros(2), "h": torch.zeros(2)}}}
    with pytest.raises(ValueError, match="h_local"):
        EControl().load_state_dict(bad)
    bad["state"]["w"]["h_local"] = torch.zeros(3)
    with pytest.raises(ValueError, match="one shape"):
        EControl().load_state_dict(bad)


# ---------------------------------------------------------------------------------------------------------
# Arguments and compressors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [-0.01, 1.01, math.nan, math.inf, True, "0.1", None])
def test_bad_eta(eta):
    with pytest.raises(ValueError, match="eta"):
        EControl(eta=eta)


@pytest.mark.parametrize("beta", [0, 0.0, -0.5, 1.5, math.nan, False, "0.5"])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        EF21SGDM(beta=beta)


def test_eta_and_beta_bounds_are_accepted():
    assert EControl(eta=0).eta == 0.0 and EControl(eta=1).eta == 1.0
    assert EF21SGDM(beta=1).beta == 1.0


def test_dtype_must_be_floating():
    with pytest.raises(ValueError, match="dtype"):
        EF21(dtype=torch.int32)


@pytest.mark.parametrize("comp", [PowerSGD(rank=1), FP16()], ids=["powersgd", "fp16"])
def test_compressor_without_local_compress_is_rejected(comp):
    with pytest.raises(ValueError, match=type(comp).__name__):
        run(EF21, comp, lambda x, i, t: x, torch.ones(4), lr=0.1, steps=1, n=2)
    with pytest.raises(ValueError, match="local compress"):
        local_compress(comp, torch.ones(4), ctx())
    with pytest.raises(ValueError) as raised:
        local_compress(comp, torch.ones(4), ctx())
    assert ("error_feedback=True" in str(raised.value)) == isinstance(comp, PowerSGD)  # points PowerSGD to its own


@pytest.mark.parametrize(
    "comp",
    [TopK(density=0.25), RandK(density=0.25), Sign(chunk_size=4), QSGD(bits=4, bucket_size=4)],
    ids=["topk", "randk", "sign", "qsgd"],
)
def test_econtrol_runs_with_every_local_compressor(comp):
    target = torch.linspace(-1, 1, 8, dtype=F64)
    res = run(
        lambda: EControl(eta=0.05),
        comp,
        lambda x, i, t: x - target * (i + 1),
        torch.zeros(8, dtype=F64),
        lr=0.1,
        steps=20,
        n=3,
        warm_start=True,
        seed=3,
    )
    assert torch.isfinite(res.x).all()
    h = [w.get("x") for w in res.workers]
    assert all(torch.equal(s["h"], h[0]["h"]) for s in h)
    assert torch.allclose(h[0]["h"], rank_order_mean([s["h_local"] for s in h]), atol=1e-5)


def test_default_eta():
    assert default_eta(TopK(density=0.01), 1000) == pytest.approx(0.005)
    assert default_eta(TopK(k=1), 3) == pytest.approx(1 / 6)
    assert default_eta(RandK(density=0.1), 100) == pytest.approx(0.05)
    for comp in (RandK(density=0.1, unbiased=True), QSGD(bits=4), Sign()):
        with pytest.raises(ValueError, match="eta explicitly"):
            default_eta(comp, 100)
    with pytest.raises(ValueError, match="numel"):
        default_eta(TopK(k=1), 0)
    assert EControl().eta == default_eta(TopK(density=0.01), 10_000)
