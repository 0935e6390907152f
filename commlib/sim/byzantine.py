"""Byzantine simulation: n virtual workers, f of them Byzantine, training the digits MLP through a robust rule.

One step (ByzFL's DSGD protocol):

1. Every worker r draws ``batch`` indices, with replacement, from its own shard
   with ``generator(seed, step, f"byzantine/batch/{r}")``. Shards are an iid
   split (a seeded permutation cut into n near-equal parts) or
   :func:`commlib.train.data.dirichlet_split` with ``alpha``.
2. Every worker's gradient on the shared model (one vmapped pass), plus
   ``weight_decay``·θ; worker momentum ``mᵣ ← β·mᵣ + (1 − β)·gᵣ`` from mᵣ = 0. Workers 0 … h−1
   are honest and send mᵣ.
3. The f Byzantine workers (the last f) send ``attack(honest, f, step)``; under
   :class:`~commlib.robust.attacks.LabelFlip` they instead run step 2 on flipped labels.
4. The server aggregates with ``Compose(preaggregators, rule)(X, step)`` and
   steps SGD with learning rate ``lr`` (no server momentum).

Recorded: the honest workers' mean minibatch loss per step and the final test
accuracy. Everything is seeded, so a run is a function of its arguments. A
stateful rule (centered clipping) is used as given and keeps its state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from ..rng import generator
from ..robust.attacks import Attack, LabelFlip
from ..robust.base import Aggregator, check_count, check_positive
from ..robust.preagg import Compose, PreAggregator
from ..train.data import Dataset, dirichlet_split, load_digits
from ..train.loop import evaluate
from ..train.models import mlp

__all__ = ["ByzantineConfig", "ByzantineResult", "simulate_byzantine"]


@dataclass(frozen=True)
class ByzantineConfig:
    """The run: h honest + f Byzantine workers; defaults follow ByzFL's benchmark (batch 25, lr 0.1, β 0.9)."""

    honest: int = 10
    byzantine: int = 1
    steps: int = 200
    batch: int = 25
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    alpha: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_count(self.honest, "honest", minimum=1)
        check_count(self.byzantine, "byzantine")
        check_count(self.steps, "steps")
        check_count(self.batch, "batch", minimum=1)
        check_positive(self.lr, "lr")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.alpha is not None:
            check_positive(self.alpha, "alpha")
        check_count(self.seed, "seed")


@dataclass
class ByzantineResult:
    accuracy: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _shards(data: Dataset, n: int, cfg: ByzantineConfig) -> list[Tensor]:
    if cfg.alpha is not None:
        return dirichlet_split(data.y_train, n, cfg.alpha, cfg.seed)
    order = torch.randperm(len(data.y_train), generator=generator(cfg.seed, 0, "byzantine/iid"))
    return list(torch.tensor_split(order, n))


def simulate_byzantine(rule: Aggregator, attack: Attack | LabelFlip | None, cfg: ByzantineConfig,
                       preaggregators: Sequence[PreAggregator] = (), data: Dataset | None = None) -> ByzantineResult:
    """Train the digits MLP with ``cfg.honest`` honest and ``cfg.byzantine`` Byzantine workers; see the module doc.

    ``attack`` may be None only when ``cfg.byzantine == 0``. ``data`` defaults to
    ``load_digits(cfg.seed)``.
    """
    if attack is None and cfg.byzantine:
        raise ValueError(f"an attack is needed with {cfg.byzantine} Byzantine workers")
    if attack is not None and not isinstance(attack, (Attack, LabelFlip)):
        raise ValueError(f"attack must be an Attack or LabelFlip, got {attack!r}")
    pipeline = Compose(preaggregators, rule)
    data = load_digits(cfg.seed) if data is None else data
    h, f = cfg.honest, cfg.byzantine
    n = h + f
    shards = _shards(data, n, cfg)
    model = mlp(data.features, data.classes, seed=cfg.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    names = [name for name, _ in model.named_parameters()]

    def loss_fn(params: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        loss = F.cross_entropy(functional_call(model, params, (x,)), y)
        return loss, loss

    per_worker = vmap(grad(loss_fn, has_aux=True), in_dims=(None, 0, 0))
    momentum: Tensor | None = None
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.stack([s[torch.randint(s.numel(), (cfg.batch,), generator=generator(cfg.seed, step,
                                                                                            f"byzantine/batch/{r}"))]
                           for r, s in enumerate(shards)])
        x, y = data.x_train[idx], data.y_train[idx]
        if isinstance(attack, LabelFlip):
            y[h:] = attack.labels(y[h:], data.classes)
        params = {name: p.detach() for name, p in model.named_parameters()}
        grads, loss = per_worker(params, x, y)
        flat_params = torch.cat([params[k].reshape(-1) for k in names])
        g = torch.cat([grads[k].reshape(n, -1) for k in names], dim=1) + cfg.weight_decay * flat_params
        momentum = torch.zeros_like(g) if momentum is None else momentum
        momentum.mul_(cfg.momentum).add_(g, alpha=1.0 - cfg.momentum)
        honest = momentum[:h]
        byzantine = momentum[h:] if isinstance(attack, LabelFlip) or attack is None else attack(honest, f, step)
        direction = pipeline(torch.cat([honest, byzantine]), step)
        offset = 0
        for p in model.parameters():
            p.grad = direction[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        optimizer.step()
        losses.append(float(loss[:h].mean()))
    return ByzantineResult(evaluate(model, data), losses, time.perf_counter() - t0)
