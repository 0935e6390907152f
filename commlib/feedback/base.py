"""The two-phase interface shared by every error-feedback method, and small helpers.

An error-feedback method is a small state machine per tensor key (parameter
name). One step of worker i for one tensor is split in two phases so that the
same object can be driven by any runtime (DDP hook, in-process simulator, MPI):

1. ``u = method.message(key, g, ctx)`` — the tensor to compress. Pure: reads the
   state, never writes it.
2. The runtime computes ``delta_local = C(u)`` (this rank's compressed
   message, e.g. :func:`local_compress`) and exchanges it; the exchange returns
   ``delta_mean``, the mean of all ranks' ``C(u)``. Both are dense, or, for a
   method with :attr:`ErrorFeedback.sparse_deltas`: from a sparse compressor
   (top-k), :class:`~commlib.compress.SparseDelta` (or sparse COO tensors), so the
   method's buffers are updated at the kept entries only; from a dense one,
   :class:`~commlib.compress.LazyDelta` (a linear compressor's mean, a gather
   compressor's local ``C(u)``), decoded where it is consumed. The same bits
   either way (but the sign of a zero: a ``−0.0`` in a buffer, which ``+ 0``
   would have made ``+0.0``).
3. ``out = method.commit(key, g, delta_local, delta_mean)`` — updates the state
   and returns what the optimizer must see: a fresh tensor, or ``out=`` (which
   may be ``g`` itself, e.g. DDP's bucket: it is written last).

If the exchange is aborted, or ``g`` is not finite (check with :func:`is_finite`),
the runtime must not call :meth:`ErrorFeedback.commit`; the state is then
exactly as before the step (DESIGN.md: non-finite gradients leave all state
untouched).

State is kept in ``dtype`` (float32 by default, whatever the gradient dtype),
created lazily as zeros of ``g``'s shape the first time a key is seen.
``state_dict()`` holds only tensors and plain values, so it loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from torch import Tensor

from .. import ops
from ..compress.base import Compressor, TensorContext
from ..compress.lazy_delta import LazyDelta
from ..compress.sparse_delta import SparseDelta

__all__ = ["ErrorFeedback", "Delta", "add_delta_", "is_finite", "require_local_compressor", "local_compress",
           "default_eta"]

#: A compressed message as :meth:`ErrorFeedback.commit` receives it: dense, zero but at a few entries, or decoded
#: where it is consumed (a linear compressor's mean, a gather compressor's local ``C(u)``).
Delta = Tensor | SparseDelta | LazyDelta


def add_delta_(t: Tensor, delta: Delta, alpha: float = 1.0) -> Tensor:
    """``t += alpha·delta`` (``alpha`` 1 or −1) in place; a :class:`SparseDelta` touches its kept entries only."""
    if isinstance(delta, Tensor):
        return t.add_(delta, alpha=alpha)
    return delta.add_to_(t, alpha)


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    """Whether dense ``a`` and ``b`` overlap in memory (same storage, overlapping byte ranges)."""
    if a.device != b.device or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    a_lo, b_lo = a.data_ptr(), b.data_ptr()
    return a_lo < b_lo + b.numel() * b.element_size() and b_lo < a_lo + a.numel() * a.element_size()


def _version(t: Tensor) -> int | None:
    """``t``'s version counter (bumped by every in-place write), or None where torch keeps none (inference mode)."""
    try:
        return t._version
    except RuntimeError:
        return None


def is_finite(g: Tensor) -> bool:
    """True when every entry of ``g`` is finite. When False, skip :meth:`ErrorFeedback.commit` for this step."""
    return ops.all_finite(g)


def require_local_compressor(compressor: object) -> Compressor:
    """Return ``compressor`` if it has a local ``compress(x, ctx)`` giving this rank's dense ``C(x)``.

    Error feedback needs each worker's own compressed message ``C(u)``. Top-k,
    random-k, QSGD and Sign provide it; PowerSGD (a multi-round low-rank
    exchange whose result only exists after communication) and the dense casts
    do not, and are rejected with ``ValueError``. PowerSGD has its own error
    feedback: ``PowerSGD(rank, error_feedback=True)``.
    """
    fn = getattr(compressor, "compress", None)
    if not callable(fn):
        name = getattr(compressor, "name", type(compressor).__name__)
        raise ValueError(
            f"error feedback needs a compressor with a local compress(x, ctx) (TopK, RandK, QSGD, Sign); "
            f"{type(compressor).__name__} ({name!r}) has none"
            + ("; PowerSGD has its own: PowerSGD(rank, error_feedback=True), or the option 'powersgd:RANK:ef'"
               if name == "powersgd" else "")
        )
    return compressor  # type: ignore[return-value]


def local_compress(compressor: Compressor, u: Tensor, ctx: TensorContext) -> Tensor:
    """This rank's dense ``C(u)`` from ``compressor`` (validated by :func:`require_local_compressor`)."""
    out = require_local_compressor(compressor).compress(u, ctx)  # type: ignore[attr-defined]
    if out.shape != u.shape:
        raise AssertionError(
            f"{compressor.name}: compress returned shape {tuple(out.shape)}, expected {tuple(u.shape)}"
        )
    return out


def default_eta(compressor: Compressor, numel: int) -> float:
    """EControl's default ``η = δ/2`` for ``compressor`` on a tensor of ``numel`` elements.

    ``δ`` is the nominal contraction constant ``k/d`` of top-k and of unscaled
    random-k (``‖C(x) − x‖² ≤ (1 − δ)‖x‖²``). The theory takes ``η = Θ(δ)``
    (Gao, Islamov, Stich, ICLR 2024); in our simulations ``η ≈ δ`` to ``2δ`` was
    still stable and larger ``η`` diverged, so ``δ/2`` leaves a margin. For
    compressors without a known ``δ`` this raises ``ValueError``: pass ``eta``
    explicitly.
    """
    from ..compress.randk import RandK
    from ..compress.topk import TopK

    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 1:
        raise ValueError(f"numel must be a positive integer, got {numel!r}")
    if isinstance(compressor, TopK) or (isinstance(compressor, RandK) and not compressor.unbiased):
        return 0.5 * compressor.count(numel) / numel
    raise ValueError(
        f"no nominal contraction constant delta known for {type(compressor).__name__}; pass eta explicitly"
    )


def check_unit_interval(value: object, what: str, *, low_open: bool, low: float = 0.0) -> float:
    """``value`` as a float in ``[low, 1]`` (or ``(low, 1]`` when ``low_open``); else ``ValueError`` naming ``what``."""
    interval = f"({low}, 1]" if low_open else f"[{low}, 1]"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a number in {interval}, got {value!r}")
    if value > 1 or value < low or (low_open and value == low):
        raise ValueError(f"{what} must be in {interval}, got {value!r}")
    return float(value)


class ErrorFeedback(ABC):
    """Base class: per-key buffers named by :attr:`buffers`, in ``dtype``.

    Subclasses name their buffers and implement :meth:`_message` and
    :meth:`_commit` on a complete buffer dict (zeros for a new key).
    """

    #: Short name used in configs, logs and state dicts.
    name: str = "feedback"
    #: Names of the persistent per-key buffers (per-worker and global), all of the tensor's shape.
    buffers: tuple[str, ...] = ()
    #: ``commit`` takes ``delta_local`` and ``delta_mean`` as :class:`~commlib.compress.SparseDelta` (or
    #: sparse COO tensors), which ``_commit`` only adds to dense tensors (:func:`add_delta_`) or returns.
    #: The built-in methods do; a subclass whose ``_commit`` needs dense ones sets False.
    sparse_deltas: bool = False
    #: ``_message`` and ``_commit`` find a per-key work buffer of the tensor's shape under
    #: ``s["scratch"]`` (not state: never checkpointed, not in :meth:`state_bytes`). ``message``
    #: then returns that buffer, valid until the key's next ``message`` or ``commit`` — a runtime
    #: compresses it before committing, as the exchange does. It saves a fresh gradient-sized
    #: tensor per call, which on CPU costs its page faults (often more than the arithmetic), for
    #: one more buffer per key held between steps. The built-in methods with state use one.
    scratch: bool = False

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self._state: dict[str, dict[str, Tensor]] = {}
        self._scratch: dict[str, Tensor] = {}
        self._pending: dict[str, tuple[Tensor, int, Tensor, int]] = {}  # key: (g, its version, u, its version)

    # ----- configuration -------------------------------------------------------------------------------
    def config(self) -> dict[str, object]:
        """Plain values that must agree across ranks."""
        return {"name": self.name}

    def bytes_per_element(self) -> int:
        """Persistent state bytes per gradient element on one worker (``len(buffers)`` × dtype size).

        In fp32: no feedback 0, EF14 4 (eᵢ), EF21 8 (hᵢ, h), EF21-SGDM 12 (vᵢ, hᵢ, h), EControl 12 (eᵢ, hᵢ, h).
        """
        return len(self.buffers) * torch.empty((), dtype=self.dtype).element_size()

    def state_bytes(self) -> int:
        """Bytes held now by all keys' buffers on this worker (the measured counterpart of ``bytes_per_element``)."""
        return sum(t.numel() * t.element_size() for state in self._state.values() for t in state.values())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    # ----- state access --------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys that have state."""
        return list(self._state)

    def get(self, key: str) -> dict[str, Tensor] | None:
        """The live buffers of ``key`` (not copies), or None if the key has no state yet."""
        return self._state.get(key)

    def reset(self, key: str | None = None) -> None:
        """Forget the state of ``key`` (all keys when None); it restarts from zeros."""
        if key is None:
            self._state.clear()
            self._scratch.clear()
            self._pending.clear()
        else:
            self._state.pop(key, None)
            self._scratch.pop(key, None)
            self._pending.pop(key, None)

    def _convert(self, t: Tensor, what: str, shape: torch.Size | None = None) -> Tensor:
        if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
            raise ValueError(f"{self.name}: {what} must be a floating-point tensor, got {getattr(t, 'dtype', t)!r}")
        if shape is not None and t.shape != shape:
            raise ValueError(f"{self.name}: {what} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return t.to(self.dtype)

    def _buffers_for(self, key: str, like: Tensor) -> dict[str, Tensor]:
        """Existing buffers of ``key`` (shape checked), or fresh zeros that are not stored."""
        state = self._state.get(key)
        if state is None:
            return {b: torch.zeros(like.shape, dtype=self.dtype, device=like.device) for b in self.buffers}
        first = next(iter(state.values()), None)
        if first is not None and first.shape != like.shape:
            raise ValueError(
                f"{self.name}: key {key!r} has state of shape {tuple(first.shape)}, got a tensor of shape "
                f"{tuple(like.shape)}"
            )
        return state

    def _with_scratch(self, key: str, state: dict[str, Tensor], like: Tensor) -> dict[str, Tensor]:
        """``state`` plus, for a method with :attr:`scratch`, the key's work buffer as ``"scratch"`` (a new dict)."""
        if not self.scratch:
            return state
        buf = self._scratch.get(key)
        if buf is None or buf.shape != like.shape or buf.device != like.device:
            buf = self._scratch[key] = torch.empty(like.shape, dtype=self.dtype, device=like.device)
        return {**state, "scratch": buf}

    # ----- the two phases ------------------------------------------------------------------------------
    def message(self, key: str, g: Tensor, ctx: TensorContext | None = None) -> Tensor:
        """The tensor ``u`` this worker compresses for ``key`` (in ``dtype``). Does not change any state.

        A method with :attr:`scratch` returns the key's work buffer: compress it before the key's
        next ``message`` or ``commit``. If neither it nor ``g`` is written before the commit of the
        same ``g`` (torch's version counters tell), the commit may keep it as state (EF14: ``e' = u − Δ``).

        ``ctx`` is accepted so runtimes can pass it uniformly; the methods here do not need it.
        """
        g = self._convert(g, "g")
        u = self._message(self._with_scratch(key, self._buffers_for(key, g), g), g)
        versions = (_version(g), _version(u))
        if self.scratch and None not in versions:
            self._pending[key] = (g, versions[0], u, versions[1])
        return u

    def commit(self, key: str, g: Tensor, delta_local: Delta, delta_mean: Delta,
               out: Tensor | None = None) -> Tensor:
        """Update the state of ``key`` after the exchange; return the tensor the optimizer steps with.

        ``g`` must be the same gradient given to :meth:`message`, ``delta_local``
        this worker's ``C(u)`` and ``delta_mean`` the mean of all workers' ``C(u)``
        (identical on every rank); either may be a :class:`~commlib.compress.SparseDelta`
        or a sparse COO tensor when :attr:`sparse_deltas`. Call only when ``g`` is finite (:func:`is_finite`)
        and the exchange completed. Returns a new tensor in ``dtype``, or, given
        ``out`` (``g``'s shape; it may be ``g`` itself, written after the state is
        updated), the result copied into ``out``: no gradient-sized allocation.
        """
        g = self._convert(g, "g")
        dl = self._delta(delta_local, "delta_local", g.shape)
        dm = self._delta(delta_mean, "delta_mean", g.shape)
        if out is not None and (not isinstance(out, Tensor) or out.shape != g.shape):
            raise ValueError(f"{self.name}: out must be a tensor of g's shape {tuple(g.shape)}, "
                             f"got {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
        state = self._buffers_for(key, g)
        work = self._with_scratch(key, state, g)
        pending = self._pending.pop(key, None)
        if "scratch" in work:  # a C(u) that is u itself (the message, in the scratch) must survive its reuse
            dl, dm = (t.clone() if isinstance(t, Tensor) and _shares_memory(t, work["scratch"]) else t
                      for t in (dl, dm))
            if pending is not None and pending[0] is g and pending[2] is work["scratch"] \
                    and (_version(g), _version(work["scratch"])) == (pending[1], pending[3]):
                work["message"] = work["scratch"]  # message(key, g) itself, untouched since
        result = self._commit(work, g, dl, dm)
        for b in self.buffers:  # a buffer replaced by the intact message: the old one is the next work buffer
            if work[b] is not state[b]:
                if work[b] is not work.get("message"):
                    raise AssertionError(f"{self.name}: _commit may replace a buffer by the message only")
                self._scratch[key], state[b] = state[b], work[b]
        if self.buffers:
            self._state[key] = state
        if not isinstance(result, Tensor):  # the mean itself (EF14, no feedback): decoded into its destination
            return result.to_dense().to(self.dtype) if out is None else result.write_to(out)
        return result.clone() if out is None else out.copy_(result)

    def _delta(self, delta: object, what: str, shape: torch.Size) -> Delta:
        """``delta`` checked: a dense tensor in ``dtype``, or a :class:`SparseDelta` (sparse COO converted) or
        :class:`LazyDelta`."""
        sparse = isinstance(delta, (SparseDelta, LazyDelta)) or (isinstance(delta, Tensor) and delta.is_sparse)
        if sparse and not self.sparse_deltas:
            raise ValueError(f"{self.name}: {what} must be dense (this method's sparse_deltas is False)")
        if isinstance(delta, Tensor) and delta.is_sparse:
            delta = SparseDelta.from_coo(delta)
        if isinstance(delta, (SparseDelta, LazyDelta)):
            if delta.shape != shape:
                raise ValueError(f"{self.name}: {what} has shape {tuple(delta.shape)}, expected {tuple(shape)}")
            return delta
        return self._convert(delta, what, shape)

    def warm_start(self, key: str, g_local: Tensor, g_mean: Tensor) -> None:
        """Dense warm start of ``key`` after one uncompressed exchange (``g_mean`` = mean of the ``g_local``).

        Sets ``hᵢ = g_local``, ``h = g_mean`` (and ``vᵢ = g_local`` for EF21-SGDM),
        errors to zero. EF14 and no feedback have no estimator: their state is reset to zeros.
        """
        self._pending.pop(key, None)
        g = self._convert(g_local, "g_local")
        gm = self._convert(g_mean, "g_mean", g.shape)
        if not self.buffers:
            return
        state = {b: torch.zeros(g.shape, dtype=self.dtype, device=g.device) for b in self.buffers}
        for b in self.buffers:
            if b in ("h_local", "v"):
                state[b].copy_(g)
            elif b == "h":
                state[b].copy_(gm)
        self._state[key] = state

    @abstractmethod
    def _message(self, s: dict[str, Tensor], g: Tensor) -> Tensor: ...

    @abstractmethod
    def _commit(self, s: dict[str, Tensor], g: Tensor, dl: Delta, dm: Delta) -> Tensor | SparseDelta:
        """Update ``s``; return the output (it may be a buffer of ``s`` or ``dm``: :meth:`commit` copies it).

        ``s["message"]``, when present, is ``message(key, g)`` itself, untouched: the method may
        update it in place and put it in ``s`` as one of its buffers (the replaced buffer becomes
        the next work buffer).
        """

    # ----- checkpointing -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        """``{"name", "config", "state": {key: {buffer: tensor}}}``: tensors and plain values only (clones)."""
        return {
            "name": self.name,
            "config": self.config(),
            "state": {k: {b: t.detach().clone() for b, t in s.items()} for k, s in self._state.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, object]) -> None:
        """Replace all state with ``state_dict`` (from :meth:`state_dict` of the same method)."""
        if state_dict.get("name") != self.name:
            raise ValueError(f"{self.name}: state_dict is for {state_dict.get('name')!r}")
        entries = state_dict.get("state")
        if not isinstance(entries, Mapping):
            raise ValueError(f"{self.name}: state_dict['state'] must be a mapping")
        new: dict[str, dict[str, Tensor]] = {}
        for key, bufs in entries.items():
            if not isinstance(bufs, Mapping) or set(bufs) != set(self.buffers):
                got = sorted(bufs) if isinstance(bufs, Mapping) else bufs
                raise ValueError(f"{self.name}: key {key!r} needs buffers {sorted(self.buffers)}, got {got}")
            shapes = {tuple(t.shape) for t in bufs.values() if isinstance(t, Tensor)}
            if (self.buffers and len(shapes) != 1) or not all(isinstance(t, Tensor) for t in bufs.values()):
                raise ValueError(f"{self.name}: key {key!r} needs tensors of one shape, got {bufs!r}")
            new[str(key)] = {b: self._convert(bufs[b], f"{key}.{b}").clone() for b in self.buffers}
        self._state = new
        self._pending.clear()
