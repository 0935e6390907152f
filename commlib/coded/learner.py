"""What master and workers compute: T + 1 round-robin model replicas, job batches, coded and full gradients.

A sequential scheme (T > 0) cannot let job t + 1 wait for g(t), so, as Krishnan et al.
(ICLR 2023) do, T + 1 models train concurrently: job t updates model t mod (T + 1). Job t
starts in round t, after job t − T − 1 (the same model's previous job) was decoded or
missed by its deadline t − 1, so every task of job t sees the same parameters.

* Job t's batch is ``batch_size`` indices of ``x`` without replacement from
  ``generator(seed, t, "coded/batch")`` — the batches of :class:`commlib.sim.coded.CodedTraining`,
  identical on every rank.
* :meth:`Learner.compute` — a task's coded result Σ_k c_k·g_{u_k} in one backward pass:
  per-sample weights w = :func:`~commlib.coding.tasks.sample_weights` (Tandon et al.,
  ICML 2017: gradients are linear in the samples), forward only the samples with w ≠ 0,
  differentiate (1/G)·Σ_x w_x·ℓ(x).
* :meth:`Learner.full_gradient` — ∇(1/G)·Σ_x ℓ(x) on the whole batch, the uncoded reference.
* :meth:`Learner.apply` — the master's update of job t's model: ``torch.optim.SGD``'s rule
  (momentum without dampening or Nesterov) written out, because building a
  ``torch.optim`` optimizer imports ``torch._dynamo``, seconds of start-up on every rank.
* :meth:`Learner.flat_parameters` / :meth:`Learner.load_flat_parameters` — all replicas
  as one flat tensor, what the master's update message carries.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..coding.tasks import Task, sample_weights
from ..coding.validation import check_int
from ..rng import generator

__all__ = ["Learner"]


class Learner:
    """``copies`` replicas from ``make_model(k)`` trained on ``(x, y)`` with batches of ``batch_size``.

    ``units`` is the scheme's units per job (a batch is cut into that many units);
    ``lr``/``momentum`` are the master's SGD settings; all replicas share one dtype.
    """

    def __init__(self, make_model: Callable[[int], nn.Module], x: Tensor, y: Tensor, *, batch_size: int,
                 copies: int, units: int, lr: float = 0.1, momentum: float = 0.0, seed: int = 0,
                 loss_fn: Callable[..., Tensor] = F.cross_entropy) -> None:
        if x.dim() < 1 or len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {tuple(x.shape)} and {tuple(y.shape)}")
        self.units = check_int(units, "units", 1)
        self.batch_size = check_int(batch_size, "batch_size", self.units, len(x))
        self.seed = check_int(seed, "seed", 0)
        self.x, self.y, self.loss_fn = x, y, loss_fn
        self.models = [make_model(k) for k in range(check_int(copies, "copies", 1))]
        dtypes = {p.dtype for m in self.models for p in m.parameters()}
        if dtypes != {x.dtype}:
            raise ValueError(f"model parameters ({sorted(map(str, dtypes))}) and x ({x.dtype}) need one dtype")
        self.dtype = x.dtype
        self.numel = sum(p.numel() for p in self.models[0].parameters())
        if not (lr > 0 and 0 <= momentum < 1):
            raise ValueError(f"need lr > 0 and 0 <= momentum < 1, got lr={lr!r}, momentum={momentum!r}")
        self.lr, self.momentum = float(lr), float(momentum)
        self._velocity: list[Tensor | None] = [None] * len(self.models)

    def model(self, job: int) -> nn.Module:
        """The replica job ``job`` trains."""
        return self.models[job % len(self.models)]

    def batch(self, job: int) -> Tensor:
        """Indices of job ``job``'s batch (the same on every rank)."""
        return torch.randperm(len(self.x), generator=generator(self.seed, job, "coded/batch"))[: self.batch_size]

    def _gradient(self, job: int, idx: Tensor, weights: Tensor | None) -> Tensor:
        model = self.model(job)
        model.zero_grad(set_to_none=True)
        per_sample = self.loss_fn(model(self.x[idx]), self.y[idx], reduction="none")
        loss = per_sample.mean() if weights is None else (weights * per_sample).sum() / self.batch_size
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    def compute(self, task: Task) -> Tensor:
        """Task ``task``'s coded result: one weighted backward pass over the samples of its units."""
        w = sample_weights(task, self.units, self.batch_size, self.dtype)
        keep = w != 0
        return self._gradient(task.job, self.batch(task.job)[keep], w[keep])

    def full_gradient(self, job: int) -> Tensor:
        """Job ``job``'s full-batch gradient, computed directly (the uncoded reference)."""
        return self._gradient(job, self.batch(job), None)

    def apply(self, job: int, gradient: Tensor) -> None:
        """One SGD step of job ``job``'s replica with the flat ``gradient``: v ← μv + g (v = g first), p ← p − lr·v."""
        if gradient.numel() != self.numel:
            raise ValueError(f"gradient has {gradient.numel()} values, the model {self.numel}")
        k = job % len(self.models)
        step = gradient.detach().reshape(-1).to(self.dtype)
        if self.momentum:
            v = self._velocity[k]
            step = self._velocity[k] = step.clone() if v is None else v.mul_(self.momentum).add_(step)
        offset = 0
        with torch.no_grad():
            for p in self.models[k].parameters():
                p.sub_(step[offset: offset + p.numel()].view_as(p), alpha=self.lr)
                offset += p.numel()

    def flat_parameters(self) -> Tensor:
        """Every replica's parameters, concatenated in replica order."""
        return torch.cat([p.detach().reshape(-1) for m in self.models for p in m.parameters()])

    def load_flat_parameters(self, flat: Tensor) -> None:
        """Inverse of :meth:`flat_parameters`."""
        if flat.numel() != self.numel * len(self.models):
            raise ValueError(f"expected {self.numel * len(self.models)} parameters, got {flat.numel()}")
        offset = 0
        with torch.no_grad():
            for m in self.models:
                for p in m.parameters():
                    p.copy_(flat[offset: offset + p.numel()].view_as(p))
                    offset += p.numel()
