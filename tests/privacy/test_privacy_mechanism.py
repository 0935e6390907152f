"""The sketched Gaussian mechanism: noise z²C² added exactly once per step, sensitivity C, clipping, no EF."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from commlib.comm.exchange import GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import TensorContext
from commlib.feedback import EF14
from commlib.privacy import DPSketch, clip_per_sample, clip_update, per_sample_gradients
from commlib.sim import Simulator

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one intra-op thread per test


def dp_simulator(n: int, **kwargs) -> Simulator:
    """Every tensor through the mechanism: no warm-up, no size or rate threshold."""
    return Simulator(DPSketch(**kwargs), n, seed=5, start_step=0, min_numel=1, min_compression_rate=0)


def test_noise_is_added_exactly_once_per_step():
    """Zero gradients on 4 workers: n·R(mean) recovers the summed noise; its variance is z²C², not n·z²C²."""
    n, d, z, c = 4, 8192, 1.5, 0.7
    mech = DPSketch(noise_multiplier=z, max_norm=c, noise_seed=99, ratio=4, rescale=False, block=1024)
    sim = dp_simulator(n, noise_multiplier=z, max_norm=c, noise_seed=99, ratio=4, rescale=False, block=1024)
    samples = []
    for step in range(3):
        mean = sim.exchange([[("model", torch.zeros(1, d))] for _ in range(n)])[0]
        op = mech.operator(d, TensorContext("model", step, 5, 0, n))
        samples.append(n * op.apply(mean))
    noise = torch.cat(samples).double()
    assert abs(float(noise.mean())) < 0.05 * z * c
    assert abs(float(noise.var()) / (z * c) ** 2 - 1) < 0.1


def test_only_the_noise_rank_adds_noise_and_noise_depends_on_the_secret_seed():
    d, n = 1024, 3
    x = torch.randn(1, d, generator=torch.Generator().manual_seed(0))
    mech = DPSketch(noise_multiplier=1.0, max_norm=100.0, noise_seed=7, ratio=4, noise_rank=1)
    clean = DPSketch(noise_multiplier=0.0, max_norm=100.0, noise_seed=7, ratio=4)
    ctxs = [TensorContext("model", 2, 0, r, n) for r in range(n)]
    payloads = [mech.encode(x, ctx) for ctx in ctxs]
    assert torch.equal(payloads[0], clean.encode(x, ctxs[0])) and torch.equal(payloads[2], payloads[0])
    assert not torch.equal(payloads[1], payloads[0])
    other_secret = DPSketch(noise_multiplier=1.0, max_norm=100.0, noise_seed=8, ratio=4, noise_rank=1)
    assert not torch.equal(other_secret.encode(x, ctxs[1]), payloads[1])
    assert torch.equal(DPSketch(noise_multiplier=1.0, max_norm=100.0, noise_seed=7, ratio=4,
                                noise_rank=1).encode(x, ctxs[1]), payloads[1])  # deterministic


def test_sensitivity_is_the_clipping_bound():
    """Orthonormal rows: ‖R(clip g) − R(clip g')‖ ≤ ‖clip g − clip g'‖ ≤ 2C; with ratio 1, R is a rotation."""
    d, c = 4096, 1.0
    gen = torch.Generator().manual_seed(1)
    ctx = TensorContext("model", 0, 0, 1, 2)  # not the noise rank
    for ratio in (1, 4):
        mech = DPSketch(noise_multiplier=1.0, max_norm=c, noise_seed=3, ratio=ratio)
        for _ in range(5):
            g = 10 * torch.randn(1, d, generator=gen)
            assert float(mech.encode(g, ctx).norm()) <= c * (1 + 1e-5)
            small = 1e-3 * g / g.norm()
            norm = float(mech.encode(small, ctx).norm())
            assert norm <= 1e-3 * (1 + 1e-5) and (ratio > 1 or abs(norm - 1e-3) < 1e-7)


def test_rescale_makes_the_noiseless_mechanism_unbiased():
    d, steps = 2048, 300
    g = torch.randn(1, d, generator=torch.Generator().manual_seed(2))
    mech = DPSketch(noise_multiplier=0.0, max_norm=1e6, noise_seed=3, ratio=8, block=512)
    est = torch.stack([mech.decode(mech.encode(g, TensorContext("m", t, 0, 0, 1)), g.shape,
                                   TensorContext("m", t, 0, 0, 1)) for t in range(steps)]).mean(0)
    assert float((est - g).norm() / g.norm()) < 1.25 * (7 / steps) ** 0.5


def test_clipping():
    gen = torch.Generator().manual_seed(3)
    ts = [torch.randn(5, 4, generator=gen), torch.randn(7, generator=gen)]
    clipped = clip_update(ts, 0.5)
    assert abs(float(torch.cat([t.reshape(-1) for t in clipped]).norm()) - 0.5) < 1e-5
    assert all(torch.equal(a, b) for a, b in zip(clip_update(ts, 1e6), ts))
    per = [torch.randn(6, 5, 4, generator=gen), torch.randn(6, 7, generator=gen)]
    summed = clip_per_sample(per, 0.3)
    expected = [torch.zeros(5, 4), torch.zeros(7)]
    for j in range(6):
        for e, t in zip(expected, clip_update([p[j] for p in per], 0.3)):
            e += t
    for a, b in zip(summed, expected):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="finite"):
        clip_update([torch.tensor([float("nan")])], 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_per_sample(per, 0.0)


def test_per_sample_gradients_match_a_loop():
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x, y = torch.randn(5, 4, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 1, 0, 1])
    per = per_sample_gradients(model, nn.functional.cross_entropy, x, y)
    for j in range(5):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[j : j + 1]), y[j : j + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(per[name][j], p.grad)


def test_error_feedback_is_refused():
    mech = DPSketch(noise_multiplier=1.0, max_norm=1.0, noise_seed=3)
    with pytest.raises(ValueError, match="error feedback"):
        GradientExchange(mech, 0, 2, feedback=EF14())
    with pytest.raises(ValueError, match="sensitivity"):
        next(mech.exchange_local(torch.zeros(10), TensorContext("m", 0, 0, 0, 1)))


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="noise_multiplier"):
        DPSketch(noise_multiplier=-1.0, max_norm=1.0, noise_seed=3)
    with pytest.raises(ValueError, match="max_norm"):
        DPSketch(noise_multiplier=1.0, max_norm=0.0, noise_seed=3)
    with pytest.raises(ValueError, match="noise_seed"):
        DPSketch(noise_multiplier=1.0, max_norm=1.0, noise_seed="secret")
    mech = DPSketch(noise_multiplier=1.0, max_norm=1.0, noise_seed=3)
    with pytest.raises(ValueError, match="exchange seed"):
        mech.encode(torch.ones(1, 10), TensorContext("m", 0, 3, 0, 1))
    with pytest.raises(ValueError, match="finite"):
        mech.encode(torch.full((1, 10), float("inf")), TensorContext("m", 0, 0, 0, 1))
    with pytest.raises(ValueError, match="noise_rank"):
        run_lockstep([DPSketch(noise_multiplier=1.0, max_norm=1.0, noise_seed=3, noise_rank=2).exchange(
            torch.ones(1, 10), TensorContext("m", 0, 0, 0, 1))])
    assert "noise_seed" not in mech.config() and "noise_seed" not in repr(mech)
