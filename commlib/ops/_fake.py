"""Fake (meta) kernels of the ``commlib::*`` ops, so they trace under ``torch.compile`` and run on ``meta`` tensors.

A fake kernel computes only the output's shape, dtype and device. Imported by
:mod:`commlib.ops` once ``commlib._C`` (which defines the ops) has loaded.
Data-dependent checks (every code ``< 2**bits``) cannot run here; the real
kernels make them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__: list[str] = []

_SUPPORTED_BITS = (1, 2, 4, 8)


def _register_fake(qualname: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """``torch.library.register_fake`` (torch >= 2.4), else its older name ``impl_abstract``."""
    if hasattr(torch.library, "register_fake"):
        return torch.library.register_fake(qualname)
    return torch.library.impl_abstract(qualname)  # pragma: no cover - torch < 2.4


def _check_byte_vector(op: str, name: str, t: Tensor) -> None:
    torch._check_value(t.dtype == torch.uint8, lambda: f"{op}: {name} must be a 1-D uint8 tensor, got {t.dtype}")
    torch._check_value(t.dim() == 1, lambda: f"{op}: {name} must be a 1-D uint8 tensor, got shape {tuple(t.shape)}")


@_register_fake("commlib::pack_bits")
def _pack_bits_fake(codes: Tensor, bits: int) -> Tensor:
    torch._check_value(bits in _SUPPORTED_BITS, lambda: f"pack_bits: bits must be one of {_SUPPORTED_BITS}, got {bits}")
    _check_byte_vector("pack_bits", "codes", codes)
    return codes.new_empty(((codes.shape[0] * bits + 7) // 8,))


@_register_fake("commlib::unpack_bits")
def _unpack_bits_fake(packed: Tensor, bits: int, n: int) -> Tensor:
    torch._check_value(
        bits in _SUPPORTED_BITS, lambda: f"unpack_bits: bits must be one of {_SUPPORTED_BITS}, got {bits}"
    )
    _check_byte_vector("unpack_bits", "packed", packed)
    torch._check_value(n >= 0, lambda: f"unpack_bits: n must be non-negative, got {n}")
    torch._check_value(
        packed.shape[0] == (n * bits + 7) // 8,
        lambda: f"unpack_bits: {n} codes of {bits} bits need {(n * bits + 7) // 8} bytes, got {packed.shape[0]}",
    )
    return packed.new_empty((n,))
