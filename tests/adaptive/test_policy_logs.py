"""Each re-solve (L-GreCo) and check (Accordion) is logged with its per-layer choices and bytes."""

from __future__ import annotations

import logging

import pytest
import torch

from commlib.adaptive import Accordion, LGreCo


def _grads(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(32, 16, generator=gen), "b": torch.randn(16, 16, generator=gen) * 0.01}


def test_lgreco_logs_every_solve(caplog: pytest.LogCaptureFixture) -> None:
    options = ["topk:0.05", "topk:0.1", "topk:0.5", "fp32"]
    policy = LGreCo(period=4, window=2, options=options, default_option="topk:0.1")
    policy.register({"a": (32, 16), "b": (16, 16)})
    with caplog.at_level(logging.INFO, logger="commlib.adaptive"):
        for step in range(5):
            policy.decide(step)
            policy.observe(step, _grads(step))
    assert policy.stats.solves == 1
    (record,) = [r for r in caplog.records if "L-GreCo solve" in r.getMessage()]
    message = record.getMessage()
    assert "solve 1 at step 4" in message
    for name, option in policy.choices().items():
        assert f"'{name}': '{option}'" in message
    stats = policy.stats
    assert f"predicted {stats.predicted_bytes:.0f} bytes/step (uniform {stats.default_bytes:.0f})" in message


def test_accordion_logs_every_check(caplog: pytest.LogCaptureFixture) -> None:
    acc = Accordion("topk:0.2", "topk:0.05", interval=3, window=2)
    acc.register({"a": (32, 16), "b": (16, 16)})
    with caplog.at_level(logging.INFO, logger="commlib.adaptive"):
        for step in range(7):
            acc.decide(step)
            acc.observe(step, _grads(step))
    messages = [r.getMessage() for r in caplog.records if "Accordion check" in r.getMessage()]
    assert len(messages) == acc.stats.checks == 2
    assert "check 2 at step 6" in messages[-1]
    assert f"{acc.stats.light_layers} of 2 layers light" in messages[-1]
