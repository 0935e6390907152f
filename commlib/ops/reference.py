"""Pure-torch reference kernels: the fallback when ``commlib._C`` is absent, the oracle of the C++/CUDA kernels.

Bit layout of :func:`pack_bits` (little-endian within a byte): code ``i`` of
width ``b`` occupies bits ``(i*b) % 8 …`` of byte ``(i*b) // 8``. For ``b = 1``
that is ``numpy.packbits(…, bitorder="little")``. The tail byte is zero-padded.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SUPPORTED_BITS", "packed_length", "pack_bits", "unpack_bits", "topk_magnitude"]

SUPPORTED_BITS = (1, 2, 4, 8)


def _check_bits(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    return bits


def packed_length(n: int, bits: int) -> int:
    """Bytes needed to pack ``n`` codes of ``bits`` bits each."""
    _check_bits(bits)
    if n < 0:
        raise ValueError(f"length must be non-negative, got {n}")
    return (n * bits + 7) // 8


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack a 1-D uint8 tensor of codes (each ``< 2**bits``) into ``packed_length(n, bits)`` bytes.

    Steps: pad the codes to a multiple of ``8 // bits``, view them as rows of
    ``8 // bits`` codes, shift code ``j`` of each row left by ``j * bits`` and
    OR the row into one byte.
    """
    _check_bits(bits)
    if codes.dtype != torch.uint8 or codes.dim() != 1:
        raise ValueError(f"pack_bits expects a 1-D uint8 tensor, got {codes.dtype} of shape {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) >= (1 << bits):
        raise ValueError(f"a code does not fit in {bits} bits (max {int(codes.max())})")
    if bits == 8:
        return codes.clone()
    per_byte = 8 // bits
    n = codes.numel()
    pad = (-n) % per_byte
    padded = torch.cat([codes, codes.new_zeros(pad)]) if pad else codes
    rows = padded.view(-1, per_byte).to(torch.int32)
    shifts = torch.arange(per_byte, dtype=torch.int32, device=codes.device) * bits
    return (rows << shifts).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes of ``packed`` as a uint8 tensor."""
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"unpack_bits expects a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if packed.numel() != packed_length(n, bits):
        raise ValueError(f"{n} codes of {bits} bits need {packed_length(n, bits)} bytes, got {packed.numel()}")
    if bits == 8:
        return packed.clone()
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, dtype=torch.int32, device=packed.device) * bits
    codes = (packed.to(torch.int32).unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n].to(torch.uint8)


def topk_magnitude(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` entries of 1-D ``x`` largest in magnitude, as ``(values, int64 indices)`` sorted by index.

    Ties at the k-th magnitude go to the lower index, so the selected set is a
    function of ``x`` alone (``torch.topk`` leaves tie order unspecified).
    Steps: find the k-th largest magnitude ``t`` (``kthvalue``), keep every
    entry above ``t``, then fill up with the lowest-index entries equal to ``t``.
    """
    if x.dim() != 1:
        raise ValueError(f"topk_magnitude expects a 1-D tensor, got shape {tuple(x.shape)}")
    d = x.numel()
    if not 0 <= k <= d:
        raise ValueError(f"k must be in [0, {d}], got {k}")
    if k == 0:
        return x.new_empty(0), torch.empty(0, dtype=torch.int64, device=x.device)
    mag = x.abs()
    if k == d:
        idx = torch.arange(d, device=x.device)
        return x.clone(), idx
    t = torch.kthvalue(mag, d - k + 1).values
    above = (mag > t).nonzero().squeeze(1)
    ties = (mag == t).nonzero().squeeze(1)[: k - above.numel()]
    idx = torch.cat([above, ties]).sort().values
    return x[idx], idx
