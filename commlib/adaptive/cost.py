"""Cost models: what one layer's exchange costs under an option — in elements, bytes or seconds.

L-GreCo (Markov et al., MLSys 2024) minimizes the summed cost of the chosen
options. The public implementation counts *elements* (``(n + m)·r`` for a
rank-``r`` PowerSGD factor pair); its authors suggest *time* instead. Three
models, all built on :meth:`Option.wire_bytes` (the compressor's own
``wire_bytes``, never a re-derived formula):

* :class:`ElementCost` — 32-bit words of payload per rank (the paper's measure:
  ``(n + m)·r`` for PowerSGD, and the same count of 4-byte words for the others).
* :class:`ByteCost` — bytes each rank sends through the collective commlib
  issues: a ring all-reduce of a ``P``-byte payload sends ``2(n−1)/n·P`` (flat in
  the world size ``n``), an all-gather sends ``(n−1)·P`` (growing with ``n``).
  PowerSGD's rank-ordered all-reduce is run by commlib's drivers as an
  all-gather plus a local sum (bitwise reproducibility), so it is charged as one.
* :class:`TimeCost` — ``latency·messages + wire bytes / bandwidth + codec time``
  per collective kind, with latency and bandwidth fitted by :func:`calibrate`
  on the real process group (least squares of ``α + β·wire_bytes``), refined
  online by :meth:`TimeCost.update` (exponential moving average), and codec
  times from :func:`measure_codec_times`.

Caveats of a per-layer (separable) model, which the dynamic program needs:
the exchange fuses all tensors of a bucket into one collective per round, so
the latency term is an upper bound; overlap with the backward pass is ignored.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..compress import PowerSGD
from .options import CollectiveKind, Option

__all__ = [
    "ByteCost",
    "CostModel",
    "ElementCost",
    "TimeCost",
    "Timing",
    "calibrate",
    "cost_table",
    "exchange_seconds",
    "fit_linear",
    "measure_codec_times",
    "traffic_factor",
    "wire_collective",
]

_KINDS: tuple[CollectiveKind, ...] = ("allreduce", "allgather")


def _check_world(world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")


def traffic_factor(collective: CollectiveKind, world_size: int) -> float:
    """Bytes each rank sends per payload byte: ring all-reduce ``2(n−1)/n``, all-gather ``n−1``."""
    _check_world(world_size)
    if collective == "allreduce":
        return 2.0 * (world_size - 1) / world_size
    if collective == "allgather":
        return float(world_size - 1)
    raise ValueError(f"unknown collective {collective!r}; expected one of {_KINDS}")


def wire_collective(option: Option) -> CollectiveKind:
    """The collective priced for ``option``'s payload: ordered all-reduces as all-gathers.

    The torch driver runs ordered all-reduces under ``SPLIT_MIN_BYTES`` (64 KiB)
    as all-gathers and larger ones with a ring's traffic, so this over-prices the
    large ones (the MPI driver and the simulator gather them all).
    """
    return "allgather" if option.collective == "allgather" or option.ordered else "allreduce"


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
    """Bytes each rank sends: ``traffic_factor(wire collective, n) · wire_bytes``."""

    unit = "bytes"

    def cost(self, option: Option, shape: Sequence[int], world_size: int) -> float:
        return traffic_factor(wire_collective(option), world_size) * option.wire_bytes(shape)


@dataclass(frozen=True)
class Timing:
    """One measured collective: ``seconds`` for a ``payload_bytes`` payload among ``world_size`` ranks."""

    collective: CollectiveKind
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
    """Predicted seconds: ``rounds·latency[c] + traffic_factor(c, n)·wire_bytes·seconds_per_byte[c] + codec``.

    ``c`` is the collective carrying the payload (:func:`wire_collective`).
    ``latency`` and ``seconds_per_byte`` map ``"allreduce"`` / ``"allgather"`` to
    the fitted ``α`` (seconds per collective) and ``β`` (seconds per byte sent
    by one rank). ``codec`` maps an option's text form to ``(encode, decode)``
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
            if set(table) != set(_KINDS):
                raise ValueError(f"TimeCost {name} needs exactly the keys {_KINDS}, got {sorted(table)}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in table.values()):
                raise ValueError(f"TimeCost {name} values must be finite and >= 0, got {table}")
        for key, pair in self.codec.items():
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"TimeCost codec[{key!r}] must be (encode, decode) seconds per element, got {pair!r}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in pair):
                raise ValueError(f"TimeCost codec[{key!r}] must hold finite non-negative numbers, got {pair!r}")

    def cost(self, option: Option, shape: Sequence[int], world_size: int) -> float:
        kind = wire_collective(option)
        wire = traffic_factor(kind, world_size) * option.wire_bytes(shape)
        encode, decode = self.codec.get(str(option), (0.0, 0.0))
        decodes = world_size if option.collective == "allgather" else 1
        codec = math.prod(shape) * (encode + decodes * decode)
        return option.rounds * self.latency[kind] + wire * self.seconds_per_byte[kind] + codec

    def update(self, measured: Sequence[Timing], momentum: float = 0.1) -> None:
        """Blend fits of new timings into the model: ``θ ← (1 − momentum)·θ + momentum·θ_new`` per collective.

        With two or more distinct sizes for a collective, both ``α`` and ``β``
        are refit (:func:`fit_linear`); with one size, ``α`` is kept and
        ``β_new = max(t − α, 0) / wire_bytes`` (mean over the samples).
        """
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        for kind in _KINDS:
            samples = [m for m in measured if m.collective == kind and m.wire_bytes > 0]
            if not samples:
                continue
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


def exchange_seconds(
    model: TimeCost, layers: Sequence[tuple[Sequence[int], Option]], world_size: int, dense_numel: int = 0
) -> float:
    """Predicted seconds of one fused bucket exchange of commlib's ``GradientExchange`` (not per layer).

    The exchange fuses each round's requests by kind (:func:`commlib.comm.merge.fuse_round`), so a
    bucket pays one latency per *fused collective*, not per layer:

    1. round one: one rank-ordered fp32 all-reduce, run as an all-gather, of the dense tensors
       (``dense_numel`` elements plus ``fp32`` layers), the one-element non-finite flag and every
       PowerSGD ``P`` (``4·n·r`` bytes); one all-gather of every top-k / QSGD payload; one native
       all-reduce per cast dtype (fp16, bf16);
    2. round two, if any layer uses PowerSGD: one ordered all-reduce (an all-gather) of every ``Q``
       (``4·m·r`` bytes);
    3. each collective costs ``latency[c] + traffic_factor(c, n)·payload·seconds_per_byte[c]``;
       codec times (``model.codec``) are added per layer as in :meth:`TimeCost.cost`.
    """
    _check_world(world_size)
    gathered = {"reduce1": 4 * (dense_numel + 1), "gather": 0, "reduce2": 0}
    casts: dict[str, int] = {}
    codec = 0.0
    for shape, option in layers:
        numel = math.prod(shape)
        if option.family == "fp32":
            gathered["reduce1"] += 4 * numel
            continue
        wire = option.wire_bytes(shape)
        if option.family == "powersgd":
            rows, cols = PowerSGD.matrix_shape(torch.Size(shape))
            rank = PowerSGD(rank=int(option.param[0])).effective_rank(torch.Size(shape))
            gathered["reduce1"] += 4 * rows * rank
            gathered["reduce2"] += 4 * cols * rank
        elif option.is_cast:
            casts[option.family] = casts.get(option.family, 0) + wire
        else:
            gathered["gather"] += wire
        encode, decode = model.codec.get(str(option), (0.0, 0.0))
        codec += numel * (encode + (world_size if option.collective == "allgather" else 1) * decode)

    def collective(kind: CollectiveKind, payload: int) -> float:
        sent = traffic_factor(kind, world_size) * payload
        return model.latency[kind] + sent * model.seconds_per_byte[kind]

    total = sum(collective("allgather", payload) for payload in gathered.values() if payload)
    return total + sum(collective("allreduce", payload) for payload in casts.values()) + codec


def _time_collective(kind: CollectiveKind, payload_bytes: int, group, repeats: int, device: torch.device) -> float:
    """Median seconds of ``repeats`` runs of one collective on ``group`` (after one untimed warm-up)."""
    import torch.distributed as dist

    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
    world = dist.get_world_size(group)
    numel = max(1, payload_bytes // 4)
    src = torch.ones(numel, device=device)
    out = torch.empty(world * numel, device=device)
    runs = []
    for i in range(repeats + 1):
        dist.barrier(group=group)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        if kind == "allreduce":
            dist.all_reduce(src, group=group)
        else:
            all_gather(out, src, group=group)
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
    """Fit a :class:`TimeCost` by timing all-reduce and all-gather of ``sizes`` bytes on ``group``.

    Steps: for each collective and payload size, the median of ``repeats``
    timed runs (fp32 payloads, on the current CUDA device for NCCL groups, a
    barrier before each); the timings are
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
    times = torch.tensor(
        [_time_collective(kind, size, group, repeats, device) for kind in _KINDS for size in sizes],
        dtype=torch.float64,
        device=device,
    )
    dist.all_reduce(times, op=dist.ReduceOp.MAX, group=group)
    times = times.cpu()
    model = TimeCost(codec=dict(codec or {}))
    for i, kind in enumerate(_KINDS):
        secs = times[i * len(sizes) : (i + 1) * len(sizes)].tolist()
        wires = [traffic_factor(kind, world) * 4 * max(1, s // 4) for s in sizes]
        model.latency[kind], model.seconds_per_byte[kind] = fit_linear(wires, secs)
    return model


def measure_codec_times(
    options: Sequence[Option], shape: Sequence[int] = (1024, 1024), repeats: int = 3, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """``{str(option): (encode, decode)}`` seconds per element, timed on one Gaussian tensor of ``shape``.

    Gather compressors (top-k, QSGD) time ``encode`` and one ``decode_add``
    separately (the best of ``repeats``); the others (casts, PowerSGD) run their
    whole exchange on one in-process worker and count it as encoding.
    """
    from ..comm.local import run_lockstep
    from ..compress import GatherCompressor, TensorContext

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    ctx = TensorContext(key="codec", step=0, seed=seed, rank=0, world_size=1)
    table: dict[str, tuple[float, float]] = {}
    for opt in options:
        if not opt.applicable(x.shape):
            raise ValueError(f"option {opt} does not apply to the timing shape {tuple(shape)}")
        comp = opt.build()
        enc = dec = math.inf
        for _ in range(repeats):
            if isinstance(comp, GatherCompressor):
                start = time.perf_counter()
                payload = comp.encode(x, ctx)
                mid = time.perf_counter()
                comp.decode_add(payload, torch.zeros(x.numel()), ctx)
                enc, dec = min(enc, mid - start), min(dec, time.perf_counter() - mid)
            else:
                start = time.perf_counter()
                run_lockstep([comp.exchange(x, ctx)])
                enc, dec = min(enc, time.perf_counter() - start), 0.0
        table[str(opt)] = (enc / x.numel(), dec / x.numel())
    return table
