"""Byzantine-robust DDP hook: every rank aggregates the whole model's gradients with a robust rule.

``model.register_comm_hook(RobustState(model, FlagAggregator(m=2)), robust_hook)``

Robust rules (Krum, Flag, the geometric median, ...) must judge each worker's
*whole* gradient; applied bucket by bucket they would judge pieces. The hook is
therefore model-wide (DESIGN.md, "model-wide decisions"):

1. For each bucket DDP hands over, the hook records the bucket buffer and
   returns a fresh, pending ``Future``; DDP only waits for the futures at the
   end of backward.
2. On the last bucket, the buffers are concatenated into this rank's flat
   gradient (or, with ``worker_momentum``, this rank's momentum) and one
   protocol is started (through the state's
   :class:`~commlib.comm.torch_driver.OrderedIssuer`):

   a. *(only when some rank is Byzantine and the attack is omniscient)* an
      all-gather of the honest gradients, so that the Byzantine ranks can see
      them, as an omniscient attacker would;
   b. every rank submits its vector: honest ranks their gradient, Byzantine
      ranks the attack's vector (``attack(honest rows, f, step)``, the same
      computation on every Byzantine rank); optionally compressed by a gather
      compressor (top-k, QSGD, ...);
   c. an all-gather of the submissions (compressed ones in fixed-size slots
      with a length field); each row is decoded and validated on its own: a
      malformed payload (wrong length, indices out of range, non-finite
      values) turns that row into NaN, which every rule counts as a
      faulty worker (:mod:`commlib.robust.base`), so a hostile peer is a fault,
      never a crash;
   d. the rule (with its pre-aggregators) runs on the ``n × d`` matrix —
      identical bits on every rank, since every rank holds the same matrix.

3. The aggregate is written back into every bucket buffer and the pending
   futures are completed.

Only tensors cross ranks. Memory: in steps 2c–2d every rank holds the
``n × d`` matrix. **Sharded mode** (``RobustState(..., sharded=True)``,
:func:`sharded_protocol`) replaces 2c–2d by an all-to-all (rank j receives
slice j of every submission: n × d/n), an all-reduce of the n × n partial Gram
matrices and of the per-worker non-finite flags, a local aggregation of the
slice (Gram rules: ``Σᵢ wᵢ xᵢ`` with the weights from the Gram matrix;
coordinate-wise rules: the rule on the slice) and an all-gather of the output
slices: O(d) memory per rank instead of O(n·d), for dense submissions.
"""

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations as objects.
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.futures import Future

from ..comm.collectives import AllGather, AllReduce, AllToAll, Protocol
from ..comm.torch_driver import OrderedIssuer, Timing
from ..compress.base import GatherCompressor, TensorContext
from ..errors import WireFormatError
from ..robust.attacks import Attack
from ..robust.base import Aggregator, GramAggregator, combine, finite_rows, gram
from ..robust.preagg import Compose, mix

__all__ = ["RobustState", "check_shardable", "robust_hook", "robust_protocol", "sharded_protocol"]

Aggregate = Callable[[torch.Tensor], torch.Tensor]
_LENGTH_BYTES = 8  # the int64 length field in front of every compressed submission


def _rule_of(aggregator: Aggregate) -> Aggregate:
    return aggregator.rule if isinstance(aggregator, Compose) else aggregator


def check_shardable(aggregator: Aggregate) -> None:
    """Raise ValueError unless ``aggregator`` can run in sharded mode (a Gram rule or a coordinate-wise rule,
    optionally behind pre-aggregators, which are all Gram-linear)."""
    rule = _rule_of(aggregator)
    if isinstance(rule, GramAggregator) or (isinstance(rule, Aggregator) and rule.coordinatewise):
        return
    raise ValueError(
        f"{aggregator!r} cannot run sharded: sharded mode needs a rule whose output is Σ wᵢxᵢ with weights from the "
        "Gram matrix (Krum, MultiKrum, GeometricMedian, MDA, FlagAggregator) or a coordinate-wise rule (Mean, "
        "CoordinateMedian, TrimmedMean, Meamed, Phocas), optionally in a Compose with pre-aggregators")


class RobustState:
    """What :func:`robust_hook` needs: the rule, who is Byzantine and how it attacks, and the pending buckets.

    Args:
        model: the DDP-wrapped module (its parameter names key the worker momentum).
        aggregator: a robust rule, ``rule(X[n, d]) -> Tensor[d]`` (e.g.
            ``FlagAggregator(m=2)`` or ``Compose([NNM(f=1)], Krum(f=1))``).
        process_group: the group to aggregate over (default: the world).
        compressor: optional gather compressor applied to each submission.
        byzantine: the ranks that attack (emulation; the same list on every rank).
        attack: the attack the Byzantine ranks run (required iff ``byzantine``).
        omniscient: whether the attackers see the honest gradients (one more
            all-gather per step, on every rank, when some rank is Byzantine).
        tamper: optional ``payload -> payload`` a Byzantine rank applies to its
            encoded submission (to emulate malformed payloads).
        seed: the seed of the compressor's randomness.
        sharded: aggregate without gathering all n gradients on every rank
            (:func:`sharded_protocol`); dense submissions only, and the rule
            must pass :func:`check_shardable`.
        worker_momentum: β ∈ [0, 1); when > 0 every rank submits its momentum
            ``mᵣ ← β·mᵣ + gᵣ`` (m = g at the first step, torch SGD's convention)
            instead of its gradient — heavy-ball momentum moved from the
            optimizer to the workers (Karimireddy, He, Jaggi, "Learning from
            history for Byzantine robust optimization", ICML 2021). Averaging
            over about 1/(1 − β) steps shrinks the honest vectors' spread
            relative to their mean, which is what ALIE hides in; pair it with
            an optimizer without momentum. Kept per parameter name, so DDP's
            bucket rebuild does not scramble it.
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
        sharded: bool = False,
        worker_momentum: float = 0.0,
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
        if isinstance(worker_momentum, bool) or not isinstance(worker_momentum, (int, float)) \
                or not 0.0 <= worker_momentum < 1.0:
            raise ValueError(f"worker_momentum must be a number in [0, 1), got {worker_momentum!r}")
        if sharded:
            if compressor is not None:
                raise ValueError("sharded mode aggregates dense submissions: give no compressor")
            check_shardable(aggregator)
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
        self.sharded = bool(sharded)
        self.worker_momentum = float(worker_momentum)
        self.momentum: dict[str, torch.Tensor] = {}
        self._names = {id(p): name for name, p in model.named_parameters()}
        self.step = 0
        self.faulty_rows = 0
        self.buckets_last_step = 0
        self.issuer = OrderedIssuer(process_group)
        self._pending: list[tuple[torch.Tensor, list[torch.Tensor], Future]] = []

    @property
    def honest_ranks(self) -> list[int]:
        return [r for r in range(self.world_size) if r not in self.byzantine]

    def state_dict(self) -> dict:
        """The step, the faulty-row count, the worker momentum (by parameter name) and the rule's own state."""
        state = {"step": self.step, "faulty_rows": self.faulty_rows,
                 "momentum": {name: m.clone() for name, m in self.momentum.items()}}
        if hasattr(self.aggregator, "state_dict"):
            state["aggregator"] = self.aggregator.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.faulty_rows = int(state["faulty_rows"])
        self.momentum = {name: m.clone() for name, m in state.get("momentum", {}).items()}
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


def _frame(payload: torch.Tensor, size: int) -> torch.Tensor:
    """The fixed-size wire slot of a payload: its length in bytes (int64) then ``size`` bytes, cut or zero-padded.

    Every rank's slot has the same size, so the all-gather never depends on what
    a peer sends; the length field lets receivers reject a payload of the wrong
    size (a truncated or overlong one) instead of decoding it.
    """
    data = payload.detach().contiguous().reshape(-1).view(torch.uint8)
    slot = torch.zeros(_LENGTH_BYTES + size, dtype=torch.uint8)
    slot[:_LENGTH_BYTES] = torch.tensor([data.numel()], dtype=torch.int64).view(torch.uint8)
    kept = min(data.numel(), size)
    slot[_LENGTH_BYTES : _LENGTH_BYTES + kept] = data[:kept]
    return slot


def _decode_rows(state: RobustState, slots: torch.Tensor, d: int, step: int) -> torch.Tensor:
    """The ``n × d`` matrix of the gathered slots; a malformed row becomes NaN (a faulty worker).

    A row is malformed when its length field is not the compressor's payload
    size for d, or when the compressor's decoder rejects it (indices out of
    range or not increasing, non-finite values, ...).
    """
    size = state.compressor.payload_bytes(torch.Size([d]))
    rows = torch.empty(slots.shape[0], d, dtype=torch.float32)
    for r in range(slots.shape[0]):
        ctx = TensorContext(key="model", step=step, seed=state.seed, rank=r, world_size=state.world_size)
        rows[r].zero_()
        length = int(slots[r, :_LENGTH_BYTES].clone().view(torch.int64)[0])
        try:
            if length != size:
                raise WireFormatError(f"rank {r} sent a {length}-byte payload, expected {size}")
            state.compressor.decode_add(slots[r, _LENGTH_BYTES:].clone(), rows[r], ctx)
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
        slots = yield AllGather(_frame(payload, state.compressor.payload_bytes(flat.shape)))
        rows = _decode_rows(state, slots, flat.numel(), step)
    state.faulty_rows += int((~torch.isfinite(rows).all(dim=1)).sum())
    if isinstance(state.aggregator, Compose):  # seeded pre-aggregators (bucketing) draw from the step
        return state.aggregator(rows, step=step).to(flat.dtype)
    return state.aggregator(rows).to(flat.dtype)


def _apply_worker_momentum(state: RobustState, held: list) -> None:
    """Replace each held bucket's gradients by this rank's momentum ``m ← β·m + g`` (per parameter name)."""
    for buffer, params, _ in held:
        flat = buffer.reshape(-1)
        offset = 0
        for p in params:
            grad = flat[offset : offset + p.numel()]
            offset += p.numel()
            name = state._names[id(p)]
            m = state.momentum.get(name)
            if m is None:
                state.momentum[name] = grad.detach().clone()
            else:
                m.mul_(state.worker_momentum).add_(grad)
                grad.copy_(m)
        if offset != flat.numel():
            raise RuntimeError(f"bucket of {flat.numel()} elements holds parameters of {offset} elements")


def sharded_protocol(state: RobustState, flat: torch.Tensor, step: int) -> Protocol:
    """Robust aggregation without any rank holding all n submissions (module docstring, "sharded mode").

    1. Submit as in :func:`robust_protocol` (step 2a–2b; the omniscient
       attack's observation round still gathers n × d: that is the emulated
       attacker's cost, not the defence's).
    2. Pad the submission to n·c (c = ⌈d/n⌉) and all-to-all its n slices:
       rank j gets ``S`` (n × c), slice j of every worker's vector.
    3. One round of two ordered all-reduces: the partial Gram matrix ``S Sᵀ``
       (only if the rule or a pre-aggregator needs it) and each worker's
       "non-finite somewhere in my slice" flag. Every rank now holds the same
       Gram matrix and the same set of faulty workers.
    4. Gram rule: ``w = weights_from_gram(G)`` (via the pre-aggregators for a
       ``Compose``) and the slice's output ``Σᵢ wᵢ sᵢ``. Coordinate-wise rule:
       mix the slice with the pre-aggregators' matrix ``W(G)`` if any, then the
       rule on the slice, dropping the globally faulty rows
       (:meth:`~commlib.robust.base.Aggregator.aggregate_columns`).
    5. All-gather the output slices and cut the padding.

    Coordinate-wise rules give the bits of the gathered path; Gram rules agree
    with it to rounding (the Gram matrix is summed in another order). Every rank
    gets identical bits. Memory per rank: about 3·d floats plus n² (vs n·d).
    """
    submission = yield from _submission(state, flat, step)
    n, d = state.world_size, submission.numel()
    width = -(-d // n)
    padded = torch.zeros(n * width, dtype=torch.float32)
    padded[:d] = submission
    shard = yield AllToAll(padded.view(n, width))
    del padded
    compose = state.aggregator if isinstance(state.aggregator, Compose) else None
    rule = _rule_of(state.aggregator)
    faulty_here = (~finite_rows(shard)).to(torch.float32)
    if isinstance(rule, GramAggregator) or (compose is not None and compose.preaggregators):
        G, faulty = yield (AllReduce(gram(shard)), AllReduce(faulty_here))
    else:
        G, faulty = None, (yield AllReduce(faulty_here))
    finite = faulty == 0
    state.faulty_rows += int((~finite).sum())
    if isinstance(rule, GramAggregator):
        weights = compose.weights_from_gram(G, step) if compose is not None else rule.weights_from_gram(G)
        part = combine(shard, weights)
    else:
        rows = shard
        if compose is not None and compose.preaggregators:
            W, _ = compose.mixing_from_gram(G, step)
            rows = mix(shard, W)
            finite = ~((W != 0) & ~finite[None, :]).any(dim=1)
        part = rule.aggregate_columns(rows, finite)
    parts = yield AllGather(part.contiguous())
    return parts.reshape(-1)[:d].to(flat.dtype)


def robust_hook(state: RobustState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Hold each bucket until the last one, then aggregate the whole gradient robustly (module docstring)."""
    pending: Future = Future()
    state._pending.append((bucket.buffer(), list(bucket.parameters()), pending))
    if not bucket.is_last():
        return pending
    held, state._pending = state._pending, []
    state.buckets_last_step = len(held)
    step = state.step
    state.step += 1
    if state.worker_momentum:
        _apply_worker_momentum(state, held)
    flat = torch.cat([buffer.reshape(-1) for buffer, _, _ in held])
    protocol = sharded_protocol if state.sharded else robust_protocol
    done = state.issuer.submit(lambda: protocol(state, flat, step), Timing())

    def write_back(fut: Future) -> None:
        try:
            aggregate = fut.value()
        except BaseException as exc:  # noqa: BLE001 - every held bucket must learn of the failure
            for _, _, waiting in held:
                waiting.set_exception(exc)
            return
        offset = 0
        for buffer, _, waiting in held:
            buffer.copy_(aggregate[offset : offset + buffer.numel()].view_as(buffer))
            offset += buffer.numel()
            waiting.set_result(buffer)

    done.then(write_back)
    return pending
