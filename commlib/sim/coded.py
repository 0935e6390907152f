"""Simulator of coded (straggler-tolerant) training on a virtual clock.

:func:`simulate` runs a :class:`~commlib.coding.schemes.Scheme` over its J jobs. Each round:

1. the scheme says how many data units each worker computes (0 = idle); worker i's load
   is units_i / units_per_job, and the :class:`~commlib.coding.stragglers.DelayTrace`
   gives its response time at that load;
2. the :class:`~commlib.coding.stragglers.Cutoff` picks the round's end and straggler set,
   waiting out sets the scheme does not admit;
3. with a :class:`CodedTraining`, every non-straggler really computes its tasks (one
   weighted backward pass per task) and nothing else is computed, so decoding is
   exercised on what arrived;
4. the scheme records the mask; decoded jobs are combined (and applied to their model),
   missed jobs are logged and skipped.

The run stops when every job is decoded or missed (rounds without any active worker
take no time). Timing-only runs are vectorized over workers: 256 workers × 500 rounds
take well under a second. With real gradients, job t trains model t mod (T + 1): job t
starts after job t − (T + 1) has been decoded, so every job sees fixed parameters while
it is computed (as the SGC paper trains T + 1 models concurrently).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..coding.schemes import Scheme
from ..coding.stragglers import Cutoff, DelayTrace
from ..coding.tasks import Decode, ResultKey, Task, sample_weights
from ..rng import generator

__all__ = ["CodedRun", "CodedTraining", "simulate"]

log = logging.getLogger("commlib.sim.coded")


@dataclass
class CodedRun:
    """What a simulated run measured; ``summary()`` gives the JSON-ready figures."""

    label: str
    n: int
    jobs: int
    load: Fraction
    delay: int
    durations: np.ndarray
    stragglers: np.ndarray
    wait_outs: list[str | None]
    finish_time: np.ndarray
    missed: tuple[int, ...]

    @property
    def total_time(self) -> float:
        """Virtual seconds from the first round's start to the last round's end."""
        return float(self.durations.sum())

    @property
    def rounds(self) -> int:
        return len(self.durations)

    @property
    def wait_out_count(self) -> int:
        return sum(w is not None for w in self.wait_outs)

    @property
    def decode_rate(self) -> float:
        """Share of jobs decoded by their deadline."""
        return float(np.isfinite(self.finish_time).mean())

    def summary(self) -> dict[str, object]:
        counts = self.stragglers.sum(axis=1)
        return {"scheme": self.label, "n": self.n, "jobs": self.jobs, "load": float(self.load),
                "load_exact": str(self.load), "delay": self.delay, "rounds": self.rounds,
                "total_time": self.total_time, "mean_round": float(self.durations.mean()),
                "wait_outs": self.wait_out_count, "decode_rate": self.decode_rate, "missed": list(self.missed),
                "mean_stragglers": float(counts.mean()) if len(counts) else 0.0}


@dataclass
class CodedTraining:
    """Real gradients for :func:`simulate`: T + 1 models trained round-robin on ``(x, y)``.

    ``make_model(k)`` builds model k (k = 0..T). Job t's batch is ``batch_size`` indices of
    ``x`` drawn without replacement from ``generator(seed, t, "coded/batch")``; a task's
    result is ∇ (1/G)·Σ_x w_x·loss(x) for the task's per-sample weights. A decoded job's
    gradient takes an SGD step of size ``lr`` on its model; ``check`` also computes the
    job's full-batch gradient directly and records the decode's relative error.
    """

    make_model: Callable[[int], nn.Module]
    x: Tensor
    y: Tensor
    batch_size: int
    lr: float = 0.1
    seed: int = 0
    check: bool = True
    loss_fn: Callable[..., Tensor] = F.cross_entropy
    models: list[nn.Module] = field(default_factory=list, init=False)
    losses: list[tuple[int, float]] = field(default_factory=list, init=False)
    rel_errors: list[float] = field(default_factory=list, init=False)
    units: int = field(default=0, init=False)

    def start(self, scheme: Scheme) -> None:
        """Build the T + 1 models and check that a batch covers the scheme's units."""
        if len(self.x) != len(self.y) or len(self.x) < self.batch_size:
            raise ValueError(f"need len(x) == len(y) >= batch_size, got {len(self.x)}, {len(self.y)}, "
                             f"{self.batch_size}")
        if self.batch_size < scheme.units_per_job:
            raise ValueError(f"batch_size {self.batch_size} is smaller than {scheme.label}'s "
                             f"{scheme.units_per_job} units per job")
        self.units = scheme.units_per_job
        self.models = [self.make_model(k) for k in range(scheme.delay + 1)]
        self.losses, self.rel_errors = [], []

    def batch(self, job: int) -> Tensor:
        """Indices of job ``job``'s batch."""
        return torch.randperm(len(self.x), generator=generator(self.seed, job, "coded/batch"))[: self.batch_size]

    def _gradient(self, job: int, weights: Tensor | None) -> tuple[Tensor, float]:
        model = self.models[job % len(self.models)]
        idx = self.batch(job)
        model.zero_grad(set_to_none=True)
        per_sample = self.loss_fn(model(self.x[idx]), self.y[idx], reduction="none")
        loss = per_sample.mean() if weights is None else (weights * per_sample).sum() / self.batch_size
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        return grad, float(per_sample.detach().mean())

    def compute(self, task: Task) -> Tensor:
        """One task's result: a single backward pass with the task's per-sample weights."""
        return self._gradient(task.job, sample_weights(task, self.units, self.batch_size, self.x.dtype))[0]

    def apply(self, decode: Decode, results: dict[ResultKey, Tensor]) -> None:
        """Combine job ``decode.job``'s results and step its model."""
        grad = decode.combine(results)
        if self.check:
            full, loss = self._gradient(decode.job, None)
            self.rel_errors.append(float((grad - full).norm() / full.norm().clamp_min(1e-30)))
            self.losses.append((decode.job, loss))
        model = self.models[decode.job % len(self.models)]
        with torch.no_grad():
            offset = 0
            for p in model.parameters():
                p.sub_(grad[offset: offset + p.numel()].view_as(p), alpha=self.lr)
                offset += p.numel()


def simulate(scheme: Scheme, trace: DelayTrace, cutoff: Cutoff | None = None,
             training: CodedTraining | None = None) -> CodedRun:
    """Run ``scheme`` (fresh, round 0) over its jobs with durations from ``trace``; see the module docstring."""
    cutoff = cutoff or Cutoff()
    if scheme.round != 0:
        raise ValueError(f"simulate needs a fresh scheme; {scheme.label} is at round {scheme.round}")
    if trace.n != scheme.n or trace.rounds < scheme.rounds:
        raise ValueError(f"{scheme.label} needs a trace of at least {scheme.rounds} rounds × {scheme.n} workers, "
                         f"got {trace.rounds} × {trace.n}")
    if training is not None:
        training.start(scheme)
    durations, masks, waits = [], [], []
    finish = np.full(scheme.jobs, math.inf)
    missed: list[int] = []
    results: dict[int, dict[ResultKey, Tensor]] = {}  # job -> results received for it
    clock = 0.0
    while not scheme.finished:
        r = scheme.round
        units = scheme.round_units()
        active = units > 0
        timing = cutoff.resolve(trace.durations(r, units / scheme.units_per_job), active, scheme.admissible)
        if training is not None:
            for i in np.flatnonzero(active & ~timing.stragglers):
                for task in scheme.tasks(int(i)):
                    results.setdefault(task.job, {})[(r, int(i), task.slot)] = training.compute(task)
        outcome = scheme.commit(timing.stragglers)
        clock += timing.duration
        durations.append(timing.duration)
        masks.append(timing.stragglers)
        waits.append(timing.wait_out)
        for t in outcome.decoded:
            finish[t] = clock
            if training is not None:
                training.apply(scheme.decoding(t), results.pop(t))
        for t in outcome.missed:
            log.warning("%s: job %d missed its deadline (round %d)", scheme.label, t, r)
            results.pop(t, None)
        missed += outcome.missed
    return CodedRun(scheme.label, scheme.n, scheme.jobs, scheme.load, scheme.delay, np.asarray(durations),
                    np.asarray(masks, dtype=bool).reshape(-1, scheme.n), waits, finish, tuple(missed))
