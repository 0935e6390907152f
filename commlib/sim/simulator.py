"""The in-process simulator core: n virtual workers exchanging gradients through the same protocols as DDP.

Each virtual worker owns its own :class:`~commlib.comm.exchange.GradientExchange`
(and so its own copy of the compressor and its state); one call to
:meth:`Simulator.exchange` advances all workers' protocols in lockstep with
:func:`~commlib.comm.local.run_lockstep`, which computes every collective
locally with the same reductions as the torch.distributed driver. With the same
seeds, a simulated run and a DDP run end with bitwise-identical parameters (CPU).

With an adaptive ``policy`` every worker holds its own copy, registered at the
first exchange from worker 0's tensors; worker 0 observes and decides, and the
decision reaches the others through the protocol's broadcast, as under DDP.

A step is one bucket unless ``buckets`` lays the tensors out as DDP does
(:func:`ddp_bucket_layout`, or ``CommState.bucket_layout`` of a DDP run): then
each step exchanges the buckets one after another in that order, the last one
carrying the policy's decision. Per-tensor results do not depend on the layout,
but what is decided per bucket does: L-GreCo's bucket check under a
``TimeCost`` and the abandoning of a bucket with NaN/Inf. With DDP's layout the
simulator decides as DDP does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..adaptive.policy import AdaptivePolicy
from ..comm.exchange import ExchangeConfig, GradientExchange
from ..comm.local import run_lockstep
from ..comm.stats import CommStats
from ..compress.base import Compressor
from ..errors import ProtocolMismatchError
from ..feedback.base import ErrorFeedback

__all__ = ["Simulator", "ddp_bucket_layout"]


class Simulator:
    """n virtual workers, one compressor copy each; ``exchange`` averages one step's gradients.

    ``buckets``: the tensor names of each bucket, in the order they are exchanged (every
    tensor of a step in exactly one bucket; module docstring); default: one bucket.
    """

    def __init__(
        self,
        compressor: Compressor,
        n_workers: int,
        *,
        feedback: ErrorFeedback | None = None,
        seed: int = 0,
        start_step: int = 2,
        min_compression_rate: float = 2.0,
        min_numel: int = 256,
        feedback_warm_start: bool = False,
        check_every: int = 0,
        policy: AdaptivePolicy | None = None,
        buckets: Sequence[Sequence[str]] | None = None,
    ) -> None:
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        self.buckets = None if buckets is None else _check_layout(buckets)
        config = ExchangeConfig(seed=seed, start_step=start_step, min_compression_rate=min_compression_rate,
                                min_numel=min_numel, feedback_warm_start=feedback_warm_start, check_every=check_every)
        self.workers = [
            GradientExchange(copy.deepcopy(compressor), r, n_workers, config, copy.deepcopy(feedback),
                             copy.deepcopy(policy))
            for r in range(n_workers)
        ]
        self.n_workers = n_workers
        self.step = 0
        self.stats = CommStats()

    def exchange(self, grads: Sequence[Sequence[tuple[str, Tensor]]]) -> list[Tensor]:
        """Average one step: ``grads[r]`` is worker r's list of ``(name, gradient)``; returns the averaged tensors.

        Every worker must end with the same bits; a disagreement raises ``ProtocolMismatchError``.
        """
        if len(grads) != self.n_workers:
            raise ValueError(f"expected gradients of {self.n_workers} workers, got {len(grads)}")
        names = [name for name, _ in grads[0]]
        layout = [range(len(names))] if self.buckets is None else self._positions(names)
        for w in self.workers:
            if w.policy is not None and not w.policy.layer_names:
                w.register({name: g.shape for name, g in grads[0]})
        means: list[Tensor] = [torch.empty(0)] * len(names)
        for b, positions in enumerate(layout):
            last = b == len(layout) - 1
            results = run_lockstep([w.protocol([g[i] for i in positions], self.step, last=last)
                                    for w, g in zip(self.workers, grads)])
            ours, report = results[0]
            for rank, (other, _) in enumerate(results[1:], start=1):
                if any(not _same_bits(a, b) for a, b in zip(ours, other)):
                    raise ProtocolMismatchError(f"worker {rank} computed a different average than worker 0")
            for i, mean in zip(positions, ours):
                means[i] = mean
            self.stats.add_bucket(report)
        self.stats.end_step(self.step)
        self.step += 1
        return means

    def _positions(self, names: list[str]) -> list[list[int]]:
        """Each bucket's tensors as positions in ``names``; ``ValueError`` unless the layout covers them exactly."""
        where = {name: i for i, name in enumerate(names)}
        laid_out = {name for bucket in self.buckets for name in bucket}
        missing, unknown = sorted(set(where) - laid_out), sorted(laid_out - set(where))
        if missing or unknown or len(where) != len(names):
            raise ValueError(f"the bucket layout does not fit this step's gradients: not in any bucket {missing}, "
                             f"not among the gradients {unknown}"
                             + (", and some gradient names repeat" if len(where) != len(names) else ""))
        return [[where[name] for name in bucket] for bucket in self.buckets]

    @property
    def policy(self) -> AdaptivePolicy | None:
        """Worker 0's policy (the deciding one)."""
        return self.workers[0].policy

    def state_dict(self) -> dict[str, object]:
        return {"step": self.step, "workers": [w.state_dict() for w in self.workers]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        workers = state["workers"]
        if len(workers) != self.n_workers:  # type: ignore[arg-type]
            raise ValueError(f"checkpoint has {len(workers)} workers, simulator has {self.n_workers}")  # type: ignore[arg-type]
        for w, s in zip(self.workers, workers):  # type: ignore[arg-type]
            w.load_state_dict(s)
        self.step = int(state["step"])  # type: ignore[arg-type]


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same bits (NaN included, which ``torch.equal`` calls unequal)."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def _check_layout(buckets: Sequence[Sequence[str]]) -> list[list[str]]:
    """A copy of ``buckets``; ``ValueError`` unless it is a list of non-empty lists of distinct names."""
    if isinstance(buckets, str) or not all(not isinstance(b, str) and isinstance(b, Sequence) for b in buckets):
        raise ValueError(f"buckets must be a sequence of sequences of tensor names, got {buckets!r:.200}")
    layout = [list(b) for b in buckets]
    if not layout or any(not b for b in layout):
        raise ValueError(f"buckets must be non-empty and hold no empty bucket, got {layout!r:.200}")
    names = [name for b in layout for name in b]
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"buckets must hold tensor names (str), got {layout!r:.200}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"a tensor may be in one bucket only; {repeated} are in several")
    return layout


def ddp_bucket_layout(model: nn.Module, bucket_cap_mb: float | None = None) -> list[list[str]]:
    """The buckets DDP exchanges from step 1 on, as tensor names, for a model whose gradients
    become ready in reverse registration order (a sequential network, say).

    DDP rebuilds its buckets after step 0 from the order in which gradients became ready, with
    size limits in bytes: ``bucket_cap_mb`` MiB for every bucket when given, as to
    ``DistributedDataParallel(bucket_cap_mb=...)``; DDP's defaults when ``None`` (1 MiB for the
    first bucket, 25 MiB for the others). That is torch 2.13's rule (``tests/sim/test_buckets.py``
    checks it against DDP); other versions may differ in the first bucket's limit. Its
    assignment, for that order: walk the parameters that require gradients, last registered
    first; add each to the open bucket of its dtype and device; close that bucket once it holds
    its limit or more (the first closed bucket of a dtype and device has the first limit); the
    buckets still open come last. (Step 0's buckets differ, but
    they carry the dense warm-up, which the layout does not change.) For a model whose backward
    pass runs otherwise, or another torch, take the layout a DDP run saw:
    ``CommState.bucket_layout``.
    """
    if bucket_cap_mb is None:
        limits = [1024 * 1024, 25 * 1024 * 1024]
    elif isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) or not bucket_cap_mb > 0:
        raise ValueError(f"bucket_cap_mb must be a positive number or None, got {bucket_cap_mb!r}")
    else:
        limits = [int(bucket_cap_mb * 1024 * 1024)]
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    closed: list[list[str]] = []
    open_: dict[tuple[torch.dtype, torch.device], tuple[list[str], int]] = {}
    closed_per_key: dict[tuple[torch.dtype, torch.device], int] = {}
    for name, p in reversed(list(inner.named_parameters())):
        if not p.requires_grad:
            continue
        key = (p.dtype, p.device)
        names, size = open_.pop(key, ([], 0))
        names.append(name)
        size += p.numel() * p.element_size()
        if size >= limits[min(closed_per_key.get(key, 0), len(limits) - 1)]:
            closed.append(names)
            closed_per_key[key] = closed_per_key.get(key, 0) + 1
        else:
            open_[key] = (names, size)
    return closed + [names for names, _ in open_.values()]
