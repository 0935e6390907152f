"""Method specs of the command line: text such as ``"topk:0.01"`` or ``"econtrol:0.005"`` to commlib objects.

Each parser raises ``ValueError`` naming the spec and what it expects, so a command turns
it into an error about its flag.
"""

from __future__ import annotations

from collections.abc import Callable

from ..compress import BF16, FP16, QSGD, Compressor, Identity, PowerSGD, RandK, Sign, Sketch, TopK
from ..feedback import EF14, EF21, EF21SGDM, EControl, ErrorFeedback

__all__ = ["COMPRESSOR_SPECS", "FEEDBACK_SPECS", "make_compressor", "make_feedback"]

COMPRESSOR_SPECS = ("fp32", "fp16", "bf16", "topk:DENSITY", "randk:DENSITY", "qsgd:BITS", "sign",
                    "powersgd:RANK[:ef]", "sketch:RATIO")
FEEDBACK_SPECS = ("ef14", "ef21", "ef21-sgdm[:BETA]", "econtrol[:ETA]")

_NO_PARAM: dict[str, Callable[[], Compressor]] = {"fp32": Identity, "fp16": FP16, "bf16": BF16, "sign": Sign}
_ONE_PARAM: dict[str, tuple[type, Callable[..., Compressor]]] = {
    "topk": (float, lambda v: TopK(density=v)),
    "randk": (float, lambda v: RandK(density=v)),
    "qsgd": (int, lambda v: QSGD(bits=v)),
    "powersgd": (int, lambda v: PowerSGD(rank=v)),
    "sketch": (float, lambda v: Sketch(ratio=v)),
}
_FEEDBACK: dict[str, tuple[Callable[[], ErrorFeedback], Callable[[float], ErrorFeedback] | None]] = {
    "ef14": (EF14, None),
    "ef21": (EF21, None),
    "ef21-sgdm": (EF21SGDM, lambda v: EF21SGDM(beta=v)),
    "econtrol": (EControl, lambda v: EControl(eta=v)),
}


def _split(spec: object, what: str) -> tuple[str, str]:
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a {what} spec must be a non-empty string, got {spec!r}")
    name, _, param = spec.strip().lower().partition(":")
    return name, param


def make_compressor(spec: str) -> Compressor:
    """``fp32 | fp16 | bf16 | sign | topk:D | randk:D | qsgd:BITS | powersgd:RANK[:ef] | sketch:RATIO``.

    ``powersgd:RANK:ef`` is PowerSGD with its own error feedback (``error_feedback=True``).
    """
    name, param = _split(spec, "compressor")
    error_feedback = name == "powersgd" and param.endswith(":ef")
    if error_feedback:
        param = param[: -len(":ef")]
    if name in _NO_PARAM:
        if param:
            raise ValueError(f"compressor {name!r} takes no parameter, got {spec!r}")
        return _NO_PARAM[name]()
    if name not in _ONE_PARAM:
        raise ValueError(f"unknown compressor {spec!r}; expected one of {', '.join(COMPRESSOR_SPECS)}")
    kind, build = _ONE_PARAM[name]
    try:
        value = kind(param)
    except ValueError:
        raise ValueError(f"compressor {spec!r}: {name} takes one {kind.__name__} parameter, "
                         f"as in {next(s for s in COMPRESSOR_SPECS if s.startswith(name))}") from None
    return PowerSGD(rank=value, error_feedback=True) if error_feedback else build(value)


def make_feedback(spec: str) -> ErrorFeedback:
    """``ef14 | ef21 | ef21-sgdm[:BETA] | econtrol[:ETA]`` (defaults: the methods' own)."""
    name, param = _split(spec, "feedback")
    if name not in _FEEDBACK:
        raise ValueError(f"unknown feedback {spec!r}; expected one of {', '.join(FEEDBACK_SPECS)}")
    default, with_param = _FEEDBACK[name]
    if not param:
        return default()
    if with_param is None:
        raise ValueError(f"feedback {name!r} takes no parameter, got {spec!r}")
    try:
        value = float(param)
    except ValueError:
        raise ValueError(f"feedback {spec!r}: the parameter must be a number") from None
    return with_param(value)
