"""Synthetic problems with known optima (econtrol notes §5, Tests A and B), run through the library API.

The methods keep their default fp32 state and use the library's TopK; ``x`` is
float64. Measured with this code (2-core CPU, torch 2.13):

* Test A, γ = 0.01, 1000 steps: CGD ‖x‖ = 1.344e8 (= √3·(1 + 11γ/6)¹⁰⁰⁰, as the
  notes say), EF14 1.27e-5, EF21 1.25e-5, EControl(η=0.1) 1.39e-5 — the notes'
  table reproduces. EControl(η=1) overflows to inf/nan within 1000 steps.
* Test B, seed 0, γ = 0.05, 3000 steps: CGD 0.741, EF14 0.111, EF21 6.8e-7,
  EControl(η=0.1) 8.0e-7 (fp32 state; 1.2e-15 and 1.8e-15 with float64 state,
  as in the notes).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from commlib.compress import TopK
from commlib.feedback import EF14, EF21, EControl, NoFeedback
from commlib.feedback.simulate import run

A_ROWS = torch.tensor([[-3.0, 2.0, 2.0], [2.0, -3.0, 2.0], [2.0, 2.0, -3.0]], dtype=torch.float64)


def grad_a(x: torch.Tensor, i: int, t: int) -> torch.Tensor:
    """∇fᵢ for fᵢ(x) = ⟨aᵢ, x⟩² + ¼‖x‖²."""
    a = A_ROWS[i]
    return 2.0 * a * (a @ x) + 0.5 * x


def run_a(factory, steps: int = 1000, warm: bool = True):
    x0 = torch.ones(3, dtype=torch.float64)
    return run(
        factory,
        TopK(k=1),
        grad_a,
        x0,
        lr=0.01,
        steps=steps,
        n=3,
        warm_start=warm,
        x_ref=torch.zeros(3, dtype=torch.float64),
        stop_above=1e12,
    )


def test_a_naive_compression_diverges_exactly_geometrically():
    res = run_a(NoFeedback, warm=False)
    expected = math.sqrt(3) * (1 + 11 * 0.01 / 6) ** 1000
    assert res.distances[-1] == pytest.approx(expected, rel=1e-5)
    assert res.distances[-1] > 1e8


@pytest.mark.parametrize(
    "factory, warm",
    [(EF14, False), (EF21, True), (lambda: EControl(eta=0.1), True)],
    ids=["ef14", "ef21", "econtrol0.1"],
)
def test_a_error_feedback_converges(factory, warm):
    res = run_a(factory, warm=warm)
    assert len(res.distances) == 1000
    assert res.distances[-1] < 1e-4
    assert res.distances[-1] > 1e-6  # linear rate: about 1.3e-5 at t = 1000 (a sanity bound, not a goal)


def test_a_econtrol_eta_one_diverges():
    res = run_a(lambda: EControl(eta=1.0))
    assert not res.distances[-1] <= 1e12  # > 1e12 or nan: the e/h loop is unstable at full-strength feedback


def quadratics_b(seed: int = 0):
    b = torch.tensor(np.random.default_rng(seed).standard_normal((4, 10)), dtype=torch.float64)
    return b, b.mean(0)


@pytest.fixture(scope="module")
def results_b():
    b, x_star = quadratics_b(0)

    def grad(x, i, t):
        return x - b[i]

    out = {}
    for name, factory, warm in [
        ("cgd", NoFeedback, False),
        ("ef14", EF14, False),
        ("ef21", EF21, True),
        ("econtrol", lambda: EControl(eta=0.1), True),
    ]:
        res = run(
            factory,
            TopK(k=1),
            grad,
            torch.zeros(10, dtype=torch.float64),
            lr=0.05,
            steps=3000,
            n=4,
            warm_start=warm,
            x_ref=x_star,
        )
        out[name] = res.distances[-1]
    return out


def test_b_naive_is_biased(results_b):
    assert results_b["cgd"] > 0.3


def test_b_ef14_stalls_at_a_floor(results_b):
    assert results_b["ef14"] > 1e-2


@pytest.mark.parametrize("name", ["ef21", "econtrol"])
def test_b_ef21_and_econtrol_reach_the_optimum(results_b, name):
    assert results_b[name] < 1e-5
