"""Compression options: one (family, parameter) pair per candidate setting of a layer.

L-GreCo (Markov et al., "L-GreCo: Layerwise-adaptive gradient compression for
efficient data-parallel deep learning", MLSys 2024) picks one option per layer.
An :class:`Option` names a real commlib compressor configuration, so every
number the policy uses comes from the compressor itself:

======== ======================== =================================================
family   parameter                compressor
======== ======================== =================================================
topk     ``(density,)``           :class:`~commlib.compress.TopK` ``(density)``
qsgd     ``(bits, bucket, norm)`` :class:`~commlib.compress.QSGD` ``(bits, bucket_size, norm)``
powersgd ``(rank,)``              :class:`~commlib.compress.PowerSGD` ``(rank)``
powersgd ``(rank, "ef")``         :class:`~commlib.compress.PowerSGD` ``(rank, error_feedback=True)``
fp16     ``()``                   :class:`~commlib.compress.FP16`
bf16     ``()``                   :class:`~commlib.compress.BF16`
fp32     ``()``                   :class:`~commlib.compress.Identity` (no compression)
======== ======================== =================================================

Families may be mixed freely per layer. The text form (``"topk:0.01"``,
``"qsgd:4x128"``, ``"qsgd:4x128:max"``, ``"powersgd:4"``, ``"powersgd:4:ef"``,
``"fp16"``) is what logs and checkpoints store; :meth:`Option.parse` reads it back.

PowerSGD's error feedback is its own (a commlib ``feedback=`` wrapper needs a
local ``C(x)``, which PowerSGD has not), so it is part of the option: a layer
moved between ``powersgd:r:ef`` ranks keeps its error buffer (and its ``Q``
columns); a layer moved to another family keeps the buffer pending, and it is
added back when the layer returns to PowerSGD with error feedback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..compress import BF16, FP16, QSGD, Compressor, Identity, PowerSGD, TopK

__all__ = ["FAMILIES", "CAST_FAMILIES", "CollectiveKind", "Option", "default_grid", "option_grid", "rank_range"]

FAMILIES = ("topk", "qsgd", "powersgd", "fp16", "bf16", "fp32")
CAST_FAMILIES = ("fp16", "bf16", "fp32")
CollectiveKind = Literal["allreduce", "allgather"]

_CASTS: dict[str, type[Compressor]] = {"fp16": FP16, "bf16": BF16, "fp32": Identity}


@dataclass(frozen=True)
class Option:
    """A compressor configuration: ``family`` (one of :data:`FAMILIES`) and its ``param`` tuple.

    Construction validates by building the compressor, so a bad parameter
    raises the compressor's own ``ValueError``. Use the class methods
    (:meth:`topk`, :meth:`qsgd`, …) or :meth:`parse` rather than the raw tuple.
    """

    family: str
    param: tuple[float | int | str, ...] = ()
    _probe: Compressor = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown compression family {self.family!r}; expected one of {FAMILIES}")
        if not isinstance(self.param, tuple):
            raise ValueError(f"Option param must be a tuple, got {type(self.param).__name__}")
        arity = {"topk": (1,), "qsgd": (3,), "powersgd": (1, 2)}.get(self.family, (0,))
        if len(self.param) not in arity:
            raise ValueError(f"{self.family} takes {' or '.join(map(str, arity))} parameter(s), got {self.param!r}")
        if self.family == "powersgd" and self.param[1:] not in ((), ("ef",)):
            raise ValueError(f"powersgd's second parameter can only be 'ef' (error feedback), got {self.param!r}")
        object.__setattr__(self, "_probe", self.build())  # validates; used only for stateless queries

    # -- constructors ---------------------------------------------------------------------------------

    @classmethod
    def topk(cls, density: float) -> Option:
        return cls("topk", (density,))

    @classmethod
    def qsgd(cls, bits: int, bucket_size: int = 128, norm: str = "l2") -> Option:
        return cls("qsgd", (bits, bucket_size, norm))

    @classmethod
    def powersgd(cls, rank: int, error_feedback: bool = False) -> Option:
        """PowerSGD of ``rank``; ``error_feedback=True`` is ``"powersgd:RANK:ef"`` (PowerSGD's own feedback)."""
        if not isinstance(error_feedback, bool):
            raise ValueError(f"powersgd error_feedback must be a bool, got {error_feedback!r}")
        return cls("powersgd", (rank, "ef") if error_feedback else (rank,))

    @classmethod
    def cast(cls, family: str) -> Option:
        """``"fp16"``, ``"bf16"`` or ``"fp32"``."""
        if family not in CAST_FAMILIES:
            raise ValueError(f"cast family must be one of {CAST_FAMILIES}, got {family!r}")
        return cls(family)

    @classmethod
    def parse(cls, text: str | Option) -> Option:
        """Read the text form (``"topk:0.01"``, ``"qsgd:4x128[:max]"``, ``"powersgd:4[:ef]"``, ``"fp16"``)."""
        if isinstance(text, Option):
            return text
        if not isinstance(text, str):
            raise ValueError(f"an option must be an Option or a string, got {type(text).__name__}")
        family, _, rest = text.strip().partition(":")
        try:
            if family == "topk":
                return cls.topk(float(rest))
            if family == "powersgd":
                rank, _, flag = rest.partition(":")
                if flag not in ("", "ef"):
                    raise ValueError(f"the flag after the rank can only be 'ef', got {flag!r}")
                return cls.powersgd(int(rank), error_feedback=flag == "ef")
            if family == "qsgd":
                spec, _, norm = rest.partition(":")
                bits, _, bucket = spec.partition("x")
                return cls.qsgd(int(bits), int(bucket) if bucket else 128, norm or "l2")
        except ValueError as exc:
            raise ValueError(f"cannot parse compression option {text!r}: {exc}") from None
        if family in CAST_FAMILIES and not rest:
            return cls(family)
        raise ValueError(f"cannot parse compression option {text!r}")

    def __str__(self) -> str:
        if self.family == "topk":
            short = f"{self.param[0]:g}"
            return f"topk:{short if float(short) == self.param[0] else repr(float(self.param[0]))}"  # exact
        if self.family == "powersgd":
            return f"powersgd:{self.param[0]}" + (":ef" if self.error_feedback else "")
        if self.family == "qsgd":
            bits, bucket, norm = self.param
            return f"qsgd:{bits}x{bucket}" + ("" if norm == "l2" else f":{norm}")
        return self.family

    # -- what the compressor says ---------------------------------------------------------------------

    def build(self) -> Compressor:
        """A fresh compressor with this configuration (its own state, e.g. PowerSGD's ``Q``)."""
        if self.family == "topk":
            return TopK(density=self.param[0])
        if self.family == "qsgd":
            bits, bucket, norm = self.param
            return QSGD(bits=bits, bucket_size=bucket, norm=norm)
        if self.family == "powersgd":
            return PowerSGD(rank=self.param[0], error_feedback=self.error_feedback)
        return _CASTS[self.family]()

    @property
    def error_feedback(self) -> bool:
        """True for ``powersgd:RANK:ef``: the compressor keeps its own error-feedback buffers."""
        return self.family == "powersgd" and self.param[1:] == ("ef",)

    @property
    def is_cast(self) -> bool:
        return self.family in CAST_FAMILIES

    def applicable(self, shape: Sequence[int]) -> bool:
        """Whether the compressor handles a tensor of ``shape`` (the dense casts handle every shape)."""
        return self.is_cast or self._probe.compressible(torch.Size(shape))

    def wire_bytes(self, shape: Sequence[int]) -> int:
        """Bytes one rank puts on the wire for a tensor of ``shape``: the compressor's ``wire_bytes().total``.

        For PowerSGD that is both rounds (``P`` and ``Q``) together.
        """
        if not self.applicable(shape):
            raise ValueError(f"option {self} does not apply to a tensor of shape {tuple(shape)}")
        return self._probe.wire_bytes(torch.Size(shape)).total

    @property
    def collective(self) -> CollectiveKind:
        """The collective the compressor yields: ``"allreduce"`` (casts, PowerSGD) or ``"allgather"`` (top-k, QSGD)."""
        return "allgather" if self.family in ("topk", "qsgd") else "allreduce"

    @property
    def ordered(self) -> bool:
        """True for PowerSGD's rank-ordered all-reduces, which commlib's drivers run as an all-gather plus a sum."""
        return self.family == "powersgd"

    @property
    def rounds(self) -> int:
        """Collectives issued per exchange (PowerSGD: two, for ``P`` then ``Q``)."""
        return 2 if self.family == "powersgd" else 1


def rank_range(default: int, low: float = 0.5, high: float = 2.0) -> tuple[int, ...]:
    """The paper's PowerSGD candidate ranks: every integer in ``[max(1, floor(low·r)), ceil(high·r)]``."""
    if isinstance(default, bool) or not isinstance(default, int) or default < 1:
        raise ValueError(f"default rank must be a positive integer, got {default!r}")
    if not 0 < low <= 1 <= high or not math.isfinite(high):
        raise ValueError(f"rank range needs 0 < low <= 1 <= high < inf, got low={low!r}, high={high!r}")
    return tuple(range(max(1, math.floor(low * default)), math.ceil(high * default) + 1))


def option_grid(
    *,
    topk: Iterable[float] = (),
    qsgd_bits: Iterable[int] = (),
    qsgd_buckets: Iterable[int] = (128,),
    qsgd_norm: str = "l2",
    powersgd: Iterable[int] = (),
    powersgd_error_feedback: bool = False,
    casts: Iterable[str] = ("fp32",),
) -> list[Option]:
    """The cross product of the given parameters, family by family (QSGD: bits × bucket sizes).

    ``powersgd_error_feedback=True`` makes every PowerSGD rank ``powersgd:RANK:ef``.
    """
    options = [Option.topk(d) for d in topk]
    options += [Option.qsgd(b, s, qsgd_norm) for b in qsgd_bits for s in qsgd_buckets]
    options += [Option.powersgd(r, powersgd_error_feedback) for r in powersgd]
    options += [Option.cast(c) for c in casts]
    if len(set(options)) != len(options):
        raise ValueError(f"duplicate options in the grid: {[str(o) for o in options]}")
    return options


def default_grid(default: Option | str) -> list[Option]:
    """Candidates around a default setting, in its own family, plus ``fp32`` (the fallback for every layer).

    PowerSGD rank r: :func:`rank_range` (``[r/2, 2r]``, the paper's γ = 0.5, β = 2), with
    error feedback when the default has it.
    Top-k density d: ``d·{1/4, 1/2, 1, 2, 4}`` capped at 1. QSGD ``bits×bucket``:
    bits 2, 4, 8 at that bucket size. A cast: the three casts.
    """
    opt = Option.parse(default)
    if opt.family == "powersgd":
        grid = option_grid(powersgd=rank_range(opt.param[0]), powersgd_error_feedback=opt.error_feedback)
    elif opt.family == "topk":
        densities = sorted({min(1.0, opt.param[0] * f) for f in (0.25, 0.5, 1.0, 2.0, 4.0)})
        grid = option_grid(topk=densities)
    elif opt.family == "qsgd":
        grid = option_grid(qsgd_bits=(2, 4, 8), qsgd_buckets=(opt.param[1],), qsgd_norm=opt.param[2])
    else:
        grid = option_grid(casts=("fp16", "bf16"))
    return grid if Option("fp32") in grid else [*grid, Option("fp32")]
