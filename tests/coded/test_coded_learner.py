"""The learner: coded results from per-sample weights combine to the full gradient; updates; flat parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from commlib.coded import Learner
from commlib.coding import make_scheme, unit_bounds
from commlib.train.data import load_digits
from commlib.train.models import mlp


@pytest.fixture(scope="module")
def digits():
    data = load_digits(seed=0)
    return data.x_train.double(), data.y_train


def learner_for(scheme, digits, **kw) -> Learner:
    x, y = digits
    return Learner(lambda k: mlp(64, 10, 16, 1, seed=k).double(), x, y, batch_size=2 * scheme.units_per_job + 3,
                   copies=scheme.delay + 1, units=scheme.units_per_job, **kw)


@pytest.mark.parametrize("spec, code", [("gc:2", "crc"), ("m-sgc:2,3,2", "frc"), ("sr-sgc:1,2,3", "crc"),
                                        ("none", "frc")])
def test_coded_results_decode_to_the_full_gradient(spec: str, code: str, digits) -> None:
    """Every job of a straggler-free run: Σ coeff·(one weighted backward pass per task) = full-batch gradient."""
    scheme = make_scheme(spec, 5, 3, code=code)
    learner = learner_for(scheme, digits)
    results = {}
    while not scheme.finished:
        r = scheme.round
        for i in range(scheme.n):
            for task in scheme.tasks(i):
                results[(r, i, task.slot)] = learner.compute(task)
        for job in scheme.commit(np.zeros(scheme.n, dtype=bool)).decoded:
            full = learner.full_gradient(job)
            grad = scheme.decoding(job).combine(results)
            assert float((grad - full).norm() / full.norm()) < 1e-12


def test_compute_only_touches_the_samples_of_its_units(digits) -> None:
    scheme = make_scheme("gc:1", 4, 1)
    learner = learner_for(scheme, digits)
    task = scheme.tasks(0)[0]
    x, y = digits
    corrupted = x.clone()
    assert task.units == (0,)
    outside = learner.batch(0)[unit_bounds(scheme.units_per_job, learner.batch_size)[1]:]  # unit 1: not worker 0's
    corrupted[outside] = 1e6
    other = Learner(lambda k: mlp(64, 10, 16, 1, seed=k).double(), corrupted, y, batch_size=learner.batch_size,
                    copies=1, units=scheme.units_per_job)
    assert torch.equal(other.compute(task), learner.compute(task))


def test_apply_is_torch_sgd_with_momentum(digits) -> None:
    scheme = make_scheme("sr-sgc:1,2,2", 4, 6)
    learner = learner_for(scheme, digits, lr=0.3, momentum=0.9)
    reference = [mlp(64, 10, 16, 1, seed=k).double() for k in range(2)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.3, momentum=0.9) for m in reference]
    for job in range(6):
        grad = learner.full_gradient(job)
        learner.apply(job, grad)
        offset = 0
        for p in reference[job % 2].parameters():
            p.grad = grad[offset: offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        optimizers[job % 2].step()
    flat = torch.cat([p.detach().reshape(-1) for m in reference for p in m.parameters()])
    assert torch.allclose(learner.flat_parameters(), flat, rtol=0, atol=1e-14)


def test_flat_parameters_round_trip_and_errors(digits) -> None:
    scheme = make_scheme("m-sgc:1,2,2", 4, 3)
    a, b = learner_for(scheme, digits), learner_for(scheme, digits)
    b.load_flat_parameters(a.flat_parameters() * 2)
    assert torch.equal(b.flat_parameters(), a.flat_parameters() * 2) and len(b.models) == 2
    with pytest.raises(ValueError, match="expected"):
        b.load_flat_parameters(torch.zeros(3))
    with pytest.raises(ValueError, match="gradient has 3 values"):
        b.apply(0, torch.zeros(3))
    x, y = digits
    with pytest.raises(ValueError, match="batch_size must be in"):
        Learner(lambda k: mlp(seed=k).double(), x, y, batch_size=2, copies=1, units=5)
    with pytest.raises(ValueError, match="need one dtype"):
        Learner(lambda k: mlp(seed=k), x, y, batch_size=10, copies=1, units=5)
    with pytest.raises(ValueError, match="momentum"):
        Learner(lambda k: mlp(seed=k).double(), x, y, batch_size=10, copies=1, units=5, momentum=1.0)
    with pytest.raises(ValueError, match="same length"):
        Learner(lambda k: mlp(seed=k).double(), x, y[:5], batch_size=10, copies=1, units=5)
