"""Kernels behind commlib's compressors, dispatched to ``commlib._C`` when built, else to :mod:`.reference`.

On import this module tries to load the native extension ``commlib._C``
(unless ``COMMLIB_DISABLE_EXTENSION=1``). When it loads, :func:`pack_bits` and
:func:`unpack_bits` call ``torch.ops.commlib.*`` for tensors on a device the
extension has kernels for (CPU, CUDA when built with it, and ``meta``), and
the pure-torch reference otherwise. Both paths produce the same bytes and
raise the same ``ValueError`` on bad input: the metadata checks (dtype, rank,
bit width, lengths) run here in Python before either path; the check that
every code fits in ``bits`` bits runs inside the kernel (fused with packing,
so it costs no extra pass) or inside the reference.

:func:`backend` says which kernels are in use.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings

import torch
from torch import Tensor

from . import reference as _reference
from .reference import SUPPORTED_BITS, packed_length, topk_magnitude

__all__ = ["SUPPORTED_BITS", "backend", "pack_bits", "packed_length", "topk_magnitude", "unpack_bits"]

logger = logging.getLogger(__name__)

_DISABLE_ENV = "COMMLIB_DISABLE_EXTENSION"


def _load_extension() -> tuple[object | None, str | None]:
    """Import ``commlib._C``; return ``(module, None)``, or ``(None, reason)`` when it is disabled or unusable.

    A missing extension (never built) is silent; one that exists but fails to
    load (e.g. built against another torch) warns, since that is a broken install.
    """
    if os.environ.get(_DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return None, f"disabled by {_DISABLE_ENV}"
    try:
        extension = importlib.import_module("commlib._C")
    except ModuleNotFoundError as exc:
        if exc.name != "commlib._C":
            warnings.warn(f"commlib._C failed to import ({exc}); using the pure-torch reference kernels", stacklevel=2)
        return None, f"not importable: {exc}"
    except (ImportError, OSError) as exc:
        warnings.warn(f"commlib._C failed to load ({exc}); using the pure-torch reference kernels", stacklevel=2)
        return None, f"failed to load: {exc}"
    from . import _fake  # noqa: F401  (registers the fake kernels of the ops _C defined)

    return extension, None


_EXTENSION, _EXTENSION_ERROR = _load_extension()
_WITH_CUDA = bool(getattr(_EXTENSION, "WITH_CUDA", 0))
# Device types with a commlib::* kernel; "meta" is served by the fake kernels.
_KERNEL_DEVICES: frozenset[str] = (
    frozenset() if _EXTENSION is None else frozenset({"cpu", "meta", "cuda"} if _WITH_CUDA else {"cpu", "meta"})
)
if _EXTENSION_ERROR is not None:
    logger.debug("commlib.ops: using the reference kernels (%s)", _EXTENSION_ERROR)


def backend() -> str:
    """Which kernels are in use: ``"cpp+cuda"``, ``"cpp"`` (CPU-only build) or ``"reference"`` (pure torch)."""
    if _EXTENSION is None:
        return "reference"
    return "cpp+cuda" if _WITH_CUDA else "cpp"


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")


def _check_byte_vector(op: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{op} expects a 1-D uint8 tensor, got {type(t).__name__}")
    if t.dtype != torch.uint8 or t.dim() != 1:
        raise ValueError(f"{op} expects a 1-D uint8 tensor, got {t.dtype} of shape {tuple(t.shape)}")


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack a 1-D uint8 tensor of codes (each ``< 2**bits``) into ``packed_length(n, bits)`` bytes.

    Code ``i`` occupies bits ``(i*bits) % 8 …`` of byte ``(i*bits) // 8``
    (little-endian within a byte; for ``bits=1`` this is
    ``numpy.packbits(…, bitorder="little")``); the tail byte is zero-padded.

    Steps: 1. check ``bits`` and the tensor's dtype and rank (``ValueError``);
    2. on a device with a native kernel, call ``torch.ops.commlib.pack_bits``
    on the contiguous codes, which packs and range-checks in one pass;
    3. otherwise call the reference :func:`commlib.ops.reference.pack_bits`.
    A code ``>= 2**bits`` raises ``ValueError`` on either path.

    Example::

        >>> pack_bits(torch.tensor([1, 0, 3, 2, 1], dtype=torch.uint8), 2)
        tensor([177,   1], dtype=torch.uint8)
    """
    _check_bits(bits)
    _check_byte_vector("pack_bits", codes)
    if codes.device.type in _KERNEL_DEVICES:
        return torch.ops.commlib.pack_bits(codes.contiguous(), bits)
    return _reference.pack_bits(codes, bits)


def unpack_bits(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes of ``packed`` as a 1-D uint8 tensor.

    Steps: 1. check ``bits``, the tensor's dtype and rank, ``n >= 0`` and
    ``packed.numel() == packed_length(n, bits)`` (``ValueError``); 2. on a
    device with a native kernel call ``torch.ops.commlib.unpack_bits``,
    3. otherwise the reference. Padding bits of the last byte are ignored.
    """
    _check_bits(bits)
    _check_byte_vector("unpack_bits", packed)
    need = packed_length(n, bits)  # raises ValueError for n < 0
    if packed.numel() != need:
        raise ValueError(f"{n} codes of {bits} bits need {need} bytes, got {packed.numel()}")
    if packed.device.type in _KERNEL_DEVICES:
        return torch.ops.commlib.unpack_bits(packed.contiguous(), bits, n)
    return _reference.unpack_bits(packed, bits, n)
