"""Sketching leaks the input when the seed is known (DLG in sketch space); the DP mechanism stops the attack."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from commlib.compress import TensorContext
from commlib.privacy import DPSketch
from commlib.privacy.attacks import reconstruct, sketched_gradient
from commlib.train import load_digits
from commlib.train.models import init_

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one intra-op thread per test


def test_reconstruction_succeeds_without_noise_and_fails_with_dp():
    data = load_digits()
    model = init_(nn.Sequential(nn.Linear(64, 16), nn.Sigmoid(), nn.Linear(16, 10)), seed=0)
    d = sum(p.numel() for p in model.parameters())
    bounds = (data.x_train.min(0).values, data.x_train.max(0).values)
    ctx = TensorContext("model", 3, 0, 0, 1)  # the victim is the noising rank; the attacker knows seed and step
    errors = {}
    for z in (0.0, 1.0):
        mech = DPSketch(noise_multiplier=z, max_norm=1.0, noise_seed=12345, ratio=4)
        op = mech.operator(d, ctx)
        for i in range(2):
            x, y = data.x_train[i : i + 1], data.y_train[i : i + 1]
            observed = mech.encode(_gradient(model, x, y), ctx)
            if z == 0:  # the attacker's forward model is exactly what the mechanism sends
                torch.testing.assert_close(sketched_gradient(model, x, y, op, max_norm=1.0), observed)
            guess = reconstruct(model, op, observed, y, tuple(x.shape), max_norm=1.0, iterations=10, bounds=bounds)
            errors[z, i] = float((guess - x).pow(2).mean())
    baseline = float(data.x_train[:2].pow(2).mean())  # guessing the mean image (0 after standardisation)
    for i in range(2):
        assert errors[0.0, i] < 1e-3
        assert errors[1.0, i] > max(baseline, 1000 * errors[0.0, i])


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]).view(1, -1)
