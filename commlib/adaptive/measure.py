"""Measurements on the real process group for the time cost model (:mod:`commlib.adaptive.cost`).

* :func:`calibrate` times each collective the torch driver issues (native
  all-reduce, all-gather, all-to-all, split ordered all-reduce) at a few
  payload sizes and fits ``α + β·bytes sent`` per collective into a
  :class:`~commlib.adaptive.cost.TimeCost`.
* :func:`codec_seconds`, :func:`exchange_local_seconds` and
  :func:`half_reduce_seconds` time an option's local work — encode and decode,
  or the real exchange on a world of one — with every rank of the group timing
  at the same moments (so the figures carry the CPU contention of training)
  and every rank keeping the slowest rank's median; :func:`measure_codec_times`
  composes them into the table a ``TimeCost`` prices codec time from.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch

from ..comm.collectives import AllGather, AllReduce, Protocol, as_round
from ..comm.torch_driver import SPLIT_MIN_BYTES
from ..compress import GatherCompressor, TensorContext
from ..compress.base import Compressor
from ..feedback.base import ErrorFeedback
from .cost import _ALL_KINDS, _KINDS, TimeCost, WireKind, fit_linear, traffic_factor
from .options import Option

_log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["calibrate", "codec_seconds", "exchange_local_seconds", "half_reduce_seconds", "measure_codec_times"]

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
    from ..comm.collectives import AllToAll

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
    :meth:`TimeCost.fit`). An optional kind (all-to-all, ordered) whose timings do not grow
    with size — lost in the noise on a fast link — is left unfitted and falls back too. The
    all-reduce and the all-gather are required: when theirs do not grow, that collective is
    timed once more at 8× the largest size (up to twice; every rank decides alike from the
    max-reduced timings), and if it still does not fit, a ``ValueError`` names it.

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
    seconds = _max_over_group([_time_collective(kind, size, group, repeats, device) for kind, size in timed],
                              group, device)
    largest = max(sizes)
    for _ in range(_MORE_SIZES):  # a required fit lost in the noise: time it once more at 8× the largest size
        failed = [kind for kind in _KINDS if _fit(kind, timed, seconds, world)[1] is not None]
        if not failed:
            break
        largest *= 8
        _log.info("calibrate: %s did not grow with size; timing %d bytes too", failed, largest)
        timed += [(kind, largest) for kind in failed]
        seconds += _max_over_group([_time_collective(kind, largest, group, repeats, device) for kind in failed],
                                   group, device)
    model = TimeCost(codec=dict(codec or {}))
    for kind in _ALL_KINDS:
        fit, err = _fit(kind, timed, seconds, world)
        if fit is not None:
            model.latency[kind], model.seconds_per_byte[kind] = fit
        elif kind in _KINDS:
            raise ValueError(f"calibrate: the {kind} fit failed ({err})") from err
        elif err is not None:  # an optional kind lost in the noise on a fast link: priced by its fallback
            _log.info("calibrate: no %s fit (%s); it falls back to the other collectives' fits", kind, err)
    return model


_MORE_SIZES = 2  # extra sizes (each 8× the last) calibrate may time for a required collective


def _max_over_group(values: list[float], group, device: torch.device) -> list[float]:
    """``values`` max-reduced over ``group``'s ranks (every rank then fits, and retries, alike)."""
    import torch.distributed as dist

    times = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(times, op=dist.ReduceOp.MAX, group=group)
    return times.cpu().tolist()


def _fit(kind: WireKind, timed: Sequence[tuple[str, int]], seconds: Sequence[float],
         world: int) -> tuple[tuple[float, float] | None, ValueError | None]:
    """``((α, β), None)`` for ``kind``'s timings, ``(None, error)`` when they do not fit, ``(None, None)`` if < 2."""
    points = [(traffic_factor(kind, world) * 4 * max(1, size // 4), t)
              for (k, size), t in zip(timed, seconds) if k == kind]
    if len(points) < 2:
        return None, None
    try:
        return fit_linear(*zip(*points)), None
    except ValueError as err:
        return None, err


def _cast_codec(compressor: Compressor, x: torch.Tensor) -> tuple[float, float]:
    """A cast's own work: ``(x / n).to(wire dtype)`` then the sum back to fp32; the sum itself is the collective's."""
    start = time.perf_counter()
    payload = (x / 2).to(compressor.wire_dtype)
    mid = time.perf_counter()
    payload.to(torch.float32)
    return mid - start, time.perf_counter() - mid


def _codec_once(compressor: Compressor, x: torch.Tensor, ctx: TensorContext) -> tuple[float, float]:
    """Seconds of one encode and one decode of ``x`` (see :func:`codec_seconds`)."""
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
    _run_alone(compressor.exchange(x, ctx))
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


def _run_alone(protocol: Protocol[T]) -> T:
    """Drive one protocol on a world of one, each collective answered as a backend answers it there.

    A world-of-one all-reduce is its input (the native one reduces in place), an all-gather
    or all-to-all its input as one row, a broadcast its input: views, no copies, so a timed
    exchange counts only its own local work (the collectives' cost is the calibrated part of
    the model; :func:`~commlib.comm.local.run_lockstep` would add two copies per collective).
    """
    answer = None
    while True:
        try:
            request = protocol.send(answer)
        except StopIteration as stop:
            return stop.value
        results = tuple(r.tensor if isinstance(r, AllReduce) else
                        r.tensor.unsqueeze(0) if isinstance(r, AllGather) else r.tensor for r in as_round(request))
        answer = results if isinstance(request, tuple) else results[0]


def exchange_local_seconds(
    option: Option, shape: Sequence[int] = (1024, 1024), tensors: int = 3, repeats: int = 3, seed: int = 0, group=None,
    feedback: ErrorFeedback | None = None, native_dense: bool = False,
) -> float:
    """Seconds per element ``GradientExchange`` spends on its own work for tensors of ``shape`` under ``option``.

    Steps: build a bucket as DDP does, ``tensors`` Gaussian tensors of ``shape``
    as views of one flat buffer (several, so the working set and the fusion of
    their protocols are as in a real bucket); hand it over (``inplace=True``,
    as the DDP hook does, so results written into the bucket are timed as in
    training) to the real exchange on a world of one (no communication, its
    collectives answered without copies: :func:`_run_alone`) — with
    ``option``'s compressor, every tensor compressed, or for ``fp32`` through
    the dense path a policy uses for its ``fp32`` layers (ordered: non-finite
    check, concatenation, ordered sum, division, split; ``native_dense``: the
    bucket divided in place for one native all-reduce); refill the bucket from
    the same values before each run (untimed) and time the median of
    ``repeats`` exchanges after one untimed (first-touch allocations). This is
    the exchange's code, so it counts what isolated codec timings miss
    (allocations, cache misses of a bucket, protocol
    bookkeeping). ``group``: every rank times at once, max over ranks (see
    :func:`codec_seconds`). ``feedback``: the error feedback the policy runs under
    (a fresh copy wraps every compressed tensor, as in training: its ``message`` and
    ``commit`` passes are part of the option's local work; ``fp32`` layers skip it).
    ``native_dense``: time the exchange as configured so (``fp32``: the in-place native path).
    """
    from ..comm.exchange import ExchangeConfig, GradientExchange
    from ..compress import TopK

    if repeats < 1 or tensors < 1:
        raise ValueError(f"repeats and tensors must be >= 1, got {repeats!r} and {tensors!r}")
    if not option.applicable(shape):
        raise ValueError(f"option {option} does not apply to the timing shape {tuple(shape)}")
    dense = option.family == "fp32"
    config = ExchangeConfig(seed=seed, start_step=repeats + 2 if dense else 0, min_compression_rate=0.0,
                            native_dense=native_dense)
    wrapper = None if feedback is None or dense else copy.deepcopy(feedback)
    exchange = GradientExchange(TopK(density=0.5) if dense else option.build(), 0, 1, config,  # fp32: dense warm-up
                                feedback=wrapper)
    numel = math.prod(shape)
    values = torch.randn(tensors * numel, generator=torch.Generator().manual_seed(seed))
    bucket = torch.empty_like(values)
    named = [(f"t{i}", bucket[i * numel : (i + 1) * numel].view(*shape)) for i in range(tensors)]
    runs = []
    for step in range(repeats + 1):
        bucket.copy_(values)
        if group is not None:
            import torch.distributed as dist

            dist.barrier(group=group)
        start = time.perf_counter()
        _run_alone(exchange.protocol(named, step=step, inplace=True))
        if step:
            runs.append(time.perf_counter() - start)
    return _median_max(runs, tensors * numel, group)


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
    options: Sequence[Option], shape: Sequence[int] = (1024, 1024), repeats: int = 3, seed: int = 0, group=None,
    feedback: ErrorFeedback | None = None, native_dense: bool = False,
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
    ``feedback``: the policy's error feedback, timed with each compressed option's
    exchange (:func:`exchange_local_seconds`), so it lands in ``encode``; without it a
    policy under error feedback under-prices compression (EControl around top-k costs
    about as much as the top-k exchange itself on a CPU). ``native_dense``: the exchange's
    :attr:`~commlib.comm.exchange.ExchangeConfig.native_dense` (it changes the ``fp32`` path).
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
        local = exchange_local_seconds(opt, shape, repeats=repeats, seed=seed, group=group, feedback=feedback,
                                       native_dense=native_dense)
        decode = 0.0 if opt.family == "fp32" else codec_seconds(opt.build(), shape, repeats, seed, group)[1]
        table[str(opt)] = (max(local - decode, 0.0), decode)
    return table
