"""The gradient exchange: which tensors to compress, and the protocol of one bucket.

Used unchanged by the DDP hook and the simulator, so both issue the same
collectives and compute the same bits. For one bucket (a list of named
gradient tensors) at step ``t`` it builds one protocol:

1. Tensors are sent dense (an ordered fp32 all-reduce) during the first
   ``start_step`` steps, and always when they are 1-D, smaller than
   ``min_numel``, not handled by the compressor, or compressed by less than
   ``min_compression_rate``. The rest go through ``compressor.exchange``.
2. Round one fuses the dense tensors, a one-element non-finite flag and the
   first round of every compressed tensor (see :mod:`.merge`).
3. If any rank flagged NaN/Inf, the compressed protocols are abandoned before
   they decode anything or touch their state, and the whole bucket is sent
   dense so the non-finite values reach the optimizer (``GradScaler`` skips
   the step). Otherwise the remaining rounds run fused.

Dense ("cast") compressors — Identity, FP16, BF16 — take every tensor through
their own native all-reduce, with no flag and no warm-up.

Private compressors (``compressor.private``, e.g. :class:`~commlib.privacy.DPSketch`)
must see every value that leaves a rank: every non-empty tensor goes through
them from step 0 on (no warm-up, no 1-D, size or rate exception; ``ValueError``
if the compressor cannot take one), and on NaN/Inf nothing is resent: every
rank returns NaN for the whole bucket (``GradScaler`` skips the step), so only
the one-bit flag leaves a rank. They take no policy.

With a ``policy`` (:class:`~commlib.adaptive.LGreCo` or
:class:`~commlib.adaptive.Accordion`), the compressor of each tensor the
policy registered is the one of its current option (each option built once,
so per-tensor state persists; all PowerSGD ranks share one ``Q`` store, so a
rank change keeps the old columns); ``fp32`` and unregistered tensors go dense, and ``compressor``
is not used. Steps ``τ = step − start_step`` count compressed steps:

4. In the window before a re-solve, rank 0 observes what the compressor is
   about to see for every registered tensor (the error-feedback message when
   there is feedback, else the gradient), on finite steps only, and notes
   which registered tensors share the bucket (:meth:`LGreCo.note_bucket`).
5. After the last bucket of step ``t`` (``last=True``), when a re-solve is due
   at ``τ + 1``, rank 0 decides and the decision (int64 option indices) is
   broadcast; every rank loads it, so it applies from the next step on.
   With ``LGreCo(..., refine_time=True)`` and a clock (the DDP runtime's), every
   rank first all-gathers the seconds of the collective rounds it timed in the
   window (step 6), and every rank refines its ``TimeCost`` from the slowest
   rank's seconds (:meth:`LGreCo.refine`) — identical inputs, so identical
   models on every rank — before rank 0 re-solves.
6. Every collective is metered (:class:`~.traffic.Meter`): ``received`` is what
   the driver that runs the exchange moves (``driver``: ``"torch"`` for DDP and
   the simulator, ``"mpi"``), decided per *fused* collective as the driver sees
   it — a rank-ordered all-reduce of at least ``SPLIT_MIN_BYTES`` receives a
   ring's ``2(n−1)·⌈P/n⌉`` under the torch driver, a smaller one ``(n−1)·P``.
   With a ``clock``, each round of the bucket is timed from the protocol's side
   (``collective_s``) and, with a ``TimeCost`` policy, priced
   (``predicted_collective_s``): the model's prediction next to what it took.
   The simulator has no clock: its rounds are not timed and a ``refine_time``
   policy keeps the model it was given.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .. import ops
from ..adaptive import Accordion, LGreCo, Option, TimeCost
from ..adaptive.cost import RoundTiming, exchange_local_seconds_model
from ..compress.base import Compressor, TensorContext, handed_over
from ..compress.dense import Identity
from ..compress.powersgd import PowerSGD
from ..errors import StateDivergenceError
from ..feedback.base import ErrorFeedback, require_local_compressor
from .collectives import AllGather, AllReduce, Broadcast, Protocol, Round, as_round
from .merge import fuse_round, merge, split_round
from .traffic import DRIVERS, Meter

__all__ = ["ExchangeConfig", "BucketReport", "GradientExchange", "adjacent_view"]

_FP32 = Option("fp32")
_NATIVE = Identity()  # stateless: the native all-reduce of ``native_dense``
_MAX_TIMED_ROUNDS = 512  # rounds a refine_time policy keeps per window (the last ones), a fixed-size all-gather


@dataclass(frozen=True)
class ExchangeConfig:
    """When to compress. ``start_step`` dense steps first (DDP rebuilds its buckets after step 0).

    With error feedback, ``feedback_warm_start`` initialises ``hᵢ = gᵢ``, ``h = mean g``
    from the last dense step, and ``check_every = N > 0`` compares a SHA-256 digest
    of every global estimate ``h`` across ranks every N steps (one small all-gather)
    and raises ``StateDivergenceError`` if any rank differs.

    ``native_dense=True`` sends dense tensors (the warm-up steps, small and 1-D
    tensors, a policy's ``fp32`` layers, a bucket resent dense after NaN/Inf) through
    the backend's native all-reduce: a bucket with no compressed tensor as one
    in-place all-reduce, like ``allreduce_hook``; the dense part of a mixed bucket as
    one native all-reduce beside the compressed tensors' collectives (the non-finite
    flag rides along: the native sum of the flags is as good as the ordered one).
    Otherwise dense tensors take the rank-ordered all-reduce, which the simulator
    reproduces bit for bit but which costs far more on large payloads (the torch
    driver runs it as all-to-all + all-gather around a local sum: 1.3 s against
    0.4 s for 100 MB on 4 ranks over loopback). Every rank still ends with the same
    bits (the native sum is computed once per chunk), but dense tensors no longer
    carry the simulator's bits. In an all-dense bucket a rank's NaN/Inf reaches the
    others through the sum, and, as ``allreduce_hook``, the bucket is not scanned for
    them (one pass over the gradients saved): ``BucketReport.non_finite`` then reports
    only a bucket rank 0 scanned to observe it for a policy.
    """

    seed: int = 0
    start_step: int = 2
    min_compression_rate: float = 2.0
    min_numel: int = 256
    feedback_warm_start: bool = False
    check_every: int = 0
    native_dense: bool = False

    def __post_init__(self) -> None:
        if self.start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {self.start_step}")
        if self.check_every < 0:
            raise ValueError(f"check_every must be >= 0, got {self.check_every}")
        if self.min_compression_rate < 0:
            raise ValueError(f"min_compression_rate must be >= 0, got {self.min_compression_rate}")


@dataclass
class BucketReport:
    """What one bucket's exchange cost this rank (bytes as implemented, see docs/architecture.md).

    ``sent`` counts the payload bytes the bucket hands to its collectives; ``received`` the
    bytes this rank receives in all of the exchange's collectives (the policy's decision
    broadcast and timing table included) as the driver runs them (module docstring, step 6).
    """

    sent: int = 0
    received: int = 0
    dense_fp32: int = 0
    compressed_numel: int = 0
    dense_numel: int = 0
    non_finite: bool = False
    policy_sent: int = 0  # bytes sent for the policy's tensors (as exchanged: dense in the warm-up)
    policy_predicted: int = 0  # the same tensors priced at their current option (the policy's prediction)
    collective_s: float = 0.0  # seconds of the bucket's collective rounds, timed by the exchange's clock (else 0)
    predicted_collective_s: float = 0.0  # the same rounds priced by the policy's TimeCost (else 0)


def adjacent_view(xs: Sequence[Tensor]) -> Tensor | None:
    """One flat view of ``xs`` if they lie back to back in one storage (as a DDP bucket's gradients do), else None."""
    if not xs:
        return None
    first = xs[0]
    storage, end = first.untyped_storage().data_ptr(), first.data_ptr()
    for x in xs:
        if not (x.is_contiguous() and x.dtype == first.dtype and x.data_ptr() == end
                and x.untyped_storage().data_ptr() == storage):
            return None
        end += x.numel() * x.element_size()
    return first.as_strided((sum(x.numel() for x in xs),), (1,))


def _digest(t: Tensor) -> int:
    """A signed 64-bit SHA-256 digest of ``t``'s bytes (on the host)."""
    data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little", signed=True)


def _resume(protocol: Protocol, answer: object) -> Protocol:
    """Continue a started protocol, feeding it ``answer`` to its pending round."""
    value = answer
    while True:
        try:
            request = protocol.send(value)
        except StopIteration as stop:
            return stop.value
        value = yield request


class GradientExchange:
    """Per-rank engine: decides dense vs compressed per tensor and builds each bucket's protocol.

    ``driver`` names the driver that runs the protocols (``"torch"``: DDP and the simulator;
    ``"mpi"``), for the bytes received. ``clock`` (e.g. ``time.perf_counter``; a runtime with
    real collectives passes one, the simulator none) times the collective rounds.
    """

    def __init__(self, compressor: Compressor, rank: int, world_size: int, config: ExchangeConfig | None = None,
                 feedback: ErrorFeedback | None = None, policy: LGreCo | None = None, *, driver: str = "torch",
                 clock: Callable[[], float] | None = None):
        if not isinstance(compressor, Compressor):
            raise TypeError(f"compressor must be a commlib Compressor, got {type(compressor).__name__}")
        if policy is not None and not isinstance(policy, (LGreCo, Accordion)):
            raise TypeError(f"policy must be a commlib.adaptive LGreCo or Accordion, got {type(policy).__name__}")
        if feedback is not None:
            if not isinstance(feedback, ErrorFeedback):
                raise TypeError(f"feedback must be a commlib ErrorFeedback, got {type(feedback).__name__}")
            for local in [compressor] if policy is None else [o.build() for o in policy.options if o != _FP32]:
                require_local_compressor(local)
        self.feedback = feedback
        if compressor.private and policy is not None:
            raise ValueError(f"{compressor.name} is private: a policy would send tensors dense, so it takes none")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world size {world_size}")
        self.compressor = compressor
        self.rank = rank
        self.world_size = world_size
        self.config = config or ExchangeConfig()
        self._plan: dict[tuple[str, torch.Size], bool] = {}
        self.policy = policy
        self._built: dict[Option, Compressor] = {}
        if driver not in DRIVERS:
            raise ValueError(f"unknown driver {driver!r}; expected one of {DRIVERS}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, got {type(clock).__name__}")
        self.driver, self.clock = driver, clock
        self._timed_rounds: list[RoundTiming] = []  # a refine_time policy's window of timed rounds …
        self._timed_local: list[tuple[float, float]] = []  # … and its buckets' own work: (measured, predicted) s

    def register(self, shapes: dict[str, torch.Size]) -> None:
        """Register with the policy the tensors it may choose for: 2-D and up, at least ``min_numel`` elements."""
        if self.policy is None:
            raise ValueError("register needs a policy")
        self.policy.register({n: s for n, s in shapes.items() if len(s) >= 2 and s.numel() >= self.config.min_numel},
                             world_size=self.world_size)

    def policy_config(self) -> dict[str, object]:
        """The policy's settings that every rank must share (for the config fingerprint)."""
        return self.policy.config()

    def _build(self, option: Option) -> Compressor:
        """The compressor of ``option``, built once (its per-tensor state persists across re-solves).

        All PowerSGD ranks with the same error-feedback setting share one store,
        so a tensor whose rank changes keeps its ``Q`` columns and its error
        buffer (:meth:`PowerSGD.resized`).
        """
        if option not in self._built:
            peer = next((c for c in self._built.values() if isinstance(c, PowerSGD)
                         and c.error_feedback == option.error_feedback), None)
            shared = option.family == "powersgd" and peer is not None
            self._built[option] = peer.resized(option.param[0]) if shared else option.build()
        return self._built[option]

    def _powersgd_errors(self, names: Sequence[str], shapes: Sequence[torch.Size]) -> dict[str, Tensor]:
        """The pending error-feedback buffers of PowerSGD options (``powersgd:r:ef``) for ``names``, by name."""
        errors: dict[str, Tensor] = {}
        for compressor in self._built.values():
            if isinstance(compressor, PowerSGD):
                for name, shape in zip(names, shapes):
                    e = compressor.error(name)
                    if e is not None and name not in errors:
                        errors[name] = e.view(shape)
        return errors

    def _chooser(self, step: int):
        """``(name, shape) → compressor or None (dense)`` for ``step``; the policy's choices are read once."""
        if step < self.config.start_step and not self.compressor.private:
            return lambda name, shape: None
        if self.policy is None:
            return lambda name, shape: self.compressor if self.compresses(name, shape) else None
        choices = self.policy.choices()

        def choose(name: str, shape: torch.Size) -> Compressor | None:
            option = choices.get(name)
            return None if option is None or option == _FP32 else self._build(option)

        return choose

    def compresses(self, name: str, shape: torch.Size) -> bool:
        """Whether tensor ``name`` of ``shape`` goes through the compressor (after the warm-up)."""
        key = (name, shape)
        if key not in self._plan:
            c, cfg = self.compressor, self.config
            if c.private and shape.numel() > 0 and not c.compressible(shape):
                raise ValueError(f"{c.name} is private but cannot take {name!r} of shape {tuple(shape)}")
            ok = len(shape) >= 2 and shape.numel() >= cfg.min_numel and c.compressible(shape)
            if c.private:  # every value through the mechanism (an empty tensor carries none)
                ok = shape.numel() > 0
            elif ok:
                rate = 4 * shape.numel() / max(1, c.wire_bytes(shape).total)
                ok = rate >= cfg.min_compression_rate
            self._plan[key] = ok
        return self._plan[key]

    def protocol(
        self, named: Sequence[tuple[str, Tensor]], step: int, inplace: bool = False, last: bool = False
    ) -> Protocol[tuple[list[Tensor], BucketReport]]:
        """Protocol for one bucket: returns the averaged tensors (float32, same shapes) and its report.

        ``inplace=True`` hands the tensors over (the DDP hook's bucket, which DDP
        overwrites with the result anyway): the dense casts then reduce in them,
        without a copy. Otherwise the inputs are never written. ``last=True``
        marks the step's last bucket: a due policy decision follows it (step 5).
        """
        meter = Meter(self.rank, self.world_size, self.driver, self.clock)
        start = self.clock() if self._refines() else 0.0
        out, report = yield from meter.run(self._bucket(named, step, inplace))
        self._note_rounds(meter, step, report)
        if self._refines() and self._in_window(step):
            self._note_local(named, self.clock() - start - sum(meter.seconds))
        if last and self.policy is not None:
            yield from meter.run(self._adapt(step + 1 - self.config.start_step, named[0][1].device), timed=False)
        report.received = meter.received
        return out, report

    def _time_model(self) -> TimeCost | None:
        model = getattr(self.policy, "cost_model", None)
        return model if isinstance(model, TimeCost) else None

    def _refines(self) -> bool:
        """Whether the policy refines its time model from this exchange's timings (it needs a clock)."""
        return self.clock is not None and bool(getattr(self.policy, "refine_time", False))

    def _note_rounds(self, meter: Meter, step: int, report: BucketReport) -> None:
        """Report the bucket's timed and predicted round seconds; keep them for a ``refine_time`` policy's window."""
        model = self._time_model()
        if model is not None:
            report.predicted_collective_s = sum(model.round_seconds(r, self.world_size) for r in meter.rounds)
        if not meter.seconds:
            return
        report.collective_s = sum(meter.seconds)
        if self._refines() and self._in_window(step):
            self._timed_rounds += [RoundTiming(r, self.world_size, t) for r, t in zip(meter.rounds, meter.seconds)]
            del self._timed_rounds[:-_MAX_TIMED_ROUNDS]

    def _in_window(self, step: int) -> bool:
        """Whether ``step`` is in the policy's window before a re-solve."""
        tau = step - self.config.start_step
        return tau >= 0 and self.policy.wants_gradients(tau)

    def _note_local(self, named: Sequence[tuple[str, Tensor]], measured: float) -> None:
        """Keep a bucket's own work, measured (its seconds less its rounds') and as the time model predicts it
        for the bucket's current options (:func:`~commlib.adaptive.cost.exchange_local_seconds_model`)."""
        choices = self.policy.choices()
        layers = [(tuple(t.shape), choices[name]) for name, t in named if name in choices]
        others = sum(t.numel() for name, t in named if name not in choices)
        predicted = exchange_local_seconds_model(self._time_model(), layers, self.world_size, others)
        self._timed_local = (self._timed_local + [(measured, predicted)])[-_MAX_TIMED_ROUNDS:]

    def _adapt(self, tau: int, device: torch.device) -> Protocol[None]:
        """When a re-solve is due at ``tau``: rank 0 decides, broadcasts the int64 decision, every rank loads it.

        With a ``refine_time`` policy every rank first refines its time model from the window's rounds.
        """
        if tau < 0 or not self.policy.should_solve(tau):
            return
        if self._refines():
            rounds, own_work = yield from self._slowest_window(device)
            self.policy.refine(rounds, own_work)
        decision = self.policy.decide(tau)  # re-solves on the rank that observed (rank 0); the others skip
        self.policy.load_decision((yield Broadcast(decision.to(device), src=0)).cpu())

    def _slowest_window(self, device: torch.device) -> Protocol[tuple[list[RoundTiming], tuple[float, float]]]:
        """The window's timed rounds, each round's seconds maxed over ranks, and its buckets' own work summed
        (each bucket's measured seconds maxed over ranks; the model's prediction); the window is then cleared.

        One all-gather of a fixed-size float64 table (row 0: each round's payload bytes, row 1:
        its seconds; rows 2 and 3: each bucket's own work, measured and predicted; zeros past the
        end), so every rank issues the same collective. A round ends when its slowest rank's part
        arrives, so the maximum is the round's time; likewise the slowest rank's own work is what
        the others wait for. Every rank timed the same collectives; a rank whose row 0 differs
        raises ``StateDivergenceError``.
        """
        rounds, self._timed_rounds = self._timed_rounds, []
        local, self._timed_local = self._timed_local, []
        table = torch.zeros(4, _MAX_TIMED_ROUNDS, dtype=torch.float64)
        table[0, : len(rounds)] = torch.tensor([float(sum(p for _, p in r.collectives)) for r in rounds],
                                               dtype=torch.float64)
        table[1, : len(rounds)] = torch.tensor([r.seconds for r in rounds], dtype=torch.float64)
        table[2:, : len(local)] = torch.tensor(local, dtype=torch.float64).reshape(-1, 2).t()
        everyone = (yield AllGather(table.to(device))).cpu()
        differ = [r for r in range(everyone.shape[0]) if not torch.equal(everyone[r, 0], everyone[0, 0])]
        if differ:
            raise StateDivergenceError(f"ranks {differ} timed other collectives than rank 0 (this is rank {self.rank})")
        slowest = everyone[:, 1, : len(rounds)].amax(dim=0).tolist()
        own_work = (float(everyone[:, 2, : len(local)].amax(dim=0).sum()), float(everyone[0, 3, : len(local)].sum()))
        return [RoundTiming(r.collectives, r.world_size, t) for r, t in zip(rounds, slowest)], own_work

    def _bucket(
        self, named: Sequence[tuple[str, Tensor]], step: int, inplace: bool
    ) -> Protocol[tuple[list[Tensor], BucketReport]]:
        """Steps 1–4 of the module docstring for one bucket."""
        if not named:
            raise ValueError("a bucket needs at least one tensor")
        for name, t in named:
            if not t.is_floating_point():
                raise TypeError(f"gradient {name!r} has dtype {t.dtype}; commlib exchanges floating-point gradients")
        xs = [t.detach().to(torch.float32) for _, t in named]
        report = BucketReport(dense_fp32=4 * sum(x.numel() for x in xs))
        if self.compressor.is_cast and self.policy is None:
            return (yield from self._cast_protocol(named, xs, step, report, inplace))
        choose = self._chooser(step)
        chosen = [choose(name, x.shape) for (name, _), x in zip(named, xs)]
        compressed = [i for i, c in enumerate(chosen) if c is not None]
        dense = sorted(set(range(len(xs))) - set(compressed))
        mine = self._policy_tensors(named, xs, report) if self.policy is not None else []
        observing = self._observation_due(step, mine)
        native = not compressed and self.config.native_dense and not self._warm_start_due(step)
        # The all-dense native path needs no flag: like allreduce_hook it skips the pass over the bucket
        # unless the policy observes this step (it observes finite steps only).
        bad = (observing or not native) and not all(ops.all_finite(x) for x in xs)
        if observing and isinstance(self.policy, LGreCo):
            others = sum(x.numel() for x in xs) - sum(xs[i].numel() for i in mine)
            self.policy.note_bucket([named[i][0] for i in mine], others)
        if observing and not bad:
            self._observe(named, xs, step, mine)
        if native:
            report.non_finite = bad
            report.policy_sent = sum(4 * xs[i].numel() for i in mine)
            return (yield from self._native_dense(named, xs, step, report, inplace))

        # Round one: the dense tensors plus the non-finite flag, fused with every compressed protocol's first round.
        flag = torch.tensor([float(bad)], device=xs[0].device)
        dense_payload = torch.cat([xs[i].reshape(-1) for i in dense] + [flag])
        started = [self._start(chosen[i], named[i][0], torch.zeros_like(xs[i]) if bad else xs[i], step,
                               writable=inplace and not bad) for i in compressed]
        ordered = not self.config.native_dense
        requests = [AllReduce(dense_payload, ordered=ordered)] + [r for _, first in started for r in as_round(first)]
        fused, slots = fuse_round(requests)
        parts = split_round((yield fused), slots)
        self._count(report, dense_payload.numel())
        report.dense_numel += dense_payload.numel() - 1
        total_dense = parts[0]

        if float(total_dense[-1]) > 0:  # some rank has NaN/Inf: abandon the compressed protocols, state untouched
            for gen, _ in started:
                gen.close()
            report.non_finite = True
            if self.compressor.private:  # never resend dense: only the flag has left this rank
                return [torch.full_like(x, float("nan")) for x in xs], report
            everything = torch.cat([x.reshape(-1) for x in xs])
            total = yield AllReduce(everything, ordered=ordered)
            self._count(report, everything.numel())
            report.policy_sent = sum(4 * xs[i].numel() for i in mine)
            return self._split(total.div_(self.world_size), xs), report

        out: list[Tensor] = [torch.empty(0)] * len(xs)
        # Handed over (and no warm start reading the gradients): the means go straight into the bucket.
        into_bucket = inplace and not self._warm_start_due(step)
        for i, total in zip(dense, self._split(total_dense[:-1], [xs[i] for i in dense])):
            out[i] = torch.div(total, self.world_size, out=xs[i]) if into_bucket else total.div(self.world_size)
        if self._warm_start_due(step):
            choose = self._chooser(self.config.start_step)
            for i in dense:
                if choose(named[i][0], xs[i].shape) is not None:
                    self.feedback.warm_start(named[i][0], xs[i], out[i])
        resumed, cursor = [], 1
        for gen, first in started:
            size = len(as_round(first))
            answer = parts[cursor : cursor + size]
            cursor += size
            resumed.append(_resume(gen, tuple(answer) if isinstance(first, tuple) else answer[0]))
        for i, mean in zip(compressed, (yield from merge(resumed))):
            out[i] = mean
            report.compressed_numel += xs[i].numel()
            report.sent += chosen[i].wire_bytes(xs[i].shape).total
        report.policy_sent = sum(4 * xs[i].numel() if chosen[i] is None else chosen[i].wire_bytes(xs[i].shape).total
                                 for i in mine)
        if compressed and self._check_due(step):
            yield from self._check_consistent([named[i][0] for i in compressed], step)
        return out, report

    def _check_due(self, step: int) -> bool:
        every = self.config.check_every
        return self.feedback is not None and "h" in self.feedback.buffers and every > 0 and step % every == 0

    def _check_consistent(self, names: list[str], step: int) -> Protocol[None]:
        """All-gather a digest of each tensor's global estimate ``h``; raise if any rank holds other bits."""
        digests = torch.tensor([_digest(self.feedback.get(name)["h"]) for name in names], dtype=torch.int64)
        everyone = yield AllGather(digests)
        differ = [r for r in range(everyone.shape[0]) if not torch.equal(everyone[r], everyone[0])]
        if differ:
            raise StateDivergenceError(
                f"error-feedback state diverged at step {step}: ranks {differ} hold another h than rank 0 "
                f"for some of {names} (this is rank {self.rank})"
            )

    def _policy_tensors(self, named: Sequence[tuple[str, Tensor]], xs: list[Tensor],
                        report: BucketReport) -> list[int]:
        """The indices of the policy's tensors; prices them at their current options (``report.policy_predicted``)."""
        choices = self.policy.choices()
        mine = [i for i, (name, _) in enumerate(named) if name in choices]
        report.policy_predicted = sum(choices[named[i][0]].wire_bytes(xs[i].shape) for i in mine)
        return mine

    def _observation_due(self, step: int, mine: list[int]) -> bool:
        """Whether rank 0 observes this step's policy tensors (step 4; finite steps only)."""
        tau = step - self.config.start_step
        return self.rank == 0 and bool(mine) and tau >= 0 and self.policy.wants_gradients(tau)

    def _observe(self, named: Sequence[tuple[str, Tensor]], xs: list[Tensor], step: int, mine: list[int]) -> None:
        """Rank 0's observation (step 4): what the compressors are about to see for the policy's tensors ``mine``."""
        tau = step - self.config.start_step
        if self.feedback is None:  # PowerSGD's own error feedback, where a layer has some pending
            seen = {named[i][0]: xs[i] for i in mine}
            errors = self._powersgd_errors([named[i][0] for i in mine], [xs[i].shape for i in mine])
            self.policy.observe(tau, seen, errors or None)
        else:
            seen = {named[i][0]: self.feedback.message(named[i][0], xs[i], self._context(named[i][0], step))
                    for i in mine}
            self.policy.observe(tau, seen)

    def _start(self, compressor: Compressor, name: str, x: Tensor, step: int,
               writable: bool = False) -> tuple[Protocol, Round]:
        """Create tensor ``name``'s compressed protocol and run it to its first request.

        ``writable``: ``x`` is handed over, so a compressor given ``x`` itself may write its
        result into it; with a feedback wrapper (which hands the compressor a message
        instead) the wrapper's commit writes the result into ``x``.
        """
        ctx = replace(self._context(name, step), writable=writable)
        if self.feedback is None:
            gen = compressor.exchange(x, ctx)
        else:
            gen = self._with_feedback(compressor, name, x, ctx)
        return gen, next(gen)

    def _with_feedback(self, compressor: Compressor, name: str, g: Tensor, ctx: TensorContext) -> Protocol[Tensor]:
        """Error feedback around the exchange: compress ``message(g)``, then ``commit`` once the mean is known.

        The commit is the protocol's last act, so an abandoned exchange (a
        non-finite gradient somewhere) leaves the feedback state untouched. A
        handed-over ``g`` (``ctx.writable``) receives the commit's result.
        """
        message = self.feedback.message(name, g, ctx)
        mean, local = yield from compressor.exchange_local(message, replace(ctx, writable=False),
                                                           sparse=self.feedback.sparse_deltas)
        return self.feedback.commit(name, g, local, mean, out=handed_over(g, ctx))

    @staticmethod
    def _count(report: BucketReport, numel: int) -> None:
        """Add an fp32 payload of ``numel`` elements to the bytes sent."""
        report.sent += 4 * numel

    def _warm_start_due(self, step: int) -> bool:
        """Whether this step's dense means initialise the error feedback (``feedback_warm_start``)."""
        return self.feedback is not None and self.config.feedback_warm_start and step == self.config.start_step - 1

    def _native_dense(self, named, xs, step, report, inplace):
        """``native_dense``: an all-dense bucket as one native all-reduce (``Identity``), in place when handed over."""
        view = adjacent_view(xs)
        flat = view if view is not None else torch.cat([x.reshape(-1) for x in xs])
        owned = inplace or view is None
        mean = yield from _NATIVE.exchange(flat, self._context(named[0][0], step), inplace=owned)
        self._count(report, flat.numel())
        report.dense_numel += flat.numel()
        return self._split(mean, xs), report

    def _cast_protocol(self, named, xs, step, report, inplace):
        """Casts need no per-tensor state: the whole bucket goes as one flat tensor through one native all-reduce."""
        view = adjacent_view(xs)
        flat = view if view is not None else torch.cat([x.reshape(-1) for x in xs])
        owned = inplace or view is None  # a concatenation is ours to reduce in
        mean = yield from self.compressor.exchange(flat, self._context(named[0][0], step), inplace=owned)
        report.sent += self.compressor.wire_bytes(flat.shape).total
        report.dense_numel += flat.numel()
        return self._split(mean, xs), report

    def _context(self, name: str, step: int) -> TensorContext:
        return TensorContext(key=name, step=step, seed=self.config.seed, rank=self.rank, world_size=self.world_size)

    @staticmethod
    def _split(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
        out, offset = [], 0
        for x in like:
            out.append(flat[offset : offset + x.numel()].view(x.shape))
            offset += x.numel()
        return out

    def state_dict(self) -> dict[str, object]:
        """Compressor and feedback state; with a policy, also its state and every built option's compressor state."""
        state: dict[str, object] = {"compressor": self.compressor.state_dict()}
        if self.feedback is not None:
            state["feedback"] = self.feedback.state_dict()
        if self.policy is not None:
            state["policy"] = self.policy.state_dict()
            state["options"] = {str(o): c.state_dict() for o, c in self._built.items()}
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        if ("feedback" in state) != (self.feedback is not None):
            raise ValueError("checkpoint and exchange disagree on whether error feedback is used")
        if ("policy" in state) != (self.policy is not None):
            raise ValueError("checkpoint and exchange disagree on whether a policy is used")
        self.compressor.load_state_dict(state.get("compressor", {}))
        if self.feedback is not None:
            self.feedback.load_state_dict(state["feedback"])
        if self.policy is not None:
            self.policy.load_state_dict(state["policy"])
            self._built = {}
            for text, compressor_state in state["options"].items():  # type: ignore[union-attr]
                self._build(Option.parse(text)).load_state_dict(compressor_state)
