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
  all-reduce) by :func:`calibrate` on the real process group (least squares of
  ``α + β·bytes sent``), refined online by :meth:`TimeCost.update` (exponential
  moving average), and local times from :func:`measure_codec_times` — the real
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
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..comm.torch_driver import SPLIT_MIN_BYTES
from ..compress import GatherCompressor, PowerSGD, TensorContext
from ..compress.base import Compressor
from .options import CollectiveKind, Option

__all__ = [
    "ByteCost",
    "CostModel",
    "ElementCost",
    "TimeCost",
    "Timing",
    "calibrate",
    "codec_seconds",
    "collective_seconds",
    "cost_table",
    "exchange_local_seconds",
    "exchange_seconds",
    "fit_linear",
    "half_reduce_seconds",
    "measure_codec_times",
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


@dataclass(frozen=True)
class Timing:
    """One measured collective: ``seconds`` for a ``payload_bytes`` payload among ``world_size`` ranks."""

    collective: WireKind
    payload_bytes: int
    world_size: int
    seconds: float

    @property
    def wire_bytes(self) -> float:
        return traffic_factor(self.collective, self.world_size) * self.payload_bytes


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
    for :func:`calibrate`.
    """

    latency: dict[str, float] = field(default_factory=lambda: {"allreduce": 5e-5, "allgather": 5e-5})
    seconds_per_byte: dict[str, float] = field(default_factory=lambda: {"allreduce": 8e-10, "allgather": 8e-10})
    codec: dict[str, tuple[float, float]] = field(default_factory=dict)
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

    def cost(self, option: Option, shape: Sequence[int], world_size: int) -> float:
        wire = sum(self.seconds(kind, sent) for kind, sent in option_collectives(option, shape, world_size))
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
        """Codec seconds of one tensor: ``numel·(encode + decodes·decode)``; an all-gather decodes ``n`` payloads."""
        encode, decode = self.codec.get(str(option), (0.0, 0.0))
        decodes = world_size if option.collective == "allgather" else 1
        return numel * (encode + decodes * decode)

    def update(self, measured: Sequence[Timing], momentum: float = 0.1) -> None:
        """Blend fits of new timings into the model: ``θ ← (1 − momentum)·θ + momentum·θ_new`` per collective.

        With two or more distinct sizes for a collective, both ``α`` and ``β``
        are refit (:func:`fit_linear`); with one size, ``α`` is kept and
        ``β_new = max(t − α, 0) / wire_bytes`` (mean over the samples).
        """
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        for kind in _ALL_KINDS:
            samples = [m for m in measured if m.collective == kind and m.wire_bytes > 0]
            if not samples:
                continue
            if kind not in self.latency:  # a first all-to-all fit starts from the all-gather's
                self.latency[kind], self.seconds_per_byte[kind] = self.fit(kind)
            wires = [m.wire_bytes for m in samples]
            secs = [m.seconds for m in samples]
            if len(set(wires)) >= 2:
                alpha, beta = fit_linear(wires, secs)
            else:
                alpha = self.latency[kind]
                beta = float(np.mean([max(t - alpha, 0.0) / w for t, w in zip(secs, wires)]))
            self.latency[kind] += momentum * (alpha - self.latency[kind])
            self.seconds_per_byte[kind] += momentum * (beta - self.seconds_per_byte[kind])

    def state_dict(self) -> dict[str, object]:
        return {
            "latency": dict(self.latency),
            "seconds_per_byte": dict(self.seconds_per_byte),
            "codec": {k: list(v) for k, v in self.codec.items()},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        loaded = TimeCost(
            latency=dict(state["latency"]),
            seconds_per_byte=dict(state["seconds_per_byte"]),
            codec={k: tuple(v) for k, v in dict(state["codec"]).items()},
        )
        self.latency, self.seconds_per_byte, self.codec = loaded.latency, loaded.seconds_per_byte, loaded.codec


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
       (``4·n·r`` bytes); one all-gather of every top-k / QSGD payload (each padded to 8 bytes);
       one native all-reduce per cast dtype (fp16, bf16);
    2. round two, if any layer uses PowerSGD: one ordered all-reduce of every ``Q`` (``4·m·r`` bytes);
    3. each collective costs :func:`collective_seconds` — an ordered one is an all-gather below
       ``SPLIT_MIN_BYTES`` and an all-to-all plus an all-gather (two latencies, ring traffic) from
       there on, decided on the *fused* payload; codec times (``model.codec``) are added per layer
       as in :meth:`TimeCost.cost`, and the dense tensors (``dense_numel``, the flag) pay the
       ``fp32`` entry (:func:`exchange_local_seconds` of the dense path).
    """
    _check_world(world_size)
    ordered = {"round1": 4 * (dense_numel + 1), "round2": 0}
    gathered = 0
    casts: dict[str, int] = {}
    codec = model.codec_cost(Option("fp32"), dense_numel + 1, world_size)
    for shape, option in layers:
        if option.family == "fp32":
            ordered["round1"] += option.wire_bytes(shape)
        elif option.family == "powersgd":
            p_bytes, q_bytes = _ordered_payloads(option, shape)
            ordered["round1"] += p_bytes
            ordered["round2"] += q_bytes
        elif option.is_cast:
            casts[option.family] = casts.get(option.family, 0) + option.wire_bytes(shape)
        else:
            gathered += -(-option.wire_bytes(shape) // 8) * 8
        codec += model.codec_cost(option, math.prod(shape), world_size)
    total = sum(collective_seconds(model, "allgather", p, world_size, ordered=True) for p in ordered.values() if p)
    total += collective_seconds(model, "allgather", gathered, world_size) if gathered else 0.0
    return total + sum(collective_seconds(model, "allreduce", p, world_size) for p in casts.values()) + codec


def _one_collective(request):
    """A protocol of one request (what the torch driver runs), returning its result."""
    return (yield request)


def _time_collective(kind: WireKind, payload_bytes: int, group, repeats: int, device: torch.device,
                     dtype: torch.dtype = torch.float32) -> float:
    """Median seconds of ``repeats`` runs of one collective on ``group`` (after one untimed warm-up).

    Issued as commlib's torch driver issues an exchange's collectives (asynchronously, finished in
    a completion callback), so the driver's per-collective overhead is part of the measured time.
    """
    import torch.distributed as dist

    from ..comm import torch_driver
    from ..comm.collectives import AllGather, AllReduce, AllToAll

    world = dist.get_world_size(group)
    numel = max(1, payload_bytes // dtype.itemsize)
    runs = []
    for i in range(repeats + 1):
        src = torch.ones(numel, device=device, dtype=dtype)  # a native all-reduce reduces in place: fresh each run
        if kind == "allreduce":
            request = AllReduce(src, ordered=False)
        elif kind == "allgather":
            request = AllGather(src)
        elif kind == "alltoall":  # rank r sends row j (payload/n bytes) to rank j
            request = AllToAll(torch.ones(world, -(-numel // world), device=device, dtype=dtype))
        else:  # "ordered": the driver splits it (sizes >= SPLIT_MIN_BYTES) into all-to-all, sum, all-gather
            request = AllReduce(src, ordered=True)
        dist.barrier(group=group)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch_driver.run(_one_collective(request), group)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            runs.append(time.perf_counter() - start)
    return float(np.median(runs))


def calibrate(
    group=None,
    sizes: Sequence[int] = (1 << 12, 1 << 16, 1 << 20, 1 << 22),
    repeats: int = 5,
    codec: Mapping[str, tuple[float, float]] | None = None,
) -> TimeCost:
    """Fit a :class:`TimeCost` by timing the collectives of ``sizes`` bytes on ``group`` (all four kinds).

    The kinds: native all-reduce, all-gather, all-to-all, and the ordered all-reduce as the
    torch driver splits it (timed only at sizes of at least ``SPLIT_MIN_BYTES``; below, it is an
    all-gather; with fewer than two such sizes it is not fitted and falls back, see
    :meth:`TimeCost.fit`).

    Steps: for each collective and payload size, the median of ``repeats``
    timed runs (fp32 payloads, on the current CUDA device for NCCL groups, a
    barrier before each, issued through commlib's torch driver); the timings are
    max-reduced over ranks so every rank fits the same model; then per
    collective :func:`fit_linear` of seconds against the bytes one rank sends
    (``traffic_factor · payload``). Needs an initialized process group of at
    least two ranks (all ranks must call it). ``codec``: optional
    :func:`measure_codec_times` table.
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("calibrate needs an initialized torch.distributed process group")
    world = dist.get_world_size(group)
    if world < 2:
        raise ValueError("calibrate needs a process group of at least 2 ranks (one rank sends nothing)")
    if len(set(sizes)) < 2 or min(sizes) < 4:
        raise ValueError(f"calibrate needs at least two distinct sizes of >= 4 bytes, got {list(sizes)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    nccl = dist.get_backend(group) == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    timed = [(kind, size) for kind in _ALL_KINDS for size in sorted(set(sizes))
             if kind != "ordered" or size >= SPLIT_MIN_BYTES]
    times = torch.tensor([_time_collective(kind, size, group, repeats, device) for kind, size in timed],
                         dtype=torch.float64, device=device)
    dist.all_reduce(times, op=dist.ReduceOp.MAX, group=group)
    model = TimeCost(codec=dict(codec or {}))
    for kind in _ALL_KINDS:
        points = [(traffic_factor(kind, world) * 4 * max(1, size // 4), float(t))
                  for (k, size), t in zip(timed, times.cpu().tolist()) if k == kind]
        if len(points) >= 2:
            model.latency[kind], model.seconds_per_byte[kind] = fit_linear(*zip(*points))
    return model


def _cast_codec(compressor: Compressor, x: torch.Tensor) -> tuple[float, float]:
    """A cast's own work: ``(x / n).to(wire dtype)`` then the sum back to fp32; the sum itself is the collective's."""
    start = time.perf_counter()
    payload = (x / 2).to(compressor.wire_dtype)
    mid = time.perf_counter()
    payload.to(torch.float32)
    return mid - start, time.perf_counter() - mid


def _codec_once(compressor: Compressor, x: torch.Tensor, ctx: TensorContext) -> tuple[float, float]:
    """Seconds of one encode and one decode of ``x`` (see :func:`codec_seconds`)."""
    from ..comm.local import run_lockstep

    if compressor.is_cast:
        return _cast_codec(compressor, x)
    if isinstance(compressor, GatherCompressor):
        start = time.perf_counter()
        payload = compressor.encode(x, ctx)
        out = torch.zeros(x.numel())  # decode_all allocates its output once per tensor: per-tensor work
        mid = time.perf_counter()
        compressor.decode_add(payload, out, ctx)
        return mid - start, time.perf_counter() - mid
    start = time.perf_counter()
    run_lockstep([compressor.exchange(x, ctx)])
    return time.perf_counter() - start, 0.0


def codec_seconds(
    compressor: Compressor, shape: Sequence[int] = (1024, 1024), repeats: int = 3, seed: int = 0, group=None
) -> tuple[float, float]:
    """``(encode, decode)`` seconds per element: the median of ``repeats`` on one Gaussian tensor of ``shape``.

    One untimed run first (the first touch of fresh allocations is slow).

    What is timed (no communication):

    * gather compressors (top-k, QSGD): ``encode`` plus the one allocation of
      the decoded output (per tensor), and one ``decode_add`` (an all-gather
      decodes ``n`` payloads: :meth:`TimeCost.codec_cost` multiplies);
    * casts (fp32, fp16, bf16): the cast to the wire dtype and back — the
      reduction belongs to the calibrated all-reduce, so it is not timed here;
    * the others (PowerSGD, sketches): their whole exchange on one in-process
      worker, counted as encoding (a world of one reduces nothing).

    With ``group`` (an initialized ``torch.distributed`` group; all its ranks
    must call), every rank times at the same moments — a barrier before each
    repeat — so the codec runs under the CPU contention of training, where
    all ranks encode at once (ranks sharing cores each run slower), and the
    result is the maximum over ranks of each rank's medians (every rank gets
    the same numbers).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    if not compressor.is_cast and not compressor.compressible(x.shape):
        raise ValueError(f"{type(compressor).__name__} cannot compress the timing shape {tuple(shape)}")
    ctx = TensorContext(key="codec", step=0, seed=seed, rank=0, world_size=1)
    _codec_once(compressor, x, ctx)  # untimed warm-up (first-touch allocations)
    runs = []
    for _ in range(repeats):
        if group is not None:
            import torch.distributed as dist

            dist.barrier(group=group)
        runs.append(_codec_once(compressor, x, ctx))
    return _median_max([r[0] for r in runs], x.numel(), group), _median_max([r[1] for r in runs], x.numel(), group)


def _median_max(runs: Sequence[float], numel: int, group) -> float:
    """Median of ``runs`` per element; with ``group``, the maximum over its ranks."""
    value = float(np.median(runs)) / numel
    if group is not None:
        import torch.distributed as dist

        worst = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
        value = float(worst)
    return value


def exchange_local_seconds(
    option: Option, shape: Sequence[int] = (1024, 1024), tensors: int = 3, repeats: int = 3, seed: int = 0, group=None
) -> float:
    """Seconds per element ``GradientExchange`` spends on its own work for tensors of ``shape`` under ``option``.

    Steps: build a bucket of ``tensors`` Gaussian tensors of ``shape`` (several,
    so the working set and the fusion of their protocols are as in a real
    bucket); run it through the real exchange on a world of one
    (:func:`~commlib.comm.local.run_lockstep`: no communication) — with
    ``option``'s compressor, every tensor compressed, or for ``fp32`` through
    the ordered dense all-reduce path a policy uses for its ``fp32`` layers
    (non-finite check, concatenation, ordered sum, division, split); time the
    median of ``repeats`` exchanges after one untimed (first-touch
    allocations). This is the exchange's code, so it counts what isolated
    codec timings miss (allocations, cache misses of a bucket, protocol
    bookkeeping). ``group``: every rank times at once, max over ranks (see
    :func:`codec_seconds`).
    """
    from ..comm.exchange import ExchangeConfig, GradientExchange
    from ..comm.local import run_lockstep
    from ..compress import TopK

    if repeats < 1 or tensors < 1:
        raise ValueError(f"repeats and tensors must be >= 1, got {repeats!r} and {tensors!r}")
    if not option.applicable(shape):
        raise ValueError(f"option {option} does not apply to the timing shape {tuple(shape)}")
    dense = option.family == "fp32"
    config = ExchangeConfig(seed=seed, start_step=repeats + 2 if dense else 0, min_compression_rate=0.0)
    exchange = GradientExchange(TopK(density=0.5) if dense else option.build(), 0, 1, config)  # fp32: dense warm-up
    gen = torch.Generator().manual_seed(seed)
    named = [(f"t{i}", torch.randn(*shape, generator=gen)) for i in range(tensors)]
    runs = []
    for step in range(repeats + 1):
        if group is not None:
            import torch.distributed as dist

            dist.barrier(group=group)
        start = time.perf_counter()
        run_lockstep([exchange.protocol(named, step=step)])
        if step:
            runs.append(time.perf_counter() - start)
    return _median_max(runs, tensors * math.prod(shape), group)


def half_reduce_seconds(dtype: torch.dtype, numel: int, group, repeats: int = 3) -> float:
    """Seconds per element a native all-reduce of ``numel`` 16-bit elements takes beyond an fp32 one of equal bytes.

    :func:`calibrate` fits the all-reduce on fp32 payloads; a 16-bit one moves
    the same bytes per byte but sums in ``dtype`` (on gloo's CPU, slowly). The
    difference of the two medians (``numel`` in ``dtype`` against ``numel/2``
    in fp32, both through the torch driver on ``group``), max over ranks, at
    least 0.
    """
    import torch.distributed as dist

    nccl = dist.get_backend(group) == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    half = _time_collective("allreduce", 2 * numel, group, repeats, device, dtype)
    full = _time_collective("allreduce", 2 * numel, group, repeats, device)
    return max(_median_max([half - full], numel, group), 0.0)


def measure_codec_times(
    options: Sequence[Option], shape: Sequence[int] = (1024, 1024), repeats: int = 3, seed: int = 0, group=None
) -> dict[str, tuple[float, float]]:
    """``{str(option): (encode, decode)}`` seconds per element of each option's local work in a policy's exchange.

    * fp16, bf16: :func:`codec_seconds` (the cast and back); with ``group``, the decode also
      gets what the native all-reduce's 16-bit sum costs beyond an fp32 one of the same bytes
      (:func:`half_reduce_seconds`: gloo sums 16-bit floats on the CPU far more slowly);
    * fp32 (a policy sends its fp32 layers through the ordered dense all-reduce):
      :func:`exchange_local_seconds` of that path, as encoding;
    * the others: ``decode`` from :func:`codec_seconds` (one payload's ``decode_add``; an
      all-gather decodes ``n``), ``encode`` = :func:`exchange_local_seconds` − ``decode`` (a world
      of one decodes once), at least 0.

    ``group``: every rank times at once and max-reduces (see :func:`codec_seconds`), so the
    times carry the CPU contention of training and every rank gets the same table.
    """
    table: dict[str, tuple[float, float]] = {}
    for opt in options:
        if not opt.applicable(shape):
            raise ValueError(f"option {opt} does not apply to the timing shape {tuple(shape)}")
        if opt.family in ("fp16", "bf16"):
            encode, decode = codec_seconds(opt.build(), shape, repeats, seed, group)
            if group is not None:
                decode += half_reduce_seconds(opt.build().wire_dtype, math.prod(shape), group, repeats)
            table[str(opt)] = (encode, decode)
            continue
        local = exchange_local_seconds(opt, shape, repeats=repeats, seed=seed, group=group)
        decode = 0.0 if opt.family == "fp32" else codec_seconds(opt.build(), shape, repeats, seed, group)[1]
        table[str(opt)] = (max(local - decode, 0.0), decode)
    return table
