"""The compressor interface shared by every runtime.

A compressor turns one worker's gradient tensor into a protocol whose result
is the (approximate) mean of that tensor over all workers. Two families cover
the single-round methods:

- :class:`GatherCompressor` — encode to a fixed-size byte payload, all-gather,
  decode every rank's payload in rank order and average (top-k), and its
  :class:`ScaledCodesCompressor` form, per-group scales + packed codes (QSGD, sign);
- :class:`LinearCompressor` — encode to a fixed-size float payload whose sum is
  meaningful, ordered all-reduce, decode the sum (random-k, sketches).

Multi-round methods (PowerSGD) implement :meth:`Compressor.exchange` directly.

Rules every compressor follows:

* Payload sizes depend only on (shape, config): every rank issues the same collectives.
* Decoders validate what peers sent (length, index range, finiteness) and raise
  :class:`~commlib.errors.WireFormatError` before touching memory.
* Randomness comes from :func:`commlib.rng.generator` keyed by ``(seed, step, key)``.
* State is committed only after the last round, so an aborted exchange leaves it untouched.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from ..comm.collectives import AllGather, AllReduce, Protocol
from ..errors import WireFormatError
from .lazy_delta import LazyDelta

__all__ = [
    "WireBytes",
    "TensorContext",
    "Compressor",
    "GatherCompressor",
    "LinearCompressor",
    "ScaledCodesCompressor",
    "check_density",
    "check_finite",
    "handed_over",
]


@dataclass(frozen=True)
class WireBytes:
    """Bytes one rank puts on the wire for one tensor, by kind."""

    values: int = 0
    indices: int = 0
    scales: int = 0

    @property
    def total(self) -> int:
        return self.values + self.indices + self.scales

    def __add__(self, other: WireBytes) -> WireBytes:
        return WireBytes(self.values + other.values, self.indices + other.indices, self.scales + other.scales)


@dataclass(frozen=True)
class TensorContext:
    """What a compressor may know about the tensor it is exchanging."""

    key: str  # parameter name: state and randomness are keyed by it
    step: int
    seed: int
    rank: int
    world_size: int
    #: The input is handed over (the DDP hook's bucket, which DDP overwrites with the result anyway): the
    #: compressor may write its result into it, once it no longer reads it, saving an allocation and a copy.
    writable: bool = False


def handed_over(x: Tensor, ctx: TensorContext) -> Tensor | None:
    """``x`` itself when the compressor may write its float32 result into it (``ctx.writable``, and ``x`` is a
    contiguous float32 tensor), else ``None``: then the result goes into a new tensor."""
    return x if ctx.writable and x.dtype == torch.float32 and x.is_contiguous() else None


class Compressor(ABC):
    """Base class: a configuration plus, for stateful methods, per-tensor state keyed by name."""

    #: The short name used in configs, logs and the command line.
    name: str = "compressor"
    #: True for the dense casts (Identity, FP16, BF16): every tensor goes through them, in one native all-reduce.
    is_cast: bool = False
    #: True for privacy mechanisms (DPSketch): the exchange sends every tensor through the compressor (no dense
    #: warm-up, 1-D or small tensors) and never resends a bucket dense when a rank has NaN/Inf.
    private: bool = False

    def config(self) -> dict[str, object]:
        """Plain values that must agree across ranks (hashed into the config fingerprint)."""
        if dataclasses.is_dataclass(self):
            return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}
        return {"name": self.name}

    def compressible(self, shape: torch.Size) -> bool:
        """Whether this compressor can handle a tensor of ``shape`` (else it is sent dense)."""
        return len(shape) >= 1

    @abstractmethod
    def wire_bytes(self, shape: torch.Size) -> WireBytes:
        """Exact bytes this rank sends for a tensor of ``shape`` (values, indices, scales)."""

    @abstractmethod
    def exchange(self, x: Tensor, ctx: TensorContext) -> Protocol[Tensor]:
        """Protocol whose result estimates the mean of ``x`` over ranks (float32, ``x``'s shape)."""

    def exchange_local(self, x: Tensor, ctx: TensorContext, sparse: bool = False) -> Protocol[tuple[Tensor, Tensor]]:
        """Like :meth:`exchange`, but also returns this rank's own ``C(x)``: ``(mean, local)``.

        Error feedback needs both. Single-round compressors decode their own
        payload; methods without a local operator (PowerSGD) raise ``ValueError``.
        ``sparse=True`` says the caller (error feedback) takes deltas other than
        dense tensors: a compressor whose ``C(x)`` is mostly zeros (top-k) then
        returns ``mean`` and ``local`` as :class:`~commlib.compress.SparseDelta`
        (same values, no pass over the whole tensor); a linear one returns the
        mean, and a gather one its ``local``, as a :class:`~commlib.compress.LazyDelta`
        (decoded where it is consumed: into the output, or into the buffer being
        updated). Both are valid until the caller's next step of the protocol.
        """
        raise ValueError(f"{type(self).__name__} has no local compression operator C(x); error feedback needs one")
        yield  # pragma: no cover - makes this a generator

    def state_dict(self) -> dict[str, object]:
        """Tensors and plain values only (loadable with ``torch.load(weights_only=True)``)."""
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} is stateless but got state keys {sorted(state)}")


class GatherCompressor(Compressor):
    """Encode → all-gather the byte payloads → decode each in rank order → average."""

    @abstractmethod
    def payload_bytes(self, shape: torch.Size) -> int:
        """Length of the uint8 payload for a tensor of ``shape``."""

    @abstractmethod
    def encode(self, x: Tensor, ctx: TensorContext) -> Tensor:
        """``x`` (float32) → uint8 payload of exactly ``payload_bytes(x.shape)`` bytes."""

    @abstractmethod
    def decode_add(self, payload: Tensor, out: Tensor, ctx: TensorContext, subtract: bool = False) -> None:
        """Validate one rank's payload and add its decoded tensor to ``out`` (float32, flat).

        ``subtract``: ``out −=`` it instead, each element ``out − v`` (one rounding: the
        bits of subtracting the decoded tensor, up to the sign of a zero).
        """

    def wire_bytes(self, shape: torch.Size) -> WireBytes:
        return WireBytes(values=self.payload_bytes(shape))

    def _gather(self, x: Tensor, ctx: TensorContext) -> Protocol[Tensor]:
        """Encode ``x`` and all-gather the payloads: returns every rank's payload, one row each."""
        payload = self.encode(x, ctx)
        expected = self.payload_bytes(x.shape)
        if payload.dtype != torch.uint8 or payload.numel() != expected:
            raise AssertionError(f"{self.name} produced a {payload.numel()}-byte payload, expected {expected}")
        return (yield AllGather(payload))

    def exchange(self, x: Tensor, ctx: TensorContext) -> Protocol[Tensor]:
        parts = yield from self._gather(x, ctx)
        return self.decode_all(parts, x.shape, ctx, into=handed_over(x, ctx))

    def exchange_local(self, x: Tensor, ctx: TensorContext,
                       sparse: bool = False) -> Protocol[tuple[Tensor, Tensor | LazyDelta]]:
        """``(mean, local)``; with ``sparse``, ``local`` as a :class:`LazyDelta` that error feedback decodes
        straight into the buffer it updates (``e' = u − C(u)``, ``hᵢ += C(u)``)."""
        parts = yield from self._gather(x, ctx)
        mean = self.decode_all(parts, x.shape, ctx)
        return mean, self.decode_local(parts[ctx.rank], x.shape, ctx, sparse)  # as the others decoded it

    def decode_local(self, payload: Tensor, shape: torch.Size, ctx: TensorContext,
                     sparse: bool = False) -> Tensor | LazyDelta:
        """One payload decoded alone: ``C(x)`` (float32, ``shape``), dense; with ``sparse`` a :class:`LazyDelta`,
        decoded on use, for a payload already validated (:meth:`exchange_local` checks every row first, this
        rank's included)."""
        if sparse:
            return LazyDelta(lambda into: self._decode_one(payload, shape, ctx, into), shape,
                             lambda t, subtract: self.decode_add(payload, t, ctx, subtract))
        return self._decode_one(payload, shape, ctx, None).view(shape)

    def _decode_one(self, payload: Tensor, shape: torch.Size, ctx: TensorContext, into: Tensor | None) -> Tensor:
        out = torch.zeros(shape.numel(), dtype=torch.float32, device=payload.device) if into is None else into.zero_()
        self.decode_add(payload, out, ctx)
        return out

    def compress(self, x: Tensor, ctx: TensorContext) -> Tensor:
        """This rank's dense ``C(x)`` (float32, ``x``'s shape), bit-identical to its share of the exchange."""
        out = torch.zeros(x.numel(), dtype=torch.float32, device=x.device)
        self.decode_add(self.encode(x, ctx), out, ctx)
        return out.view(x.shape)

    def check_parts(self, parts: Tensor, shape: torch.Size) -> None:
        """Raise :class:`WireFormatError` unless ``parts`` holds one uint8 payload per row, each of the right size."""
        expected = self.payload_bytes(shape)
        if parts.dtype != torch.uint8 or parts.dim() != 2 or parts.shape[1] != expected:
            raise WireFormatError(
                f"{self.name}: expected uint8 payloads of {expected} bytes, got {parts.dtype} {tuple(parts.shape)}"
            )

    def decode_all(self, parts: Tensor, shape: torch.Size, ctx: TensorContext, into: Tensor | None = None) -> Tensor:
        """Average the decoded payloads of all ranks (rows of ``parts``), summed in rank order.

        ``into``: a handed-over contiguous float32 tensor of ``shape`` to zero and sum in (no new
        tensor); if a later row is malformed it is left holding a partial sum, and this raises.
        """
        self.check_parts(parts, shape)
        if into is None:
            out = torch.zeros(shape.numel(), dtype=torch.float32, device=parts.device)
        else:
            out = into.view(-1).zero_()
        for row in parts:
            self.decode_add(row, out, ctx)
        return out.div_(parts.shape[0]).view(shape)


class ScaledCodesCompressor(GatherCompressor):
    """A gather payload of one float32 scale per group of ``group_size`` elements, then packed ``code_bits`` codes.

    QSGD (codes = quantization levels) and Sign (1-bit codes) share this
    layout; the last group of a tensor may be shorter.
    """

    @property
    @abstractmethod
    def group_size(self) -> int:
        """Consecutive elements sharing one scale."""

    @property
    @abstractmethod
    def code_bits(self) -> int:
        """Bits per packed code (1, 2, 4 or 8)."""

    def num_groups(self, numel: int) -> int:
        return -(-numel // self.group_size)

    def compressible(self, shape: torch.Size) -> bool:
        return shape.numel() > 0

    def payload_bytes(self, shape: torch.Size) -> int:
        return self.wire_bytes(shape).total

    def wire_bytes(self, shape: torch.Size) -> WireBytes:
        numel = shape.numel()
        return WireBytes(values=ops.packed_length(numel, self.code_bits), scales=4 * self.num_groups(numel))

    def exchange_local(self, x: Tensor, ctx: TensorContext,
                       sparse: bool = False) -> Protocol[tuple[Tensor | LazyDelta, Tensor | LazyDelta]]:
        """``(mean, local)``; with ``sparse``, both as :class:`LazyDelta`, decoded where error feedback
        consumes them.

        Every row is validated first (:meth:`check_payload`, no decoding), so decoding cannot
        fail after the feedback state is updated. The mean decodes as :meth:`decode_all` (zero,
        add the rows in rank order, divide): EF14 writes it straight into its output, the DDP
        bucket, with no new tensor and no copy.
        """
        if not sparse:
            return (yield from super().exchange_local(x, ctx))
        parts = yield from self._gather(x, ctx)
        self.check_parts(parts, x.shape)
        for row in parts:
            self.check_payload(row, x.shape, ctx)
        mean = LazyDelta(lambda into: self.decode_all(parts, x.shape, ctx, into=into), x.shape)
        return mean, self.decode_local(parts[ctx.rank], x.shape, ctx, sparse=True)

    def check_payload(self, payload: Tensor, shape: torch.Size, ctx: TensorContext) -> None:
        """Raise :class:`WireFormatError` exactly when :meth:`decode_add` would refuse ``payload``, without
        decoding it. Here: its length and scales (:meth:`split_scaled`); every ``code_bits``-bit value is a
        code (a subclass with fewer codes checks them too)."""
        self.split_scaled(payload, shape, ctx)

    def groups(self, flat: Tensor) -> Tensor:
        """``flat`` zero-padded to whole groups, as a ``(num_groups, group_size)`` matrix."""
        pad = (-flat.numel()) % self.group_size
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        return flat.view(-1, self.group_size)

    def split_scaled(
        self, payload: Tensor, shape: torch.Size, ctx: TensorContext
    ) -> tuple[Tensor, Tensor]:
        """Validate a payload (its scales, then its packed codes); return ``(scales, packed codes)``.

        Checks the dtype and exact length, and that every scale is finite and
        non-negative (``WireFormatError`` otherwise). Scales are copied out, as a
        row of a gathered buffer need not be 4-byte aligned.
        """
        expected = self.payload_bytes(shape)
        n_scales = self.num_groups(shape.numel())
        if payload.dtype != torch.uint8 or payload.shape != (expected,):
            raise WireFormatError(
                f"{self.name}: expected a {expected}-byte uint8 payload, got {payload.dtype} of shape "
                f"{tuple(payload.shape)} ({ctx.key})"
            )
        scales = payload[: 4 * n_scales].clone().view(torch.float32)
        if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
            raise WireFormatError(f"{self.name}: scales must be finite and non-negative ({ctx.key})")
        return scales, payload[4 * n_scales :]


class LinearCompressor(Compressor):
    """Encode to a float payload whose sum over ranks decodes to the sum of the inputs; ordered all-reduce."""

    @abstractmethod
    def encode(self, x: Tensor, ctx: TensorContext) -> Tensor:
        """``x`` (float32) → float32 payload of a size fixed by (shape, config)."""

    @abstractmethod
    def decode(self, total: Tensor, shape: torch.Size, ctx: TensorContext, out: Tensor | None = None) -> Tensor:
        """The summed payload → estimate of the sum of the inputs (float32, ``shape``).

        ``out``: a flat contiguous float32 tensor of ``shape.numel()`` elements to
        write the estimate into (returned as a view of ``shape``), else a new tensor.
        The payload is validated before ``out`` is touched.
        """

    def _reduce(self, payload: Tensor, shape: torch.Size, ctx: TensorContext) -> Protocol[LazyDelta]:
        """Ordered all-reduce of ``payload``; validate the sum (its dtype, shape, finiteness) and return the mean
        (``shape``), decoded on use."""
        total = yield AllReduce(payload)
        if total.dtype != payload.dtype or total.shape != payload.shape:
            raise WireFormatError(f"{self.name}: expected a {payload.dtype} sum of shape {tuple(payload.shape)}, got "
                                  f"{total.dtype} {tuple(total.shape)}")
        check_finite(total, self.name)
        return LazyDelta(lambda into: self.decode(total, shape, ctx, out=into).reshape(-1).div_(ctx.world_size), shape)

    def exchange(self, x: Tensor, ctx: TensorContext) -> Protocol[Tensor]:
        payload = self.encode(x, ctx)  # x is read for the last time: a handed-over x receives the mean
        mean = yield from self._reduce(payload, x.shape, ctx)
        into = handed_over(x, ctx)
        return mean.to_dense() if into is None else mean.write_to(into)

    def exchange_local(self, x: Tensor, ctx: TensorContext,
                       sparse: bool = False) -> Protocol[tuple[Tensor | LazyDelta, Tensor]]:
        """``(mean, local)``; with ``sparse``, the mean as a :class:`LazyDelta` (decoded where it is consumed)."""
        payload = self.encode(x, ctx)
        local = self.decode(payload, x.shape, ctx)  # before the payload is handed over
        mean = yield from self._reduce(payload, x.shape, ctx)
        return (mean if sparse else mean.to_dense()), local


def check_density(density: object, owner: str) -> None:
    """Raise ``ValueError`` unless ``density`` is a real number in (0, 1] (booleans and NaN excluded)."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ValueError(f"{owner} density must be a number in (0, 1], got {density!r}")


def check_finite(t: Tensor, what: str) -> None:
    """Raise :class:`WireFormatError` if ``t`` (received from peers) holds NaN or Inf."""
    if not ops.all_finite(t):
        raise WireFormatError(f"{what}: received non-finite values from a peer")
