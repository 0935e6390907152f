"""Training digits in the simulator: Sign needs error feedback, and gets it."""

from __future__ import annotations

import pytest

from commlib.compress import Sign, TopK
from commlib.feedback import EF14, EControl
from commlib.sim import Simulator
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_simulated


@pytest.mark.parametrize("compressor, feedback", [(Sign(), EF14()), (TopK(density=0.02), EControl(eta=0.01))],
                         ids=["sign+ef14", "topk2%+econtrol"])
def test_error_feedback_trains_digits(compressor, feedback) -> None:
    model = mlp()
    cfg = TrainConfig(steps=300)
    sim = Simulator(compressor, 4, feedback=feedback)
    result = train_simulated(model, make_optimizer(model, cfg), load_digits(), cfg, sim)
    assert result.accuracy >= 0.90, result.accuracy
    assert sim.stats.as_dict()["per_step"]["ratio_vs_fp32"] > 3
    fb = sim.workers[0].feedback
    assert set(fb.keys()) == {"0.weight", "2.weight", "4.weight"}  # only compressed (2-D) tensors carry feedback
    compressed = sum(p.numel() for name, p in model.named_parameters() if name in fb.keys())
    assert fb.state_bytes() == fb.bytes_per_element() * compressed
