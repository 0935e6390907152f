"""FetchSGD: momentum and error feedback inside a fixed count sketch (Ivkin et al. 2019; Rothchild et al. 2020).

Per tensor (parameter name) ``key`` of ``d`` elements, a count sketch of
``rows × cols`` cells (``rows·cols ≈ d/ratio``) with hashes that never change:
their seed is mixed from ``(seed, 0, key)``, so sketches of different steps add
up. State per key: the momentum sketch ``S_u`` and the error sketch ``S_e``,
identical on every rank. One step:

1. payload ``S(g_i)``: the count sketch of this rank's gradient (Charikar et al. 2002);
2. ordered all-reduce; ``S = Σ_i S(g_i)/n = S(mean g)`` by linearity;
3. every rank: ``S_u ← ρ·S_u + S``; ``S_e ← S_e + S_u`` (virtual momentum and error);
4. ``Δ`` = the ``k`` coordinates of largest estimated magnitude, estimates being
   the median over rows of ``sign·S_e[row, bucket]`` (:func:`unsketch_topk`,
   chunked: memory ``O(k + chunk + sketch)``);
5. the cells that ``S(Δ)`` touches are zeroed in ``S_e`` and ``S_u`` (the
   reference implementation's momentum and error masking), state committed,
   and ``Δ`` returned.

The learning rate stays outside: step with plain SGD (no momentum, it lives in
the sketch) at rate η. Rothchild et al. accumulate ``η·S_u`` in ``S_e``; as the
median and top-k selection are positively homogeneous, ``η·Δ`` here equals
their update for a constant η. No rank needs a server: the all-reduced sketch
and everything computed from it are the same bits everywhere.

Step 5 follows the reference implementation (kiddyboots216/CommEfficient), not
line 14 of the paper's Algorithm 1, which subtracts ``S(Δ)`` from ``S_e``.
Subtraction keeps ``S_e = S(e)`` only when the recovered values are accurate;
in an overloaded sketch (many coordinates per cell) they are mostly collision
noise, and subtracting them feeds that noise back: measured on a Gaussian
128×128 input at d/20, 5 rows, k = cols, ‖S_e‖ grew about 4.5× per step
(758 → 3.8e7 in 8 steps) while zeroing kept it near 230, and every digits run
with subtraction diverged. Zeroing is a projection, so it never grows the sketch.
Each tensor (parameter name) has its own sketch, so the result does not depend
on how DDP groups tensors into buckets.
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
from ..base import Compressor, TensorContext, WireBytes, check_density, check_finite
from .compressor import check_ratio

__all__ = ["FetchSGD", "unsketch_topk"]

_BUFFERS = ("momentum", "error")


def unsketch_topk(table: Tensor, seed: int, length: int, k: int, chunk: int = 65536) -> tuple[Tensor, Tensor]:
    """The ``k`` heavy hitters of a count sketch: ``(values, int64 indices)``, indices increasing.

    Estimates for coordinates ``[0, length)`` (median over rows,
    :func:`commlib.ops.count_unsketch`) are computed ``chunk`` at a time; a
    running top-k (:func:`commlib.ops.topk_magnitude`) keeps the best ``k``
    candidates. Candidates stay sorted by index and each chunk's indices exceed
    the previous ones, so ties go to the lower index exactly as in one top-k
    over all ``length`` estimates: the result does not depend on ``chunk``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= length:
        raise ValueError(f"unsketch_topk needs 1 <= k <= length = {length}, got k = {k!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"unsketch_topk chunk must be a positive integer, got {chunk!r}")
    values = torch.empty(0, dtype=torch.float32, device=table.device)
    indices = torch.empty(0, dtype=torch.int64, device=table.device)
    for start in range(0, length, chunk):
        estimates = ops.count_unsketch(table, seed, start, min(chunk, length - start))
        best_v, best_i = ops.topk_magnitude(estimates, min(k, estimates.numel()))
        values = torch.cat([values, best_v])
        indices = torch.cat([indices, best_i.to(torch.int64) + start])
        if values.numel() > k:
            keep_v, keep = ops.topk_magnitude(values, k)
            values, indices = keep_v, indices[keep.to(torch.int64)]
    return values, indices


@dataclass
class FetchSGD(Compressor):
    """FetchSGD per tensor: sketch of ``rows × cols ≈ d/ratio`` cells, top ``density·d`` unsketched each step.

    Returns the sparse update ``Δ`` in gradient units: use an optimizer without
    momentum (``momentum`` here is ρ, applied in the sketch).
    """

    ratio: float = 20.0
    rows: int = 5
    density: float = 0.01
    momentum: float = 0.9
    chunk: int = 65536
    name = "fetchsgd"

    def __post_init__(self) -> None:
        check_ratio(self.ratio, "FetchSGD")
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or not 1 <= self.rows <= 64:
            raise ValueError(f"FetchSGD rows must be an integer in [1, 64], got {self.rows!r}")
        check_density(self.density, "FetchSGD")
        rho = self.momentum
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho < 1.0:
            raise ValueError(f"FetchSGD momentum must be a number in [0, 1), got {rho!r}")
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"FetchSGD chunk must be a positive integer, got {self.chunk!r}")
        self._state: dict[str, dict[str, Tensor]] = {}

    def cols(self, numel: int) -> int:
        """Buckets per row for a tensor of ``numel`` elements."""
        return max(1, round(numel / (self.ratio * self.rows)))

    def count(self, numel: int) -> int:
        """k, the coordinates updated per step."""
        return min(numel, max(1, round(self.density * numel)))

    def compressible(self, shape: torch.Size) -> bool:
        return 0 < shape.numel() < SKETCH_PRIME

    def wire_bytes(self, shape: torch.Size) -> WireBytes:
        return WireBytes(values=4 * self.rows * self.cols(shape.numel()))

    @staticmethod
    def hash_seed(ctx: TensorContext) -> int:
        """The fixed hash seed of tensor ``ctx.key``: mixed from ``(seed, 0, key)``, the same every step."""
        return rng.mixed_seed(ctx.seed, 0, f"{ctx.key}/fetchsgd")

    def exchange(self, x: Tensor, ctx: TensorContext) -> Protocol[Tensor]:
        numel = x.numel()
        if not self.compressible(x.shape):
            raise ValueError(f"fetchsgd: cannot compress {ctx.key!r} with {numel} elements")
        seed, shape = self.hash_seed(ctx), (self.rows, self.cols(numel))
        flat = x.reshape(-1).to(torch.float32)
        table = torch.zeros(shape, dtype=torch.float32, device=flat.device)
        ops.count_sketch_add_(table, flat, seed)
        total = yield AllReduce(table.view(-1), ordered=True)
        if not isinstance(total, Tensor) or total.dtype != torch.float32 or total.numel() != table.numel():
            raise WireFormatError(f"fetchsgd: expected a float32 sum of {table.numel()} cells ({ctx.key})")
        check_finite(total, f"fetchsgd ({ctx.key})")
        mean = total.view(shape) / ctx.world_size
        old = self._state.get(ctx.key)
        if old is not None and old["momentum"].shape != shape:
            raise ValueError(f"fetchsgd: state of {ctx.key!r} has shape {tuple(old['momentum'].shape)}, "
                             f"expected {shape} for {numel} elements")
        momentum = mean if old is None else old["momentum"].to(mean.device).mul(self.momentum).add_(mean)
        error = momentum.clone() if old is None else old["error"].to(mean.device).add(momentum)
        values, idx = unsketch_topk(error, seed, numel, self.count(numel), self.chunk)
        update = torch.zeros(numel, dtype=torch.float32, device=flat.device)
        update[idx] = values
        touched = torch.zeros(shape, dtype=torch.float32, device=flat.device)
        ops.count_sketch_add_(touched, update, seed)
        hit = touched != 0
        self._state[ctx.key] = {"momentum": momentum.masked_fill(hit, 0.0), "error": error.masked_fill_(hit, 0.0)}
        return update.view(x.shape)

    def state_dict(self) -> dict[str, object]:
        """``{"state": {name: {"momentum", "error"}}}``: the sketches, cloned."""
        return {"state": {key: {b: t.clone() for b, t in s.items()} for key, s in self._state.items()}}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Replace the sketches (``{}`` clears them); ``ValueError`` unless laid out as by :meth:`state_dict`."""
        if not isinstance(state, Mapping) or set(state) - {"state"}:
            raise ValueError(f"FetchSGD state must be a dict with the single key 'state', got {state!r:.200}")
        entries = state.get("state", {})
        if not isinstance(entries, Mapping):
            raise ValueError(f"FetchSGD state 'state' must map names to sketches, got {type(entries).__name__}")
        loaded = {}
        for key, bufs in entries.items():
            if not isinstance(key, str) or not isinstance(bufs, Mapping) or set(bufs) != set(_BUFFERS):
                raise ValueError(f"FetchSGD state for {key!r} needs exactly the sketches {list(_BUFFERS)}")
            tensors = [bufs[b] for b in _BUFFERS]
            if not all(isinstance(t, Tensor) and t.dim() == 2 and t.shape[0] == self.rows for t in tensors):
                raise ValueError(f"FetchSGD state for {key!r} must hold {self.rows}-row 2-D sketches")
            if tensors[0].shape != tensors[1].shape or not all(bool(torch.isfinite(t).all()) for t in tensors):
                raise ValueError(f"FetchSGD state for {key!r} must hold finite sketches of one shape")
            loaded[key] = {b: t.detach().to(torch.float32, copy=True) for b, t in zip(_BUFFERS, tensors)}
        self._state = loaded
