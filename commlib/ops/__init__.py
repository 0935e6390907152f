"""Kernels behind commlib's compressors, dispatched to ``commlib._C`` when built, else to :mod:`.reference`.

On import this module tries to load the native extension ``commlib._C``
(unless ``COMMLIB_DISABLE_EXTENSION=1``). When it loads, every op here calls
``torch.ops.commlib.*`` for tensors on a device the extension has kernels for
(CPU, CUDA when built with it, and ``meta``) and of the dtype the kernel
takes, and the pure-torch reference otherwise. Both paths give the same
result (bytes, selected sets, codes) and raise ``ValueError`` on bad input:
metadata checks (dtype, rank, sizes) run in Python before either path; checks
that need the data (a code too large, a NaN) run inside the kernel, fused
with its main pass, or inside the reference.

The ops:

- :func:`pack_bits`, :func:`unpack_bits` — 1/2/4/8-bit codes to bytes and back;
- :func:`topk_magnitude` (exact radix select) and :func:`topk_threshold`
  (sampled threshold, one streaming pass; the same result, faster);
- :func:`ef_topk_` (error feedback with top-k: ``e += g``, select, zero the
  selected entries of ``e``, fused);
- :func:`qsgd_encode` (quantize + pack), :func:`qsgd_decode_add`
  (validate, unpack, dequantize, accumulate), :func:`qsgd_check` (the
  decoder's validation alone);
- :func:`count_sketch_add_`, :func:`count_unsketch` (count sketch, hashes
  computed from the seed), :func:`srht`, :func:`srht_transpose` (blockwise
  subsampled randomized Hadamard transform).

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
from .reference import SUPPORTED_BITS, packed_length

__all__ = [
    "SUPPORTED_BITS",
    "all_finite",
    "backend",
    "count_sketch_add_",
    "count_unsketch",
    "econtrol_commit_",
    "econtrol_message",
    "ef_topk_",
    "pack_bits",
    "packed_length",
    "qsgd_check",
    "qsgd_decode_add",
    "qsgd_encode",
    "sparse_mean_rows",
    "srht",
    "srht_transpose",
    "topk_magnitude",
    "topk_threshold",
    "unpack_bits",
]

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


def all_finite(t: Tensor) -> bool:
    """True when ``t`` holds no NaN and no ±Inf (always for integer and bool tensors).

    Gradients are checked every step, so this is on the hot path. A contiguous
    float32 CPU tensor goes to the kernel: one read-only pass that max-reduces
    the exponent bits (all ones exactly for NaN and ±Inf), 2.5× faster than
    ``aminmax``. Anything else takes the reference, one ``aminmax`` pass (NaN
    reaches the min and the max, ±Inf one of them), which allocates nothing of
    ``t``'s size: on CPU 15-25× faster than ``torch.isfinite(t).all()``, which
    materializes a bool tensor.
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"all_finite expects a tensor, got {type(t).__name__}")
    if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
        return True
    if _EXTENSION is not None and t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous():
        return bool(torch.ops.commlib.all_finite(t))
    return _reference.all_finite(t)


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


def _has_kernel(t: Tensor, dtype: torch.dtype) -> bool:
    """Whether a native kernel serves ``t``: the extension is loaded, knows the device, and takes the dtype."""
    return t.device.type in _KERNEL_DEVICES and t.dtype == dtype


def topk_magnitude(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` entries of 1-D ``x`` largest in ``|x|`` as ``(values, int32 indices)``, sorted by index.

    Ties at the k-th magnitude go to the lower index, so every run and every
    backend selects the same set; ``-0.0`` ties with ``0.0``, infinities are
    the largest magnitudes and a NaN raises ``ValueError``. The kernel is a
    radix select on the float bit patterns (two passes over ``x``, no sort);
    float32 tensors use it, other dtypes the reference.
    """
    if not isinstance(x, Tensor) or x.dim() != 1:
        raise ValueError(f"topk_magnitude expects a 1-D tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if _has_kernel(x, torch.float32):
        return torch.ops.commlib.topk_magnitude(x.contiguous(), k)
    return _reference.topk_magnitude(x, k)


def topk_threshold(x: Tensor, k: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Exactly :func:`topk_magnitude`'s result, by a sampled threshold and one streaming pass.

    The kernel estimates the k-th magnitude from 8,192 positions drawn with
    ``seed``, collects every entry at or above a safety margin below it in one
    pass, and selects exactly ``k`` among those candidates (falling back to the
    exact kernel when the sample was unlucky). The seed changes only the speed.
    """
    if not isinstance(x, Tensor) or x.dim() != 1:
        raise ValueError(f"topk_threshold expects a 1-D tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if _has_kernel(x, torch.float32):
        return torch.ops.commlib.topk_threshold(x.contiguous(), k, _as_int64(seed))
    return _reference.topk_threshold(x, k, seed)


def ef_topk_(e: Tensor, g: Tensor, k: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Fused error-feedback top-k: ``e += g``; the top-k of the new ``e``; ``e`` zeroed there. Returns the top-k.

    The result and the final ``e`` are exactly those of the unfused
    ``e.add_(g); v, i = topk_threshold(e, k, seed); e[i] = 0`` (values
    ``u[i]`` of ``u = e + g``, int32 indices sorted, ties to the lower index),
    in two passes over the vectors on the kernel's path. ``e`` and ``g`` are
    1-D tensors of one shape and dtype; ``e`` must be contiguous on the kernel
    path (float32 on a kernel device), else the reference runs.
    """
    for name, t in (("e", e), ("g", g)):
        if not isinstance(t, Tensor) or t.dim() != 1:
            raise ValueError(f"ef_topk_: {name} must be a 1-D tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if _has_kernel(e, torch.float32) and e.is_contiguous() and g.dtype == torch.float32 and g.device == e.device:
        return torch.ops.commlib.ef_topk_(e, g.contiguous(), k, _as_int64(seed))
    return _reference.ef_topk_(e, g, k, seed)


def _on_cpu_kernel(*tensors: Tensor) -> bool:
    """Whether the CPU kernels serve ``tensors``: the extension is loaded and all are contiguous CPU tensors."""
    return _EXTENSION is not None and all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)


def _check_like(op: str, like: Tensor, **tensors: Tensor) -> None:
    """``ValueError`` unless ``like`` is floating point and every tensor has its dtype, shape and device."""
    for name, t in tensors.items():
        if not isinstance(t, Tensor) or not like.is_floating_point() or (t.dtype, t.shape, t.device) != (
                like.dtype, like.shape, like.device):
            raise ValueError(f"{op}: {name} must be a floating-point tensor like the first ({like.dtype} "
                             f"{tuple(like.shape)} on {like.device}), got {getattr(t, 'dtype', type(t).__name__)} "
                             f"{tuple(getattr(t, 'shape', ()))}")


def econtrol_message(g: Tensor, h_local: Tensor, e: Tensor, eta: float, out: Tensor) -> Tensor:
    """EControl's message ``out = (g − hᵢ) + (η·e)`` in one pass; returns ``out``.

    Each operation rounds once, in this order (no fused multiply-add), so every
    backend gives the bits of :func:`commlib.ops.reference.econtrol_message`.
    All four have one floating dtype and shape; ``out`` shares no memory with
    the inputs. Contiguous float32 CPU tensors take the kernel (one read of
    each input, one write), anything else the reference (three torch ops).
    """
    _check_like("econtrol_message", g, g=g, h_local=h_local, e=e, out=out)
    if g.dtype == torch.float32 and _on_cpu_kernel(g, h_local, e, out):
        torch.ops.commlib.econtrol_message(g, h_local, e, float(eta), out)
        return out
    return _reference.econtrol_message(g, h_local, e, eta, out)


def econtrol_commit_(e: Tensor, h_local: Tensor, g: Tensor, indices: Tensor, values: Tensor) -> None:
    """EControl's commit with a sparse ``Δ``: ``e ← e + ((g − hᵢ) − Δ)``, then ``hᵢ ← hᵢ + Δ``, in one pass.

    ``Δ`` is zero but at the flat ``indices`` (1-D int64, strictly increasing
    within ``[0, e.numel())``, else ``ValueError`` before anything is written),
    where it holds ``values``. The bits are those of the dense update
    (:func:`commlib.ops.reference.econtrol_commit_`). ``e``, ``hᵢ``, ``g`` and
    ``values`` have one floating dtype; ``e`` and ``hᵢ`` are contiguous and
    distinct. Contiguous float32 CPU tensors take the kernel.
    """
    _check_like("econtrol_commit_", e, e=e, h_local=h_local, g=g)
    if not (e.is_contiguous() and h_local.is_contiguous()):
        raise ValueError("econtrol_commit_: e and h_local must be contiguous (they are updated in place)")
    if not isinstance(values, Tensor) or values.dtype != e.dtype or not isinstance(indices, Tensor) \
            or values.shape != indices.shape:
        raise ValueError(f"econtrol_commit_: values must be {e.dtype}, one per index, got "
                         f"{getattr(values, 'dtype', type(values).__name__)} {tuple(getattr(values, 'shape', ()))}")
    if e.dtype == torch.float32 and indices.dtype == torch.int64 and _on_cpu_kernel(e, h_local, g, indices, values):
        torch.ops.commlib.econtrol_commit_(e, h_local, g, indices, values)
    else:
        _reference.econtrol_commit_(e, h_local, g, indices, values)


def sparse_mean_rows(indices: Tensor, values: Tensor, divisor: int) -> tuple[Tensor, Tensor]:
    """The mean of ``n`` sparse rows without a dense tensor: ``(union int64 indices, float32 mean)``.

    Row ``r`` of ``indices`` (``(n, k)`` int32, each row strictly increasing and
    non-negative) and ``values`` (float32) is rank ``r``'s top-k message. At
    each index any row holds, the mean is the rows' sum in row order starting
    from 0, divided by ``divisor``: the bits of zeros + every row added in rank
    order + one division. The kernel walks the index range in chunks of 4096
    that some row reaches: the rows add their entries into a cache-resident
    accumulator in rank order, marking them in a bitmap, and the marked
    entries leave in index order (O(n·k) plus a bitmap scan per chunk).
    """
    if _on_cpu_kernel(indices, values):
        return torch.ops.commlib.sparse_mean_rows(indices, values, int(divisor))
    return _reference.sparse_mean_rows(indices, values, divisor)


def qsgd_encode(
    x: Tensor, bucket_size: int, levels: int, bits: int, max_norm: bool = False, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """QSGD quantize + pack of 1-D float32 ``x``: ``(float32 scale per bucket, packed codes)``.

    The formulas are those of :func:`commlib.ops.reference.qsgd_encode`;
    stochastic rounding draws from the counter hash keyed by ``seed`` and the
    element's index, so the codes do not depend on the thread count.
    """
    if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.dim() != 1:
        raise ValueError(f"qsgd_encode expects a 1-D float32 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if _has_kernel(x, torch.float32):
        return torch.ops.commlib.qsgd_encode(x.contiguous(), bucket_size, levels, bits, bool(max_norm), _as_int64(seed))
    return _reference.qsgd_encode(x, bucket_size, levels, bits, max_norm, seed)


def qsgd_decode_add(out: Tensor, scales: Tensor, packed: Tensor, bucket_size: int, levels: int, bits: int,
                    subtract: bool = False) -> None:
    """``out += scale/s · (code − s)`` per element, after validating every scale and code (``ValueError``).

    ``subtract``: ``out −=`` the same values instead (``out − v``, one rounding: the bits of subtracting
    the decoded tensor). ``out`` must be a contiguous 1-D float32 tensor (it is updated in place); a
    malformed payload raises before ``out`` is touched.
    """
    if not isinstance(out, Tensor) or out.dtype != torch.float32 or out.dim() != 1 or not out.is_contiguous():
        raise ValueError("qsgd_decode_add: out must be a contiguous 1-D float32 tensor")
    if _has_kernel(out, torch.float32) and scales.device == out.device and packed.device == out.device:
        torch.ops.commlib.qsgd_decode_add(out, scales.contiguous(), packed.contiguous(), bucket_size, levels, bits,
                                          bool(subtract))
        return
    _reference.qsgd_decode_add(out, scales, packed, bucket_size, levels, bits, bool(subtract))


def qsgd_check(scales: Tensor, packed: Tensor, n: int, bucket_size: int, levels: int, bits: int) -> None:
    """Raise ``ValueError`` exactly when :func:`qsgd_decode_add` would refuse this payload of ``n`` codes,
    without decoding it: sizes, every scale finite and non-negative, every code ``≤ 2s``.

    The kernel compares the codes on the packed bytes, several per 64-bit word; it is the
    decoder's own first pass.
    """
    if not isinstance(scales, Tensor) or not isinstance(packed, Tensor):
        raise ValueError("qsgd_check: scales and packed must be tensors")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"qsgd_check: n must be a non-negative integer, got {n!r}")
    if _has_kernel(scales, torch.float32) and packed.device == scales.device:
        torch.ops.commlib.qsgd_check(scales.contiguous(), packed.contiguous(), n, bucket_size, levels, bits)
        return
    _reference.qsgd_check(scales, packed, n, bucket_size, levels, bits)


def count_sketch_add_(table: Tensor, x: Tensor, seed: int, offset: int = 0) -> None:
    """Add the count sketch of 1-D ``x`` (global indices ``offset + t``) into ``table`` (rows × cols), in place.

    ``table[j, bucket_j(i)] += sign_j(i)·x_i`` with a 2-wise independent
    bucket hash and a 4-wise independent sign hash per row, both computed from
    ``seed`` (:func:`commlib.ops.reference.count_sketch_hashes`). Linear: the
    sum of sketches is the sketch of the sum, so sketches all-reduce.
    """
    if _has_kernel(table, torch.float32) and isinstance(x, Tensor) and x.dtype == torch.float32:
        torch.ops.commlib.count_sketch_add_(table, x.contiguous(), _as_int64(seed), offset)
        return
    _reference.count_sketch_add_(table, x, seed, offset)


def count_unsketch(table: Tensor, seed: int, offset: int, length: int, out: Tensor | None = None) -> Tensor:
    """Median-of-rows estimates of the elements at global indices ``offset + [0, length)`` of a count sketch.

    ``out``: where to write them (returned): a contiguous 1-D float32 tensor of
    ``length`` elements on the table's device, sharing no memory with it.
    Reusing one spares a fresh allocation, whose first touch can cost more
    than the estimates themselves.
    """
    if out is not None:
        _check_out("count_unsketch", out, length, table)
    if not _has_kernel(table, torch.float32):
        estimates = _reference.count_unsketch(table, seed, offset, length)
        return estimates if out is None else out.copy_(estimates)
    if out is None:
        return torch.ops.commlib.count_unsketch(table.contiguous(), _as_int64(seed), offset, length)
    torch.ops.commlib.count_unsketch_out(table.contiguous(), _as_int64(seed), offset, out)
    return out


def srht(x: Tensor, block: int, rows: Tensor, seed: int) -> Tensor:
    """Blockwise SRHT of 1-D float32 ``x``: per block, random signs, ``H/√block``, keep ``rows``."""
    if _has_kernel(x, torch.float32) and isinstance(rows, Tensor) and rows.device == x.device:
        return torch.ops.commlib.srht(x.contiguous(), block, rows, _as_int64(seed))
    return _reference.srht(x, block, rows, seed)


def srht_transpose(y: Tensor, block: int, rows: Tensor, length: int, seed: int, out: Tensor | None = None) -> Tensor:
    """Transpose of :func:`srht`: ``length`` elements from ``(ceil(length/block), m)`` coefficients.

    ``out``: where to write them (returned), as in :func:`count_unsketch`.
    """
    if out is not None:
        _check_out("srht_transpose", out, length, y)
    if not (_has_kernel(y, torch.float32) and isinstance(rows, Tensor) and rows.device == y.device):
        result = _reference.srht_transpose(y, block, rows, length, seed)
        return result if out is None else out.copy_(result)
    if out is None:
        return torch.ops.commlib.srht_transpose(y.contiguous(), block, rows, length, _as_int64(seed))
    torch.ops.commlib.srht_transpose_out(y.contiguous(), block, rows, _as_int64(seed), out)
    return out


def _check_out(op: str, out: Tensor, length: int, source: Tensor) -> None:
    """``ValueError`` unless ``out`` can receive ``length`` float32 results computed from ``source``."""
    if not isinstance(out, Tensor) or out.dtype != torch.float32 or out.dim() != 1 or not out.is_contiguous():
        raise ValueError(f"{op}: out must be a contiguous 1-D float32 tensor, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} of shape {tuple(getattr(out, 'shape', ()))}")
    if out.numel() != length:
        raise ValueError(f"{op}: out must hold length = {length} elements, got {out.numel()}")
    if not isinstance(source, Tensor) or out.device != source.device:
        raise ValueError(f"{op}: out must be on the input's device {getattr(source, 'device', None)}, got {out.device}")


def _as_int64(seed: int) -> int:
    """A seed as the int64 an op schema takes: the same 64 bits, two's complement."""
    seed = int(seed) & (2**64 - 1)
    return seed - 2**64 if seed >= 2**63 else seed
