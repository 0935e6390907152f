"""The reference training loop on digits, in two runtimes that compute the same bits.

* :func:`train_ddp` — one process of a ``torchrun`` job: a DDP model with
  commlib's hook; each rank trains on its slice of every global batch.
* :func:`train_simulated` — one process, n virtual workers: each computes its
  slice's gradient on one shared replica, the :class:`~commlib.sim.Simulator`
  averages them, the optimizer steps.

Both use the same data order, initial parameters and optimizer, so with the
same seeds they end with the same parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..sim import Simulator
from .data import Dataset, global_batches, worker_batch

__all__ = ["TrainConfig", "TrainResult", "evaluate", "make_optimizer", "simulated_step", "train_ddp",
           "train_simulated"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the reference run (defaults reach ~97% on digits uncompressed)."""

    steps: int = 300
    batch_per_worker: int = 16
    lr: float = 0.1
    momentum: float = 0.9
    seed: int = 0


@dataclass
class TrainResult:
    accuracy: float
    loss: float
    seconds: float
    losses: list[float] = field(default_factory=list)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset) -> float:
    """Test accuracy."""
    return (model(data.x_test).argmax(1) == data.y_test).float().mean().item()


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)


def _batches(data: Dataset, cfg: TrainConfig, world_size: int, start: int = 0):
    """(step, global index batch) for steps ``start … cfg.steps − 1``, epochs chained."""
    step, epoch = 0, 0
    global_batch = cfg.batch_per_worker * world_size
    while True:
        for batch in global_batches(len(data.y_train), global_batch, epoch, cfg.seed):
            if step >= cfg.steps:
                return
            if step >= start:
                yield step, batch
            step += 1
        epoch += 1


def train_ddp(model: nn.Module, optimizer: torch.optim.Optimizer, data: Dataset, cfg: TrainConfig, rank: int,
              world_size: int, start: int = 0, stop: int | None = None,
              on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train the DDP-wrapped ``model`` from step ``start`` to ``stop`` (default ``cfg.steps``).

    ``on_step(step, loss)`` runs after each optimizer step (logging, progress, evaluation).
    """
    losses = []
    t0 = time.perf_counter()
    for step, batch in _batches(data, cfg, world_size, start):
        if stop is not None and step >= stop:
            break
        mine = worker_batch(batch, rank, world_size)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(data.x_train[mine]), data.y_train[mine])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return TrainResult(evaluate(inner, data), losses[-1] if losses else float("nan"), time.perf_counter() - t0, losses)


def simulated_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: Dataset, sim: Simulator,
                   batches: list[torch.Tensor]) -> list[float]:
    """One step with virtual workers: worker r's gradient on ``batches[r]``, averaged by ``sim``, then the optimizer.

    Returns the workers' losses.
    """
    params = list(model.named_parameters())
    per_worker, losses = [], []
    for mine in batches:
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(data.x_train[mine]), data.y_train[mine])
        loss.backward()
        per_worker.append([(name, p.grad.detach().clone()) for name, p in params])
        losses.append(loss.item())
    for (_, p), mean in zip(params, sim.exchange(per_worker)):
        p.grad = mean.to(p.dtype).view_as(p)
    optimizer.step()
    return losses


def train_simulated(model: nn.Module, optimizer: torch.optim.Optimizer, data: Dataset, cfg: TrainConfig,
                    sim: Simulator, start: int = 0, stop: int | None = None) -> TrainResult:
    """Train ``model`` with ``sim.n_workers`` virtual workers averaging through ``sim``."""
    n = sim.n_workers
    losses = []
    t0 = time.perf_counter()
    for step, batch in _batches(data, cfg, n, start):
        if stop is not None and step >= stop:
            break
        worker_losses = simulated_step(model, optimizer, data, sim, [worker_batch(batch, r, n) for r in range(n)])
        losses.append(worker_losses[0])
    return TrainResult(evaluate(model, data), losses[-1] if losses else float("nan"), time.perf_counter() - t0, losses)
