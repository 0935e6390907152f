"""Two-round sketched top-k with exact values (Sketched-SGD, Ivkin et al., NeurIPS 2019).

The predecessor of FetchSGD (Rothchild et al. 2020): a count sketch only
*finds* the heavy coordinates; a second round fetches their exact values.
Momentum and error stay on each rank, dense and exact (Rothchild et al.'s
``error_type="local"``), as top-k with error feedback keeps them. Per tensor
``key`` of ``d`` elements, with ``s = d/ratio`` floats per rank and step split
into ``k = round(share·s)`` exact values and ``rows × cols ≈ s − k`` sketch cells:

1. ``u_i ← ρ·u_i + g_i``; ``e_i ← e_i + u_i`` (local momentum and error);
2. round 1: ordered all-reduce of the count sketch ``S(e_i)``, whose hashes are
   mixed from ``(seed, step, key)`` (fresh every step: nothing is stored in the
   sketch), so every rank holds ``S(Σ_i e_i)``;
3. every rank: ``J`` = the ``k`` coordinates of largest estimated magnitude in
   it (median over rows, :func:`~commlib.compress.sketch.unsketch_topk`), the same on every rank;
4. round 2: ordered all-reduce of the ``k`` values ``e_i[J]`` (no indices: every
   rank knows ``J``);
5. ``Δ[J] = Σ_i e_i[J]/n`` (exact), ``Δ`` zero elsewhere; ``e_i[J] ← 0`` and
   ``u_i[J] ← 0`` (error feedback and momentum masking).

Each rank sends ``4·(rows·cols + k)`` bytes. Step with plain SGD (momentum 0:
ρ lives here). Unlike FetchSGD's stateless clients, every rank keeps ``2·d``
floats of state, so it suits data-parallel training, not sparse participation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ... import ops, rng
from ...comm.collectives import AllReduce, Protocol
from ...errors import WireFormatError
from ...ops.reference import SKETCH_PRIME
from ..base import Compressor, TensorContext, WireBytes, check_finite
from .compressor import check_ratio
from .fetchsgd import unsketch_topk

__all__ = ["SketchedSGD"]

_BUFFERS = ("momentum", "error")


def _received(total: object, numel: int, what: str) -> Tensor:
    """``total`` if it is a finite float32 tensor of ``numel`` elements, else :class:`WireFormatError`."""
    if not isinstance(total, Tensor) or total.dtype != torch.float32 or total.numel() != numel:
        raise WireFormatError(f"{what}: expected a float32 sum of {numel} values")
    check_finite(total, what)
    return total


@dataclass
class SketchedSGD(Compressor):
    """Sketch to find the top ``k``, second round for their exact values; ``s = d/ratio`` floats in all per rank."""

    ratio: float = 20.0
    rows: int = 5
    share: float = 0.5
    momentum: float = 0.9
    chunk: int = 65536
    name = "sketched_sgd"

    def __post_init__(self) -> None:
        check_ratio(self.ratio, "SketchedSGD")
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or not 1 <= self.rows <= 64:
            raise ValueError(f"SketchedSGD rows must be an integer in [1, 64], got {self.rows!r}")
        share = self.share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share < 1.0:
            raise ValueError(f"SketchedSGD share (of the bytes for exact values) must be in (0, 1), got {share!r}")
        rho = self.momentum
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho < 1.0:
            raise ValueError(f"SketchedSGD momentum must be a number in [0, 1), got {rho!r}")
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"SketchedSGD chunk must be a positive integer, got {self.chunk!r}")
        self._state: dict[str, dict[str, Tensor]] = {}

    def count(self, numel: int) -> int:
        """k, the coordinates fetched exactly (and updated) per step."""
        return min(numel, max(1, round(self.share * numel / self.ratio)))

    def cols(self, numel: int) -> int:
        """Buckets per row: the sketch gets the ``s − k`` floats the exact values leave."""
        return max(1, round((numel / self.ratio - self.count(numel)) / self.rows))

    def compressible(self, shape: torch.Size) -> bool:
        return 0 < shape.numel() < SKETCH_PRIME

    def wire_bytes(self, shape: torch.Size) -> WireBytes:
        numel = shape.numel()
        return WireBytes(values=4 * (self.rows * self.cols(numel) + self.count(numel)))

    def exchange(self, x: Tensor, ctx: TensorContext) -> Protocol[Tensor]:
        numel = x.numel()
        if not self.compressible(x.shape):
            raise ValueError(f"sketched_sgd: cannot compress {ctx.key!r} with {numel} elements")
        old = self._state.get(ctx.key)
        if old is not None and old["error"].numel() != numel:
            raise ValueError(f"sketched_sgd: state of {ctx.key!r} has {old['error'].numel()} elements, not {numel}")
        flat = x.reshape(-1).to(torch.float32)
        momentum = flat.clone() if old is None else old["momentum"].to(flat.device).mul(self.momentum).add_(flat)
        error = momentum.clone() if old is None else old["error"].to(flat.device).add(momentum)
        seed = rng.mixed_seed(ctx.seed, ctx.step, f"{ctx.key}/sketched_sgd")
        shape, k = (self.rows, self.cols(numel)), self.count(numel)
        table = torch.zeros(shape, dtype=torch.float32, device=flat.device)
        ops.count_sketch_add_(table, error, seed)
        total = _received((yield AllReduce(table.view(-1), ordered=True)), table.numel(),
                          f"sketched_sgd sketch ({ctx.key})")
        _, idx = unsketch_topk(total.view(shape), seed, numel, k, self.chunk)
        exact = _received((yield AllReduce(error[idx], ordered=True)), k, f"sketched_sgd values ({ctx.key})")
        update = torch.zeros(numel, dtype=torch.float32, device=flat.device)
        update[idx] = exact / ctx.world_size
        self._state[ctx.key] = {"momentum": momentum.index_fill_(0, idx, 0.0), "error": error.index_fill_(0, idx, 0.0)}
        return update.view(x.shape)

    def state_dict(self) -> dict[str, object]:
        """``{"state": {name: {"momentum", "error"}}}``: this rank's dense buffers, cloned."""
        return {"state": {key: {b: t.clone() for b, t in s.items()} for key, s in self._state.items()}}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Replace the buffers (``{}`` clears them); ``ValueError`` unless laid out as by :meth:`state_dict`."""
        if not isinstance(state, Mapping) or set(state) - {"state"}:
            raise ValueError(f"SketchedSGD state must be a dict with the single key 'state', got {state!r:.200}")
        entries = state.get("state", {})
        if not isinstance(entries, Mapping):
            raise ValueError(f"SketchedSGD state 'state' must map names to buffers, got {type(entries).__name__}")
        loaded = {}
        for key, bufs in entries.items():
            if not isinstance(key, str) or not isinstance(bufs, Mapping) or set(bufs) != set(_BUFFERS):
                raise ValueError(f"SketchedSGD state for {key!r} needs exactly the buffers {list(_BUFFERS)}")
            tensors = [bufs[b] for b in _BUFFERS]
            if not all(isinstance(t, Tensor) and t.dim() == 1 for t in tensors) or tensors[0].shape != tensors[1].shape:
                raise ValueError(f"SketchedSGD state for {key!r} must hold two 1-D buffers of one length")
            if not all(bool(torch.isfinite(t).all()) for t in tensors):
                raise ValueError(f"SketchedSGD state for {key!r} must hold finite buffers")
            loaded[key] = {b: t.detach().to(torch.float32, copy=True) for b, t in zip(_BUFFERS, tensors)}
        self._state = loaded
