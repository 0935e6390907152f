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


@_register_fake("commlib::all_finite")
def _all_finite_fake(x: Tensor) -> Tensor:
    torch._check_value(x.dtype == torch.float32, lambda: f"all_finite: x must be float32, got {x.dtype}")
    return x.new_empty((), dtype=torch.bool)


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


def _check_vector(op: str, t: Tensor, dtype: torch.dtype) -> None:
    torch._check_value(t.dtype == dtype, lambda: f"{op}: expected a {dtype} tensor, got {t.dtype}")
    torch._check_value(t.dim() == 1, lambda: f"{op}: expected a 1-D tensor, got shape {tuple(t.shape)}")


def _topk_fake(op: str, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    _check_vector(op, x, torch.float32)
    torch._check_value(0 <= k <= x.shape[0], lambda: f"{op}: k must be in [0, {x.shape[0]}], got {k}")
    return x.new_empty((k,)), x.new_empty((k,), dtype=torch.int32)


@_register_fake("commlib::topk_magnitude")
def _topk_magnitude_fake(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    return _topk_fake("topk_magnitude", x, k)


@_register_fake("commlib::topk_threshold")
def _topk_threshold_fake(x: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
    return _topk_fake("topk_threshold", x, k)


@_register_fake("commlib::ef_topk_")
def _ef_topk_fake(e: Tensor, g: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
    _check_vector("ef_topk_", g, torch.float32)
    torch._check_value(g.shape[0] == e.shape[0], lambda: f"ef_topk_: g has {g.shape[0]} elements, e has {e.shape[0]}")
    return _topk_fake("ef_topk_", e, k)


@_register_fake("commlib::econtrol_message")
def _econtrol_message_fake(g: Tensor, h_local: Tensor, e: Tensor, eta: float, out: Tensor) -> None:
    for t in (h_local, e, out):
        torch._check_value(t.dtype == g.dtype and t.shape == g.shape,
                           lambda: "econtrol_message: g, h_local, e and out must share one dtype and shape")


@_register_fake("commlib::econtrol_commit_")
def _econtrol_commit_fake(e: Tensor, h_local: Tensor, g: Tensor, indices: Tensor, values: Tensor) -> None:
    for t in (h_local, g):
        torch._check_value(t.dtype == e.dtype and t.shape == e.shape,
                           lambda: "econtrol_commit_: e, h_local and g must share one dtype and shape")
    torch._check_value(indices.dtype == torch.int64 and indices.dim() == 1,
                       lambda: "econtrol_commit_: indices must be a 1-D int64 tensor")
    torch._check_value(values.shape == indices.shape, lambda: "econtrol_commit_: one value per index")


@_register_fake("commlib::sparse_mean_rows")
def _sparse_mean_rows_fake(indices: Tensor, values: Tensor, divisor: int) -> tuple[Tensor, Tensor]:
    torch._check_value(indices.dtype == torch.int32 and indices.dim() == 2,
                       lambda: "sparse_mean_rows: indices must be a 2-D int32 tensor")
    torch._check_value(values.dtype == torch.float32 and values.shape == indices.shape,
                       lambda: "sparse_mean_rows: values must be float32 of the indices' shape")
    unique = torch.library.get_ctx().new_dynamic_size()
    return indices.new_empty((unique,), dtype=torch.int64), values.new_empty((unique,))


@_register_fake("commlib::qsgd_encode")
def _qsgd_encode_fake(
    x: Tensor, bucket_size: int, levels: int, bits: int, max_norm: bool, seed: int
) -> tuple[Tensor, Tensor]:
    _check_vector("qsgd_encode", x, torch.float32)
    torch._check_value(bucket_size >= 1, lambda: f"qsgd_encode: bucket_size must be positive, got {bucket_size}")
    torch._check_value(bits in (2, 4, 8), lambda: f"qsgd_encode: bits must be one of (2, 4, 8), got {bits}")
    n = x.shape[0]
    return x.new_empty(((n + bucket_size - 1) // bucket_size,)), x.new_empty(((n * bits + 7) // 8,), dtype=torch.uint8)


@_register_fake("commlib::qsgd_decode_add")
def _qsgd_decode_add_fake(
    out: Tensor, scales: Tensor, packed: Tensor, bucket_size: int, levels: int, bits: int, subtract: bool = False
) -> None:
    _check_vector("qsgd_decode_add", out, torch.float32)
    _check_vector("qsgd_decode_add", scales, torch.float32)
    _check_vector("qsgd_decode_add", packed, torch.uint8)


@_register_fake("commlib::qsgd_check")
def _qsgd_check_fake(scales: Tensor, packed: Tensor, n: int, bucket_size: int, levels: int, bits: int) -> None:
    _check_vector("qsgd_check", scales, torch.float32)
    _check_vector("qsgd_check", packed, torch.uint8)


@_register_fake("commlib::count_sketch_add_")
def _count_sketch_add_fake(table: Tensor, x: Tensor, seed: int, offset: int) -> None:
    torch._check_value(table.dim() == 2, lambda: f"count_sketch_add_: table must be 2-D, got {tuple(table.shape)}")
    _check_vector("count_sketch_add_", x, torch.float32)


@_register_fake("commlib::count_unsketch")
def _count_unsketch_fake(table: Tensor, seed: int, offset: int, length: int) -> Tensor:
    torch._check_value(table.dim() == 2, lambda: f"count_unsketch: table must be 2-D, got {tuple(table.shape)}")
    return table.new_empty((length,))


@_register_fake("commlib::count_unsketch_out")
def _count_unsketch_out_fake(table: Tensor, seed: int, offset: int, out: Tensor) -> None:
    torch._check_value(table.dim() == 2, lambda: f"count_unsketch_out: table must be 2-D, got {tuple(table.shape)}")
    _check_vector("count_unsketch_out", out, torch.float32)


@_register_fake("commlib::srht")
def _srht_fake(x: Tensor, block: int, rows: Tensor, seed: int) -> Tensor:
    _check_vector("srht", x, torch.float32)
    return x.new_empty(((x.shape[0] + block - 1) // block, rows.shape[0]))


@_register_fake("commlib::srht_transpose")
def _srht_transpose_fake(y: Tensor, block: int, rows: Tensor, length: int, seed: int) -> Tensor:
    torch._check_value(y.dim() == 2, lambda: f"srht_transpose: y must be 2-D, got {tuple(y.shape)}")
    return y.new_empty((length,))


@_register_fake("commlib::srht_transpose_out")
def _srht_transpose_out_fake(y: Tensor, block: int, rows: Tensor, seed: int, out: Tensor) -> None:
    torch._check_value(y.dim() == 2, lambda: f"srht_transpose_out: y must be 2-D, got {tuple(y.shape)}")
    _check_vector("srht_transpose_out", out, torch.float32)
