"""``CommState``: everything the DDP hook needs, keyed by parameter name and checkpointable."""

from __future__ import annotations

import json
import time

import torch
import torch.distributed as dist
from torch import nn

from ..adaptive.policy import AdaptivePolicy
from ..comm.exchange import ExchangeConfig, GradientExchange
from ..comm.stats import CommStats
from ..comm.torch_driver import OrderedIssuer
from ..compress.base import Compressor
from ..compress.dense import Identity
from ..feedback.base import ErrorFeedback

__all__ = ["CommState"]

_STATE_VERSION = 1


class CommState:
    """State of :func:`commlib.ddp.hook` for one DDP model.

    Args:
        model: the model (or the ``DistributedDataParallel`` wrapping it); its
            parameter names key all per-tensor state and randomness.
        compressor: a :class:`~commlib.compress.Compressor` (default: Identity).
        feedback: optional error feedback (:mod:`commlib.feedback`: EF14, EF21,
            EF21SGDM, EControl) around every compressed tensor; its state is per
            parameter name, in fp32, and part of ``state_dict()``.
        process_group: defaults to the world group.
        seed: the shared seed of all random choices.
        start_step: steps sent dense before compression starts (at least 1, as
            DDP rebuilds its buckets after step 0).
        min_compression_rate: tensors compressed less than this are sent dense.
        min_numel: tensors with fewer elements (and all 1-D tensors) are sent dense.
        verify_config: exchange a config fingerprint at the first step and raise
            ``ConfigMismatchError`` on every rank if the ranks disagree.
        log_every: log ``stats.summary()`` every so many steps (0: never).
        feedback_warm_start: with feedback, start ``hᵢ = gᵢ``, ``h = mean g`` from the last dense step.
        check_every: with feedback, compare a digest of ``h`` across ranks every so many steps
            (0: never) and raise ``StateDivergenceError`` on a difference.
        policy: an :class:`~commlib.adaptive.LGreCo` or :class:`~commlib.adaptive.Accordion` choosing each
            tensor's compressor (then ``compressor`` is not used); it is registered with the model's
            tensors of 2 and more dimensions and at least ``min_numel`` elements, and its state is part
            of ``state_dict()``.
        native_dense: dense tensors (warm-up steps, 1-D and small tensors, a policy's ``fp32`` layers)
            go through the backend's native all-reduce — an all-dense bucket in place, as fast as
            ``allreduce_hook`` — instead of the rank-ordered one; every rank gets the same bits, but
            dense tensors no longer get the simulator's (:class:`~commlib.comm.exchange.ExchangeConfig`).

    Example::

        state = CommState(model, compressor=TopK(density=0.01))
        model.register_comm_hook(state, hook)
    """

    def __init__(
        self,
        model: nn.Module,
        compressor: Compressor | None = None,
        feedback: ErrorFeedback | None = None,
        *,
        process_group: dist.ProcessGroup | None = None,
        seed: int = 0,
        start_step: int = 2,
        min_compression_rate: float = 2.0,
        min_numel: int = 256,
        verify_config: bool = True,
        log_every: int = 0,
        feedback_warm_start: bool = False,
        check_every: int = 0,
        policy: AdaptivePolicy | None = None,
        native_dense: bool = False,
    ) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("CommState needs an initialised torch.distributed process group")
        if start_step < 1:
            raise ValueError(f"start_step must be >= 1 (DDP rebuilds its buckets after step 0), got {start_step}")
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        # Keep the parameters alive: ids of freed tensors are reused.
        self.parameters = dict(inner.named_parameters())
        self.names = {id(p): name for name, p in self.parameters.items()}
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.exchange = GradientExchange(
            compressor if compressor is not None else Identity(),
            self.rank,
            self.world_size,
            ExchangeConfig(seed=seed, start_step=start_step, min_compression_rate=min_compression_rate,
                           min_numel=min_numel, feedback_warm_start=feedback_warm_start, check_every=check_every,
                           native_dense=native_dense),
            feedback,
            policy,
            clock=time.perf_counter,  # real collectives: time their rounds (stats, and a refine_time policy)
        )
        if policy is not None:
            self.exchange.register({n: p.shape for n, p in self.parameters.items() if p.requires_grad})
        self.issuer = OrderedIssuer(process_group)
        self.stats = CommStats(log_every)
        self.step = 0
        self.verified = not verify_config
        self._buckets: dict[int, list[str]] = {}

    def note_bucket(self, index: int, names: list[str]) -> None:
        """Record the names of bucket ``index`` (the hook does, for every bucket; see :attr:`bucket_layout`).

        DDP launches its buckets in index order, so bucket 0 starts a step's layout afresh.
        """
        if index == 0:
            self._buckets.clear()
        self._buckets[index] = list(names)

    @property
    def bucket_layout(self) -> list[list[str]]:
        """The parameter names of each bucket of the last step, by bucket index (DDP rebuilds its buckets
        after step 0): the layout that makes ``Simulator(..., buckets=...)`` decide per bucket as this run."""
        return [list(self._buckets[i]) for i in sorted(self._buckets)]

    @property
    def compressor(self) -> Compressor:
        return self.exchange.compressor

    @property
    def policy(self) -> AdaptivePolicy | None:
        return self.exchange.policy

    def config(self) -> dict[str, object]:
        """Plain values that must agree on every rank (the fingerprint's input)."""
        cfg = self.exchange.config
        policy = {} if self.policy is None else {"policy": self.exchange.policy_config()}
        return {
            **policy,
            "compressor": self.compressor.config(),
            "feedback": self.exchange.feedback.config() if self.exchange.feedback is not None else None,
            "seed": cfg.seed,
            "start_step": cfg.start_step,
            "min_compression_rate": cfg.min_compression_rate,
            "min_numel": cfg.min_numel,
            "feedback_warm_start": cfg.feedback_warm_start,
            "check_every": cfg.check_every,
            "native_dense": cfg.native_dense,
            "world_size": self.world_size,
        }

    def memory_bytes(self) -> dict[str, int]:
        """State this rank holds for communication: error-feedback buffers (bytes), by kind."""
        feedback = self.exchange.feedback
        return {"feedback": feedback.state_bytes() if feedback is not None else 0}

    def name_of(self, param: torch.Tensor) -> str:
        try:
            return self.names[id(param)]
        except KeyError:
            raise KeyError("a bucket holds a parameter that is not in the model given to CommState") from None

    def state_dict(self) -> dict[str, object]:
        """Tensors and plain values only: ``torch.load(..., weights_only=True)`` can read it."""
        return {
            "version": _STATE_VERSION,
            "step": self.step,
            "config": json.dumps(self.config(), sort_keys=True, default=str),
            "exchange": self.exchange.state_dict(),
            "stats": self.stats.state_dict(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore a checkpoint taken with the same configuration (else ``ValueError``)."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"not a commlib CommState checkpoint (version {_STATE_VERSION} expected)")
        mine = json.dumps(self.config(), sort_keys=True, default=str)
        if state["config"] != mine:
            raise ValueError(f"checkpoint was taken with config {state['config']}, this state has {mine}")
        self.exchange.load_state_dict(state["exchange"])  # type: ignore[arg-type]
        self.stats.load_state_dict(state["stats"])  # type: ignore[arg-type]
        self.step = int(state["step"])  # type: ignore[arg-type]
