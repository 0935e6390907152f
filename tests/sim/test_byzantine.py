"""The Byzantine simulator: determinism, the attack harms the mean and not a robust rule, data-side attacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from commlib.rng import generator
from commlib.robust import (
    IPM,
    NNM,
    CenteredClipping,
    CoordinateMedian,
    LabelFlip,
    Mean,
    OptimalALIE,
    SignFlip,
    TrimmedMean,
)
from commlib.sim.byzantine import ByzantineConfig, simulate_byzantine
from commlib.train.data import load_digits
from commlib.train.models import mlp

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one intra-op thread per test


@pytest.fixture(scope="module")
def data():
    return load_digits(0)


@pytest.mark.parametrize("attack", [SignFlip(), LabelFlip()], ids=repr)
def test_matches_a_plain_loop_over_workers(data, attack):
    """Oracle: the protocol written out with one backward pass per worker (no vmap), with the mean as the rule."""
    h, n = 3, 5
    cfg = ByzantineConfig(honest=h, byzantine=n - h, steps=3, lr=0.2, momentum=0.8, weight_decay=0.5, seed=5)
    out = simulate_byzantine(Mean(), attack, cfg, data=data)
    order = torch.randperm(len(data.y_train), generator=generator(cfg.seed, 0, "byzantine/iid"))
    shards = torch.tensor_split(order, n)
    model = mlp(data.features, data.classes, seed=cfg.seed)
    momentum = torch.zeros(n, sum(p.numel() for p in model.parameters()))
    losses = []
    for step in range(cfg.steps):
        grads, step_losses = [], []
        for r, shard in enumerate(shards):
            idx = shard[torch.randint(shard.numel(), (cfg.batch,), generator=generator(cfg.seed, step,
                                                                                       f"byzantine/batch/{r}"))]
            y = data.y_train[idx]
            if r >= h and isinstance(attack, LabelFlip):
                y = 9 - y
            model.zero_grad()
            loss = F.cross_entropy(model(data.x_train[idx]), y)
            loss.backward()
            grads.append(torch.cat([(p.grad + cfg.weight_decay * p).reshape(-1) for p in model.parameters()]))
            step_losses.append(loss.item())
        losses.append(sum(step_losses[:h]) / h)
        momentum = cfg.momentum * momentum + (1 - cfg.momentum) * torch.stack(grads)
        byzantine = momentum[h:] if isinstance(attack, LabelFlip) else -momentum[:h].mean(0).expand(n - h, -1)
        update = torch.cat([momentum[:h], byzantine]).mean(0)
        with torch.no_grad():
            offset = 0
            for p in model.parameters():
                p -= cfg.lr * update[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
    assert out.losses == pytest.approx(losses, rel=1e-6)


def test_deterministic_from_the_seed(data):
    cfg = ByzantineConfig(honest=4, byzantine=1, steps=4, seed=3)
    a = simulate_byzantine(TrimmedMean(1), OptimalALIE(TrimmedMean(1), [NNM(1)], evals=4), cfg, [NNM(1)], data)
    b = simulate_byzantine(TrimmedMean(1), OptimalALIE(TrimmedMean(1), [NNM(1)], evals=4), cfg, [NNM(1)], data)
    assert a.losses == b.losses and a.accuracy == b.accuracy and len(a.losses) == 4
    c = simulate_byzantine(TrimmedMean(1), OptimalALIE(TrimmedMean(1), [NNM(1)], evals=4),
                           ByzantineConfig(honest=4, byzantine=1, steps=4, seed=4), [NNM(1)], data)
    assert c.losses != a.losses


def test_an_ascent_attack_breaks_the_mean_not_the_median(data):
    cfg = ByzantineConfig(honest=5, byzantine=2, steps=40, lr=0.5, momentum=0.0)
    clean = simulate_byzantine(Mean(), None, ByzantineConfig(honest=5, byzantine=0, steps=40, lr=0.5, momentum=0.0),
                               data=data)
    attacked = simulate_byzantine(Mean(), IPM(eps=10.0), cfg, data=data)
    robust = simulate_byzantine(CoordinateMedian(), IPM(eps=10.0), cfg, data=data)
    assert sum(clean.losses[-5:]) / 5 < 0.5 * clean.losses[0]
    assert not attacked.losses[-1] < attacked.losses[0]  # the mean ascends, (5μ − 20μ)/7, here to NaN
    assert sum(robust.losses[-5:]) / 5 < 0.5 * robust.losses[0]
    assert robust.accuracy > attacked.accuracy + 0.5


def test_label_flip_dirichlet_split_and_a_stateful_rule(data):
    cfg = ByzantineConfig(honest=4, byzantine=2, steps=5, alpha=0.5)
    out = simulate_byzantine(CenteredClipping(tau=1.0), LabelFlip(), cfg, data=data)
    assert len(out.losses) == 5 and all(torch.isfinite(torch.tensor(out.losses)))
    assert 0.0 <= out.accuracy <= 1.0


def test_argument_errors(data):
    with pytest.raises(ValueError, match="attack is needed"):
        simulate_byzantine(Mean(), None, ByzantineConfig(byzantine=1, steps=1), data=data)
    with pytest.raises(ValueError, match="Attack or LabelFlip"):
        simulate_byzantine(Mean(), Mean(), ByzantineConfig(byzantine=1, steps=1), data=data)
    for bad in ({"honest": 0}, {"byzantine": -1}, {"lr": 0.0}, {"momentum": 1.0}, {"alpha": 0.0}, {"batch": 0}):
        with pytest.raises(ValueError):
            ByzantineConfig(**bad)
