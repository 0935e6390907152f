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
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from ..adaptive.policy import AdaptivePolicy
from ..comm.exchange import ExchangeConfig, GradientExchange
from ..comm.local import run_lockstep
from ..comm.stats import CommStats
from ..compress.base import Compressor
from ..errors import ProtocolMismatchError
from ..feedback.base import ErrorFeedback

__all__ = ["Simulator"]


class Simulator:
    """n virtual workers, one compressor copy each; ``exchange`` averages one step's gradients."""

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
    ) -> None:
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
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
        for w in self.workers:
            if w.policy is not None and not w.policy.layer_names:
                w.register({name: g.shape for name, g in grads[0]})
        results = run_lockstep([w.protocol(g, self.step, last=True) for w, g in zip(self.workers, grads)])
        means, report = results[0]
        for rank, (other, _) in enumerate(results[1:], start=1):
            if any(not torch.equal(a, b) for a, b in zip(means, other)):
                raise ProtocolMismatchError(f"worker {rank} computed a different average than worker 0")
        self.stats.add_bucket(report)
        self.stats.end_step(self.step)
        self.step += 1
        return means

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
