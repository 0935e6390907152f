"""The accountant is Opacus's RDP accountant: same ε as DP-SGD for the same (z, q, T); z chosen for a target ε."""

from __future__ import annotations

import io
import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from commlib.privacy import PrivacyAccountant, noise_multiplier_for


@pytest.mark.parametrize("z, q, steps", [(1.1, 0.01, 1000), (0.8, 0.05, 300), (2.0, 0.2, 50), (1.0, 1.0, 10)])
def test_epsilon_equals_opacus_dp_sgd(z, q, steps):
    ours = PrivacyAccountant()
    for _ in range(steps):
        ours.step(z, q)
    theirs = RDPAccountant()
    for _ in range(steps):
        theirs.step(noise_multiplier=z, sample_rate=q)
    for delta in (1e-5, 1e-3):
        assert ours.epsilon(delta) == theirs.get_epsilon(delta)
    assert ours.steps == steps


def test_full_batch_matches_the_gaussian_rdp_closed_form():
    """q = 1: RDP of order α is T·α/(2z²); Opacus converts with ε = min_α rdp + log((α−1)/α) − (log δ + log α)/(α−1)."""
    z, steps, delta = 3.0, 40, 1e-5
    acc = PrivacyAccountant()
    acc.step(z, 1.0, steps=steps)
    eps = min(steps * a / (2 * z * z) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
              for a in RDPAccountant.DEFAULT_ALPHAS)
    assert acc.epsilon(delta) == pytest.approx(eps, rel=1e-9)


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_noise_multiplier_reaches_the_target(target):
    q, steps, delta = 0.045, 400, 1e-5
    z = noise_multiplier_for(target, delta, q, steps)
    acc = PrivacyAccountant()
    acc.step(z, q, steps=steps)
    assert target - 0.05 <= acc.epsilon(delta) <= target
    tighter = PrivacyAccountant()
    tighter.step(0.95 * z, q, steps=steps)
    assert tighter.epsilon(delta) > target


def test_state_dict_round_trip():
    acc = PrivacyAccountant()
    acc.step(1.0, 0.1, steps=5)
    acc.step(2.0, 0.1, steps=3)
    buf = io.BytesIO()
    torch.save(acc.state_dict(), buf)
    other = PrivacyAccountant()
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert other.epsilon(1e-5) == acc.epsilon(1e-5) and other.steps == 8
    assert PrivacyAccountant().epsilon(1e-5) == 0


@pytest.mark.parametrize("call, match", [
    (lambda a: a.step(0.0, 0.1), "noise_multiplier"), (lambda a: a.step(1.0, 1.5), "sample_rate"),
    (lambda a: a.step(1.0, 0.1, steps=-1), "steps"), (lambda a: a.epsilon(0.0), "delta"),
    (lambda a: a.load_state_dict({"history": [[1.0, 0.1, 0]]}), "steps"),
    (lambda a: a.load_state_dict({"hist": []}), "history"),
    (lambda a: noise_multiplier_for(-1.0, 1e-5, 0.1, 10), "target_epsilon"),
    (lambda a: noise_multiplier_for(1.0, 1e-5, 0.1, 0), "steps"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(PrivacyAccountant())
