"""Cost models: what one layer's exchange costs under an option — in elements, bytes or seconds.

L-GreCo (Markov et al., MLSys 2024) minimizes the summed cost of the chosen
options. The public implementation counts *elements* (``(n + m)·r`` for a
rank-``r`` PowerSGD factor pair); its authors suggest *time* instead. Three
models, all built on :meth:`Option.wire_bytes` (the compressor's own
``wire_bytes``, never a re-derived formula):

* :class:`ElementCost` — 32-bit words of payload per rank (the paper's measure:
  ``(n + m)·r`` for PowerSGD, and the same count of 4-byte words for the others).
* :class:`ByteCost` — bytes each rank sends through the collectives commlib's
  torch driver issues (:func:`option_collectives`): a native ring all-reduce of
  a ``P``-byte payload (the fp16/bf16 casts) sends ``2(n−1)/n·P`` (flat in the
  world size ``n``), an all-gather (top-k, QSGD) ``(n−1)·P`` (growing with
  ``n``). A rank-ordered all-reduce (PowerSGD's ``P`` and ``Q``, and the
  ``fp32`` layers, which a policy's exchange sends in its ordered dense
  all-reduce) is an all-gather plus a local sum below ``SPLIT_MIN_BYTES``
  (64 KiB) and an all-to-all plus an all-gather of the summed chunks from
  there on — two collectives with a ring's ``2(n−1)/n·P``
  (:func:`ordered_traffic`).
* :class:`TimeCost` — ``Σ (latency + bytes sent·seconds per byte) + codec
  time`` over those collectives, with latency and bandwidth fitted per
  collective (native all-reduce, all-gather, all-to-all, split ordered
  all-reduce) by :func:`~commlib.adaptive.measure.calibrate` on the real process group (least squares of
  ``α + β·bytes sent``), refined online by :meth:`TimeCost.refit` (a joint fit to
  timed rounds, blended in), and local times from
  :func:`~commlib.adaptive.measure.measure_codec_times` — the real
  exchange run on a world of one, and measured with every rank of the group
  timing at once when a group is given, so they carry the CPU contention of
  training (ranks sharing cores).

:func:`exchange_seconds` prices one fused bucket exchange. Caveats of the
per-layer (separable) model, which the dynamic program needs: the exchange
fuses all tensors of a bucket into one collective per round, so the latency
term is an upper bound; overlap with the backward pass is ignored; each round
of a multi-round exchange waits for its slowest rank, which medians miss (see
docs/lgreco.md, "Time model: predicted against measured").
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..comm.torch_driver import SPLIT_MIN_BYTES
from ..compress import PowerSGD
from .options import CollectiveKind, Option

__all__ = [
    "ByteCost",
    "CostModel",
    "ElementCost",
    "RoundTiming",
    "TimeCost",
    "collective_seconds",
    "cost_table",
    "exchange_local_seconds_model",
    "exchange_seconds",
    "fit_linear",
    "option_collectives",
    "ordered_collectives",
    "ordered_traffic",
    "powersgd_payloads",
    "traffic_factor",
    "wire_collective",
]

WireKind = Literal["allreduce", "allgather", "alltoall", "ordered"]
_KINDS: tuple[CollectiveKind, ...] = ("allreduce", "allgather")  # every TimeCost prices these
# Optional fits: the all-to-all, and a whole split ordered all-reduce (all-to-all, ordered sum, all-gather).
_ALL_KINDS: tuple[WireKind, ...] = (*_KINDS, "alltoall", "ordered")


def _check_world(world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")


def traffic_factor(collective: WireKind, world_size: int) -> float:
    """Bytes each rank sends per payload byte: ring all-reduce ``2(n−1)/n``, all-gather ``n−1``, all-to-all ``(n−1)/n``.

    (An all-to-all's payload is the whole tensor; each rank keeps its own row.) ``"ordered"``, a
    split rank-ordered all-reduce (all-to-all + all-gather of the summed chunks), sends ``2(n−1)/n``.
    """
    _check_world(world_size)
    if collective in ("allreduce", "ordered"):
        return 2.0 * (world_size - 1) / world_size
    if collective == "allgather":
        return float(world_size - 1)
    if collective == "alltoall":
        return (world_size - 1) / world_size
    raise ValueError(f"unknown collective {collective!r}; expected one of {_ALL_KINDS}")


def ordered_traffic(payload_bytes: int, world_size: int) -> tuple[int, float]:
    """``(collectives, bytes each rank sends per payload byte)`` of a rank-ordered all-reduce in the torch driver.

    A payload of at least ``SPLIT_MIN_BYTES`` takes an all-to-all and an
    all-gather of the summed chunks: two collectives, ``(n−1)/n`` each,
    ``2(n−1)/n`` in all (a ring's traffic). A smaller one is one all-gather:
    ``n − 1``. (:func:`option_collectives` lists the collectives.)
    """
    _check_world(world_size)
    if world_size > 1 and payload_bytes >= SPLIT_MIN_BYTES:
        return 2, traffic_factor("allreduce", world_size)
    return 1, traffic_factor("allgather", world_size)


def _is_ordered(option: Option) -> bool:
    """PowerSGD's all-reduces are rank-ordered, and so is the dense all-reduce carrying a policy's fp32 layers."""
    return option.ordered or option.family == "fp32"


def wire_collective(option: Option) -> CollectiveKind:
    """The collective carrying ``option``'s payload: the native ring all-reduce or an all-gather.

    ``"allreduce"`` for the fp16/bf16 casts; ``"allgather"`` for top-k and
    QSGD, and for the rank-ordered all-reduces (PowerSGD, fp32), which the
    torch driver runs as all-gathers, or as an all-to-all plus an all-gather
    from ``SPLIT_MIN_BYTES`` on (:func:`option_collectives`).
    """
    return "allreduce" if option.collective == "allreduce" and not _is_ordered(option) else "allgather"


def powersgd_payloads(compressor: PowerSGD, shape: Sequence[int]) -> tuple[int, int]:
    """Bytes of PowerSGD's two ordered all-reduces for one tensor: ``P`` (``4·n·r``), then ``Q`` (``4·m·r``)."""
    size = torch.Size(shape)
    rows, cols = PowerSGD.matrix_shape(size)
    rank = compressor.effective_rank(size)
    return 4 * rows * rank, 4 * cols * rank


def _ordered_payloads(option: Option, shape: Sequence[int]) -> tuple[int, ...]:
    """Bytes of each ordered all-reduce ``option`` issues for one tensor: PowerSGD ``P`` then ``Q``; fp32 one."""
    if option.family == "powersgd":
        return powersgd_payloads(option.build(), shape)
    return (option.wire_bytes(shape),)


def ordered_collectives(payload_bytes: int, world_size: int) -> list[tuple[WireKind, float]]:
    """``(collective, bytes one rank sends)`` of a rank-ordered all-reduce of ``payload_bytes`` (torch driver).

    Below ``SPLIT_MIN_BYTES`` one all-gather; from there on one ``"ordered"`` (the split: all-to-all,
    ordered sum, all-gather), priced by its own fit or, without one, by the all-to-all's and the
    all-gather's (:meth:`TimeCost.fit`).
    """
    messages, factor = ordered_traffic(payload_bytes, world_size)
    return [("allgather" if messages == 1 else "ordered", factor * payload_bytes)]


def option_collectives(option: Option, shape: Sequence[int], world_size: int) -> list[tuple[WireKind, float]]:
    """``(collective, bytes one rank sends)`` for each collective ``option``'s exchange of one tensor runs.

    Top-k, QSGD: one all-gather, ``(n−1)·wire``. fp16/bf16: one native
    all-reduce, ``2(n−1)/n·wire``. PowerSGD (``P``, then ``Q``) and fp32: one
    ordered all-reduce each (:func:`ordered_collectives` of its own payload; in
    a fused bucket the split is decided on the fused payload:
    :func:`exchange_seconds`).
    """
    _check_world(world_size)
    if not _is_ordered(option):
        kind = option.collective
        return [(kind, traffic_factor(kind, world_size) * option.wire_bytes(shape))]
    return [c for payload in _ordered_payloads(option, shape) for c in ordered_collectives(payload, world_size)]


class CostModel(ABC):
    """Cost of exchanging one tensor of ``shape`` with ``option`` among ``world_size`` ranks."""

    #: What the cost counts ("words", "bytes", "seconds").
    unit: str = ""

    @abstractmethod
    def cost(self, option: Option, shape: Sequence[int], world_size: int) -> float:
        """The cost (``ValueError`` if ``option`` does not apply to ``shape``)."""


class ElementCost(CostModel):
    """32-bit words of payload per rank, ``ceil(wire_bytes / 4)``: the public L-GreCo's ``(n + m)·r``."""

    unit = "words"

    def cost(self, option: Option, shape: Sequence[int], world_size: int) -> float:
        _check_world(world_size)
        return float(-(-option.wire_bytes(shape) // 4))


class ByteCost(CostModel):
    """Bytes each rank sends, summed over the collectives of :func:`option_collectives`."""

    unit = "bytes"

    def cost(self, option: Option, shape: Sequence[int], world_size: int) -> float:
        return float(sum(sent for _, sent in option_collectives(option, shape, world_size)))


def _check_seconds(seconds: object, what: str) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (math.isfinite(seconds)
                                                                                   and seconds >= 0):
        raise ValueError(f"{what}: seconds must be a finite number >= 0, got {seconds!r}")


def _check_collective(collective: object, payload_bytes: object, what: str) -> None:
    if collective not in _ALL_KINDS:
        raise ValueError(f"{what}: unknown collective {collective!r}; expected one of {_ALL_KINDS}")
    if isinstance(payload_bytes, bool) or not isinstance(payload_bytes, int) or payload_bytes < 0:
        raise ValueError(f"{what}: payload_bytes must be an integer >= 0, got {payload_bytes!r}")


@dataclass(frozen=True)
class RoundTiming:
    """One round of collectives issued together, timed as a whole (an exchange cannot time them apart).

    ``collectives`` holds ``(kind, payload_bytes)`` per collective, the kind as the driver ran
    it (an ordered all-reduce is ``"allgather"`` below ``SPLIT_MIN_BYTES``, ``"ordered"`` from
    there on: :func:`commlib.comm.traffic.wire_kind`). :meth:`TimeCost.refit` fits the model
    to such rounds. ``ValueError`` for an unknown collective, negative or non-integer bytes, a
    world size below 1, or negative or non-finite seconds.
    """

    collectives: tuple[tuple[WireKind, int], ...]
    world_size: int
    seconds: float

    def __post_init__(self) -> None:
        for kind, payload in self.collectives:
            _check_collective(kind, payload, "RoundTiming")
        _check_world(self.world_size)
        _check_seconds(self.seconds, "RoundTiming")


def fit_linear(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y ≈ α + β·x`` in relative residuals ``(y − α − β·x)/y``, with ``α ≥ 0``.

    Timings span orders of magnitude with roughly constant relative noise, so
    residuals are weighted by ``1/y`` (plain least squares would let the noise
    of the largest sizes swamp ``α``). When the free fit gives ``α < 0`` it is
    refit through the origin. Needs at least two distinct ``x`` and positive
    ``y``; raises ``ValueError`` when the data are not finite or the slope is not
    positive (timings that do not grow with size).
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1 or np.unique(xs).size < 2:
        raise ValueError(f"fit_linear needs two equal-length 1-D sequences with >= 2 distinct x, got {xs.shape}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all() and (ys > 0).all()):
        raise ValueError("fit_linear: sizes and timings must be finite, timings positive")
    weights = 1.0 / ys
    beta, alpha = np.polyfit(xs, ys, 1, w=weights)
    if alpha < 0:
        w2 = weights**2
        alpha, beta = 0.0, float((w2 * xs) @ ys / ((w2 * xs) @ xs))
    if not beta > 0:
        raise ValueError(f"fit_linear: timings do not grow with size (slope {beta:.3g}); measure larger sizes")
    return float(alpha), float(beta)


@dataclass
class TimeCost(CostModel):
    """Predicted seconds: ``Σ latency[c] + sent·seconds_per_byte[c]`` over :func:`option_collectives`, + codec.

    ``latency`` and ``seconds_per_byte`` map ``"allreduce"``, ``"allgather"``
    and optionally ``"alltoall"`` and ``"ordered"`` (a whole split ordered
    all-reduce as the torch driver runs it) to the fitted ``α`` (seconds per
    collective) and ``β`` (seconds per byte sent by one rank); see
    :meth:`fit` for the fallbacks. ``codec`` maps an option's text form to ``(encode, decode)``
    seconds per element; decoding an all-gather is paid once per rank's payload
    (``n`` times). Options missing from ``codec`` have no codec time. The
    defaults (50 µs per collective, 1.25 GB/s: a 10 Gb/s link) are placeholders
    for :func:`calibrate`. ``native_dense``: the exchange runs with
    :attr:`ExchangeConfig.native_dense <commlib.comm.exchange.ExchangeConfig>`, so its dense
    tensors and ``fp32`` layers take one native all-reduce, priced as such (else as the
    rank-ordered all-reduce, which costs more on large payloads).
    """

    latency: dict[str, float] = field(default_factory=lambda: {"allreduce": 5e-5, "allgather": 5e-5})
    seconds_per_byte: dict[str, float] = field(default_factory=lambda: {"allreduce": 8e-10, "allgather": 8e-10})
    codec: dict[str, tuple[float, float]] = field(default_factory=dict)
    native_dense: bool = False
    local_scale: float = 1.0
    unit = "seconds"

    def __post_init__(self) -> None:
        for name, table in (("latency", self.latency), ("seconds_per_byte", self.seconds_per_byte)):
            if not set(_KINDS) <= set(table) <= set(_ALL_KINDS):
                raise ValueError(f"TimeCost {name} needs the keys {_KINDS} (optionally 'alltoall', 'ordered'), "
                                 f"got {sorted(table)}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in table.values()):
                raise ValueError(f"TimeCost {name} values must be finite and >= 0, got {table}")
        for key, pair in self.codec.items():
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"TimeCost codec[{key!r}] must be (encode, decode) seconds per element, got {pair!r}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in pair):
                raise ValueError(f"TimeCost codec[{key!r}] must hold finite non-negative numbers, got {pair!r}")
        scale = self.local_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"TimeCost local_scale must be a finite number > 0, got {scale!r}")

    def cost(self, option: Option, shape: Sequence[int], world_size: int) -> float:
        if self.native_dense and option.family == "fp32":
            collectives = [("allreduce", traffic_factor("allreduce", world_size) * option.wire_bytes(shape))]
        else:
            collectives = option_collectives(option, shape, world_size)
        wire = sum(self.seconds(kind, sent) for kind, sent in collectives)
        return wire + self.codec_cost(option, math.prod(shape), world_size)

    def fit(self, kind: WireKind) -> tuple[float, float]:
        """``(α, β)`` of ``kind``, with fallbacks for the optional kinds.

        An all-to-all without its own fit takes the all-gather's. A split ordered all-reduce
        without its own fit is an all-to-all plus an all-gather, each carrying half its bytes:
        ``(α_a2a + α_ag, (β_a2a + β_ag)/2)``.
        """
        if kind in self.latency:
            return self.latency[kind], self.seconds_per_byte[kind]
        if kind == "ordered":
            (a1, b1), (a2, b2) = self.fit("alltoall"), self.fit("allgather")
            return a1 + a2, (b1 + b2) / 2
        return self.latency["allgather"], self.seconds_per_byte["allgather"]

    def seconds(self, kind: WireKind, sent_bytes: float) -> float:
        """One collective of ``kind`` in which each rank sends ``sent_bytes``: ``α + β·sent``."""
        alpha, beta = self.fit(kind)
        return alpha + beta * sent_bytes

    def codec_cost(self, option: Option, numel: int, world_size: int) -> float:
        """Local seconds of one tensor: ``local_scale·numel·(encode + decodes·decode)``; an all-gather decodes
        ``n`` payloads."""
        encode, decode = self.codec.get(str(option), (0.0, 0.0))
        decodes = world_size if option.collective == "allgather" else 1
        return self.local_scale * numel * (encode + decodes * decode)

    def rescale_local(self, measured_s: float, predicted_s: float, momentum: float = 0.1) -> None:
        """Correct the local (codec) seconds toward measured ones: ``local_scale ← local_scale·(1 + momentum·(
        measured_s/predicted_s − 1))``.

        ``measured_s``: an exchange's own work as timed (its seconds less its collective rounds'),
        summed over the timed buckets; ``predicted_s``: what this model predicts for the same
        buckets (:func:`exchange_local_seconds_model`, at the current scale). The codec tables are
        timed apart from training (a world of one, fixed shapes); the runtime's own work also
        holds the driver's ordered sums, Python, and the other ranks on the same cores. Zero or
        non-finite seconds carry nothing: nothing changes.
        """
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        if not (math.isfinite(measured_s) and math.isfinite(predicted_s) and measured_s > 0 and predicted_s > 0):
            return
        self.local_scale = float(self.local_scale * (1.0 + momentum * (measured_s / predicted_s - 1.0)))

    def round_seconds(self, collectives: Sequence[tuple[WireKind, int]], world_size: int) -> float:
        """Predicted seconds of a round of ``(kind, payload_bytes)`` collectives: the sum of their :meth:`seconds`."""
        return sum(self.seconds(kind, traffic_factor(kind, world_size) * payload) for kind, payload in collectives)

    def refit(self, rounds: Sequence[RoundTiming], momentum: float = 0.1) -> None:
        """Fit ``α`` and ``β`` of the collectives in ``rounds`` to the rounds' seconds, all at once, then blend
        them in: ``θ ← θ + momentum·(θ_fit − θ)``.

        An exchange times a round, not its collectives, so the fit is joint:

        1. unknowns: ``α_k`` and ``β_k`` of every kind ``k`` in the rounds (a kind without its own
           fit starts from :meth:`fit`'s fallback);
        2. each round ``r`` predicts ``Σ α_k + β_k·traffic`` over its collectives (the sum of
           :meth:`round_seconds`), and its residual is taken relative to its seconds (timings span
           orders of magnitude with roughly constant relative noise, as in :func:`fit_linear`);
        3. least squares with ``θ ≥ 0``, as near the current model as the rounds allow
           (:func:`_nonnegative_nearest_fit`): what the rounds determine is fitted, what they
           cannot tell apart (``α`` and ``β`` of a kind seen at one size) keeps its current
           split. A handful of unknowns; the same bits on every rank for the same rounds.

        Rounds without collectives, with zero seconds or in a world of one carry no information
        and are skipped; no such round: nothing changes.
        """
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        if not all(isinstance(r, RoundTiming) for r in rounds):
            raise TypeError("TimeCost.refit takes a sequence of RoundTiming")
        used = [r for r in rounds if r.collectives and r.seconds > 0 and r.world_size > 1]
        if not used:
            return
        kinds = [k for k in _ALL_KINDS if any(kind == k for r in used for kind, _ in r.collectives)]
        current = {k: self.fit(k) for k in kinds}
        design = np.zeros((len(used), 2 * len(kinds)))
        for row, r in enumerate(used):
            for kind, payload in r.collectives:
                col = 2 * kinds.index(kind)
                design[row, col] += 1.0
                design[row, col + 1] += traffic_factor(kind, r.world_size) * payload
            design[row] /= r.seconds
        prior = np.array([v for k in kinds for v in current[k]])
        floor = np.tile([1e-7, 1e-13], len(kinds))  # seconds, seconds per byte: units for a zero prior
        fitted = _nonnegative_nearest_fit(design, np.ones(len(used)), prior, floor)
        for i, kind in enumerate(kinds):
            alpha, beta = current[kind]
            self.latency[kind] = float(alpha + momentum * (fitted[2 * i] - alpha))
            self.seconds_per_byte[kind] = float(beta + momentum * (fitted[2 * i + 1] - beta))

    def state_dict(self) -> dict[str, object]:
        return {
            "latency": dict(self.latency),
            "seconds_per_byte": dict(self.seconds_per_byte),
            "codec": {k: list(v) for k, v in self.codec.items()},
            "native_dense": self.native_dense,
            "local_scale": self.local_scale,
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        loaded = TimeCost(
            latency=dict(state["latency"]),
            seconds_per_byte=dict(state["seconds_per_byte"]),
            codec={k: tuple(v) for k, v in dict(state["codec"]).items()},
            local_scale=state.get("local_scale", 1.0),  # absent from states saved before it existed
        )
        self.latency, self.seconds_per_byte, self.codec = loaded.latency, loaded.seconds_per_byte, loaded.codec
        self.local_scale = loaded.local_scale
        self.native_dense = bool(state.get("native_dense", False))  # absent from states saved before it existed


def _nonnegative_nearest_fit(a: np.ndarray, y: np.ndarray, prior: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Least-squares ``a·x ≈ y`` with ``x ≥ 0``, as near ``prior`` as the data leave it free to be.

    1. Work in units of each unknown's prior value (``max(prior, floor)``): column ``j`` becomes
       what the prior's ``x_j`` contributes to each row.
    2. ``x = prior + δ`` with ``δ`` the minimum-norm least-squares solution of
       ``a·δ = y − a·prior`` (SVD; singular values below 10⁻⁶ of the largest dropped): the data
       fix every direction they determine, however far from the prior, and a direction they
       cannot tell apart (columns in proportion: ``α`` and ``β`` of a collective seen at one
       size) keeps the prior, the change shared in proportion to the squares of the prior's
       contributions — so a latency-bound round corrects the latency, not the per-byte cost.
    3. A coordinate that comes out negative is pinned at 0 (the most negative first) and the
       rest refit, until none is.
    """
    units = np.maximum(prior, floor)
    scaled, start = a * units, prior / units
    free = np.ones(a.shape[1], dtype=bool)
    while True:  # each pass pins one more coordinate, so at most one pass per unknown
        x = np.zeros(a.shape[1])
        cols = scaled[:, free]
        x[free] = start[free] + np.linalg.lstsq(cols, y - cols @ start[free], rcond=1e-6)[0]
        if not (x[free] < 0).any():
            return x * units
        free[np.flatnonzero(free)[np.argmin(x[free])]] = False


def cost_table(
    shapes: Sequence[Sequence[int]], options: Sequence[Option], model: CostModel, world_size: int
) -> np.ndarray:
    """The ``(layers, options)`` float64 cost table; ``inf`` where an option does not apply to a layer."""
    table = np.full((len(shapes), len(options)), np.inf)
    for row, shape in enumerate(shapes):
        for col, opt in enumerate(options):
            if opt.applicable(shape):
                table[row, col] = model.cost(opt, shape, world_size)
    return table


def collective_seconds(model: TimeCost, kind: CollectiveKind, payload_bytes: int, world_size: int,
                       ordered: bool = False) -> float:
    """Seconds of one collective of ``payload_bytes`` as the torch driver issues it.

    Native all-reduce and all-gather: ``α[kind] + traffic_factor(kind, n)·payload·β[kind]``.
    ``ordered=True`` (an ``AllReduce(ordered=True)``): the sum over :func:`ordered_collectives`.
    """
    if not ordered:
        return model.seconds(kind, traffic_factor(kind, world_size) * payload_bytes)
    return sum(model.seconds(k, sent) for k, sent in ordered_collectives(payload_bytes, world_size))


def exchange_seconds(
    model: TimeCost, layers: Sequence[tuple[Sequence[int], Option]], world_size: int, dense_numel: int = 0
) -> float:
    """Predicted seconds of one fused bucket exchange of commlib's ``GradientExchange`` (not per layer).

    The exchange fuses each round's requests by kind (:func:`commlib.comm.merge.fuse_round`), so a
    bucket pays latency per *fused collective*, not per layer:

    1. round one: one rank-ordered fp32 all-reduce of the dense tensors (``dense_numel`` elements
       plus ``fp32`` layers), the one-element non-finite flag and every PowerSGD ``P``
       (``4·n·r`` bytes) — with ``model.native_dense``, the dense part and the flag are one
       native all-reduce instead, and the ``P`` one ordered all-reduce —; one all-gather of
       every top-k / QSGD payload (each padded to 8 bytes); one native all-reduce per cast
       dtype (fp16, bf16);
    2. round two, if any layer uses PowerSGD: one ordered all-reduce of every ``Q`` (``4·m·r`` bytes);
    3. each collective costs :func:`collective_seconds` — an ordered one is an all-gather below
       ``SPLIT_MIN_BYTES`` and an all-to-all plus an all-gather (two latencies, ring traffic) from
       there on, decided on the *fused* payload; codec times (``model.codec``) are added per layer
       as in :meth:`TimeCost.cost`, and the dense tensors (``dense_numel``, the flag) pay the
       ``fp32`` entry (:func:`exchange_local_seconds` of the dense path).
    """
    _check_world(world_size)
    dense = 4 * (dense_numel + 1)
    ordered = {"round1": 0 if model.native_dense else dense, "round2": 0}
    gathered = 0
    casts: dict[str, int] = {"fp32": dense} if model.native_dense else {}
    for shape, option in layers:
        if option.family == "fp32" and model.native_dense:
            casts["fp32"] += option.wire_bytes(shape)
        elif option.family == "fp32":
            ordered["round1"] += option.wire_bytes(shape)
        elif option.family == "powersgd":
            p_bytes, q_bytes = _ordered_payloads(option, shape)
            ordered["round1"] += p_bytes
            ordered["round2"] += q_bytes
        elif option.is_cast:
            casts[option.family] = casts.get(option.family, 0) + option.wire_bytes(shape)
        else:
            gathered += -(-option.wire_bytes(shape) // 8) * 8
    total = sum(collective_seconds(model, "allgather", p, world_size, ordered=True) for p in ordered.values() if p)
    total += collective_seconds(model, "allgather", gathered, world_size) if gathered else 0.0
    total += sum(collective_seconds(model, "allreduce", p, world_size) for p in casts.values())
    return total + exchange_local_seconds_model(model, layers, world_size, dense_numel)


def exchange_local_seconds_model(
    model: TimeCost, layers: Sequence[tuple[Sequence[int], Option]], world_size: int, dense_numel: int = 0
) -> float:
    """The local part of :func:`exchange_seconds`: every layer's codec seconds, plus the dense tensors'
    (``dense_numel`` elements and the non-finite flag) at the ``fp32`` entry."""
    _check_world(world_size)
    local = model.codec_cost(Option("fp32"), dense_numel + 1, world_size)
    return local + sum(model.codec_cost(option, math.prod(shape), world_size) for shape, option in layers)
