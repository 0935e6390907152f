"""Shared by the policy runtime tests: train the digits MLP in the simulator as the DDP test workers do."""

from __future__ import annotations

from collections.abc import Callable

import torch

from commlib.sim import Simulator
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_simulated


def simulate_digits(
    make_simulator: Callable[[], Simulator],
    steps: int,
    start: int = 0,
    stop: int | None = None,
    state: dict | None = None,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Simulator]:
    """Train ``mlp(hidden=256)`` on digits in ``make_simulator()`` from ``start`` to ``stop`` of ``steps``.

    Single-threaded, as the DDP workers run, so the bits compare. ``state``
    (``{"model", "optimizer", "sim"}`` state dicts) resumes a checkpoint first.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = mlp(hidden=256)
        cfg = TrainConfig(steps=steps)
        optimizer = make_optimizer(model, cfg)
        sim = make_simulator()
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            sim.load_state_dict(state["sim"])
        train_simulated(model, optimizer, load_digits(), cfg, sim, start=start, stop=stop)
    finally:
        torch.set_num_threads(threads)
    return model, optimizer, sim
