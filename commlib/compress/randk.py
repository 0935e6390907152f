"""Random-k sparsification with indices shared by all ranks (Stich et al. 2018; Wangni et al. 2018).

Every rank draws the same ``k = max(1, round(density·d))`` coordinates from a
random permutation seeded by ``(seed, step, key)`` (:func:`commlib.rng.generator`),
so no indices travel: the k selected values are summed by an ordered all-reduce
(4 bytes per kept entry) and scattered back into zeros. Steps of one exchange:

1. ``idx`` = a uniform random k-subset of ``range(d)`` (:func:`uniform_subset`), sorted, identical on every rank;
2. payload = ``x[idx]`` as float32, times ``d/k`` when ``unbiased``;
3. ordered all-reduce of the payloads; the sum is checked finite;
4. the sum is scattered into a zero tensor at ``idx`` and divided by the world size.

Unscaled, ``C(x)`` is contractive in expectation: ``E‖C(x) − x‖² = (1 − k/d)·‖x‖²``.
Scaled by ``d/k`` it is unbiased, ``E C(x) = x``, with variance ``(d/k − 1)·‖x‖²``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import rng
from ..errors import WireFormatError
from .base import LinearCompressor, TensorContext, WireBytes, check_density

__all__ = ["RandK", "uniform_subset"]


def uniform_subset(n: int, k: int, gen: torch.Generator) -> Tensor:
    """A uniform random k-subset of ``range(n)``, sorted, in O(k log k) when k ≪ n.

    Dense case (``4k ≥ n``): the first k of ``randperm(n)``. Sparse case:
    draw i.i.d. uniform indices until at least k distinct ones are seen, then
    keep k of those distinct ones chosen by a random permutation. The distinct
    set is exchangeable (its law is invariant under relabelling ``range(n)``)
    and the stopping rule depends only on its size, so the result is uniform
    over k-subsets, without the O(n) permutation.
    """
    if 4 * k >= n:
        return torch.randperm(n, generator=gen)[:k].sort().values
    seen = torch.empty(0, dtype=torch.int64)
    while seen.numel() < k:
        seen = torch.cat([seen, torch.randint(n, (k + k // 8 + 16,), generator=gen)]).unique()
    return seen[torch.randperm(seen.numel(), generator=gen)[:k]].sort().values


@dataclass
class RandK(LinearCompressor):
    """Keep a random fraction ``density`` of entries, the same ones on every rank; ``unbiased`` scales by d/k."""

    density: float
    unbiased: bool = False
    name = "randk"

    def __post_init__(self) -> None:
        check_density(self.density, "RandK")
        if not isinstance(self.unbiased, bool):
            raise ValueError(f"RandK unbiased must be a bool, got {self.unbiased!r}")
        # key -> ((seed, step, numel), indices): encode and decode of one step draw the permutation once.
        self._drawn: dict[str, tuple[tuple[int, int, int], Tensor]] = {}

    def count(self, numel: int) -> int:
        """Entries kept from a tensor of ``numel`` elements."""
        return min(numel, max(1, round(self.density * numel)))

    def compressible(self, shape: torch.Size) -> bool:
        return shape.numel() > 0

    def wire_bytes(self, shape: torch.Size) -> WireBytes:
        return WireBytes(values=4 * self.count(shape.numel()))

    def indices(self, numel: int, ctx: TensorContext) -> Tensor:
        """The kept coordinates (int64, sorted): a uniform random k-subset drawn from ``(seed, step, key)``."""
        tag = (ctx.seed, ctx.step, numel)
        cached = self._drawn.get(ctx.key)
        if cached is not None and cached[0] == tag:
            return cached[1]
        idx = uniform_subset(numel, self.count(numel), rng.generator(ctx.seed, ctx.step, ctx.key))
        self._drawn[ctx.key] = (tag, idx)
        return idx

    def _scale(self, numel: int) -> float:
        return numel / self.count(numel) if self.unbiased else 1.0

    def encode(self, x: Tensor, ctx: TensorContext) -> Tensor:
        flat = x.reshape(-1).to(torch.float32)
        idx = self.indices(flat.numel(), ctx).to(flat.device)
        values = flat[idx]
        scale = self._scale(flat.numel())
        return values.mul_(scale) if scale != 1.0 else values

    def decode(self, total: Tensor, shape: torch.Size, ctx: TensorContext, out: Tensor | None = None) -> Tensor:
        numel = shape.numel()
        k = self.count(numel)
        if total.dtype != torch.float32 or total.shape != (k,):
            raise WireFormatError(
                f"randk: expected a float32 sum of {k} values, got {total.dtype} of shape {tuple(total.shape)} "
                f"({ctx.key})"
            )
        out = torch.zeros(numel, dtype=torch.float32, device=total.device) if out is None else out.zero_()
        out[self.indices(numel, ctx).to(total.device)] = total
        return out.view(shape)

    def compress(self, x: Tensor, ctx: TensorContext) -> Tensor:
        """This rank's dense ``C(x)`` (float32): the payload scattered into zeros, as the exchange decodes it."""
        return self.decode(self.encode(x, ctx), x.shape, ctx)
