"""Byzantine-robust DDP hook: every rank aggregates the whole model's gradients with a robust rule.

``model.register_comm_hook(RobustState(model, FlagAggregator(f=1)), robust_hook)``

Robust rules (Krum, Flag, the geometric median, ...) must judge each worker's
*whole* gradient; applied bucket by bucket they would judge pieces. The hook is
therefore model-wide (DESIGN.md, "model-wide decisions"):

1. For each bucket DDP hands over, the hook records the bucket buffer and
   returns a fresh, pending ``Future``; DDP only waits for the futures at the
   end of backward.
2. On the last bucket, the buffers are concatenated into this rank's flat
   gradient and one protocol is started (through the state's
   :class:`~commlib.comm.torch_driver.OrderedIssuer`):

   a. *(only when some rank is Byzantine and the attack is omniscient)* an
      all-gather of the honest gradients, so that the Byzantine ranks can see
      them, as an omniscient attacker would;
   b. every rank submits its vector: honest ranks their gradient, Byzantine
      ranks the attack's vector (``attack(honest rows, f, step)``, the same
      computation on every Byzantine rank); optionally compressed by a gather
      compressor (top-k, QSGD, ...);
   c. an all-gather of the submissions; each row is decoded and validated on
      its own: a malformed payload (wrong length, indices out of range,
      non-finite values) turns that row into NaN, which every rule counts as a
      faulty worker (:mod:`commlib.robust.base`), so a hostile peer is a fault,
      never a crash;
   d. the rule (with its pre-aggregators) runs on the ``n × d`` matrix —
      identical bits on every rank, since every rank holds the same matrix.

3. The aggregate is written back into every bucket buffer and the pending
   futures are completed.

Only tensors cross ranks. Memory: every rank holds the ``n × d`` matrix (the
price of judging whole gradients by gathering); a sharded mode (all-to-all,
then a Gram all-reduce, then a weighted all-reduce) is not built yet.
"""

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations as objects.
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.futures import Future

from ..comm.collectives import AllGather, Protocol
from ..comm.torch_driver import OrderedIssuer, Timing
from ..compress.base import GatherCompressor, TensorContext
from ..errors import WireFormatError
from ..robust.attacks import Attack
from ..robust.preagg import Compose

__all__ = ["RobustState", "robust_hook", "robust_protocol"]

Aggregate = Callable[[torch.Tensor], torch.Tensor]


class RobustState:
    """What :func:`robust_hook` needs: the rule, who is Byzantine and how it attacks, and the pending buckets.

    Args:
        model: the DDP-wrapped module (only its process group is used).
        aggregator: a robust rule, ``rule(X[n, d]) -> Tensor[d]`` (e.g.
            ``FlagAggregator(f=1)`` or ``Compose([NNM(f=1)], Krum(f=1))``).
        process_group: the group to aggregate over (default: the world).
        compressor: optional gather compressor applied to each submission.
        byzantine: the ranks that attack (emulation; the same list on every rank).
        attack: the attack the Byzantine ranks run (required iff ``byzantine``).
        omniscient: whether the attackers see the honest gradients (one more
            all-gather per step, on every rank, when some rank is Byzantine).
        tamper: optional ``payload -> payload`` a Byzantine rank applies to its
            encoded submission (to emulate malformed payloads).
        seed: the seed of the compressor's randomness.
    """

    def __init__(
        self,
        model: nn.Module,
        aggregator: Aggregate,
        *,
        process_group: dist.ProcessGroup | None = None,
        compressor: GatherCompressor | None = None,
        byzantine: Sequence[int] = (),
        attack: Attack | None = None,
        omniscient: bool = True,
        tamper: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        if not callable(aggregator):
            raise ValueError(f"aggregator must be callable on an (n, d) tensor, got {type(aggregator).__name__}")
        if compressor is not None and not isinstance(compressor, GatherCompressor):
            raise ValueError(f"compressor must be a gather compressor (TopK, QSGD, Sign), got {compressor!r}")
        self.group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        byzantine = sorted({int(r) for r in byzantine})
        if any(not 0 <= r < self.world_size for r in byzantine):
            raise ValueError(f"byzantine ranks must lie in [0, {self.world_size}), got {byzantine}")
        if len(byzantine) >= self.world_size:
            raise ValueError(f"at least one rank must be honest, got byzantine={byzantine} of {self.world_size}")
        if bool(byzantine) != (attack is not None):
            raise ValueError("give an attack exactly when some rank is byzantine")
        check_workers = getattr(getattr(aggregator, "rule", aggregator), "check_workers", None)
        if check_workers is not None:
            check_workers(self.world_size)  # e.g. Krum with f=1 needs 5 ranks: fail here, not mid-backward
        self.model = model
        self.aggregator = aggregator
        self.compressor = compressor
        self.byzantine = byzantine
        self.attack = attack
        self.omniscient = omniscient
        self.tamper = tamper
        self.seed = seed
        self.step = 0
        self.faulty_rows = 0
        self.buckets_last_step = 0
        self.issuer = OrderedIssuer(process_group)
        self._pending: list[tuple[torch.Tensor, Future]] = []

    @property
    def honest_ranks(self) -> list[int]:
        return [r for r in range(self.world_size) if r not in self.byzantine]

    def state_dict(self) -> dict:
        """The step, the faulty-row count and the rule's own state (centered clipping keeps one)."""
        state = {"step": self.step, "faulty_rows": self.faulty_rows}
        if hasattr(self.aggregator, "state_dict"):
            state["aggregator"] = self.aggregator.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.faulty_rows = int(state["faulty_rows"])
        if "aggregator" in state:
            self.aggregator.load_state_dict(state["aggregator"])


def _submission(state: RobustState, flat: torch.Tensor, step: int) -> Protocol:
    """This rank's submitted vector; Byzantine ranks run the attack (after the observation round if omniscient)."""
    if not state.byzantine:
        return flat
    if state.omniscient:
        seen = yield AllGather(flat.clone())
        honest = seen[state.honest_ranks]
    else:
        honest = flat.unsqueeze(0)
    if state.rank not in state.byzantine:
        return flat
    rows = state.attack(honest, len(state.byzantine), step)
    return rows[state.byzantine.index(state.rank)].to(flat.dtype)


def _decode_rows(state: RobustState, parts: torch.Tensor, d: int, step: int) -> torch.Tensor:
    """The ``n × d`` matrix of the gathered payloads; a malformed row becomes NaN (a faulty worker)."""
    rows = torch.empty(parts.shape[0], d, dtype=torch.float32)
    for r in range(parts.shape[0]):
        ctx = TensorContext(key="model", step=step, seed=state.seed, rank=r, world_size=state.world_size)
        rows[r].zero_()
        try:
            state.compressor.decode_add(parts[r], rows[r], ctx)
        except WireFormatError:
            rows[r].fill_(float("nan"))
    return rows


def robust_protocol(state: RobustState, flat: torch.Tensor, step: int) -> Protocol:
    """Steps 2a–2d of the module docstring: submit, gather, validate, aggregate; returns the aggregate."""
    submission = yield from _submission(state, flat, step)
    if state.compressor is None:
        rows = yield AllGather(submission.float().clone())
    else:
        ctx = TensorContext(key="model", step=step, seed=state.seed, rank=state.rank, world_size=state.world_size)
        payload = state.compressor.encode(submission, ctx)
        if state.tamper is not None and state.rank in state.byzantine:
            payload = state.tamper(payload)
        parts = yield AllGather(payload)
        rows = _decode_rows(state, parts, flat.numel(), step)
    state.faulty_rows += int((~torch.isfinite(rows).all(dim=1)).sum())
    if isinstance(state.aggregator, Compose):  # seeded pre-aggregators (bucketing) draw from the step
        return state.aggregator(rows, step=step).to(flat.dtype)
    return state.aggregator(rows).to(flat.dtype)


def robust_hook(state: RobustState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Hold each bucket until the last one, then aggregate the whole gradient robustly (module docstring)."""
    pending: Future = Future()
    state._pending.append((bucket.buffer(), pending))
    if not bucket.is_last():
        return pending
    held, state._pending = state._pending, []
    state.buckets_last_step = len(held)
    step = state.step
    state.step += 1
    flat = torch.cat([buffer.reshape(-1) for buffer, _ in held])
    done = state.issuer.submit(lambda: robust_protocol(state, flat, step), Timing())

    def write_back(fut: Future) -> None:
        try:
            aggregate = fut.value()
        except BaseException as exc:  # noqa: BLE001 - every held bucket must learn of the failure
            for _, waiting in held:
                waiting.set_exception(exc)
            return
        offset = 0
        for buffer, waiting in held:
            buffer.copy_(aggregate[offset : offset + buffer.numel()].view_as(buffer))
            offset += buffer.numel()
            waiting.set_result(buffer)

    done.then(write_back)
    return pending
