"""PowerSGD: rank-r approximation by one step of subspace iteration (Vogels et al., NeurIPS 2019).

A tensor of shape ``(n, *rest)`` is viewed as an ``n × m`` matrix ``G``
(``m = prod(rest)``) and exchanged as two thin factors, ``r = min(rank, n, m)``:

0. ``M = G`` or, with ``error_feedback`` (as in the paper's training algorithm),
   ``M = G + e`` where ``e`` is this rank's error of the previous step (zero at first);
1. ``Q`` (``m × r``): the previous step's ``Q`` for this tensor when
   ``warm_start`` (zero columns redrawn, see ``_initial_q``), else a standard
   normal matrix from ``rng.generator(seed, 0 if warm_start else step, key)``,
   identical on every rank. A stored ``Q`` of another rank ``r'`` (the rank
   changed, e.g. by L-GreCo) keeps its first ``min(r, r')`` columns; the
   ``r − r'`` new ones come from ``rng.generator(seed, step, key)``, so the
   warm start survives a rank change and every rank agrees;
2. ``P = M Q``; ordered all-reduce; ``P ← P / n_workers``;
3. orthonormalize ``P``'s columns (modified Gram–Schmidt with one
   reorthogonalization per column; columns dependent on the earlier ones,
   zero columns included, become zero, never NaN; see :func:`orthonormalize_`);
4. ``Q = Mᵀ P``; ordered all-reduce; ``Q ← Q / n_workers``;
5. result ``P Qᵀ`` in ``x``'s shape (``Q`` the averaged one); ``Q`` is stored
   for the next step only now, and with ``error_feedback`` so is the new
   error ``e ← M − P Qᵀ``, so an exchange abandoned after round one (a
   non-finite step, a peer's bad factor) leaves the state untouched.

Both all-reduces are linear, so the result is ``P Pᵀ · mean(M)``: the mean
projected on the span of ``P``. At full rank (``r = min(n, m)``) that span
holds the column space of the mean (generically: ``Q`` is random or a warm
``Mᵀ P``), so the result is the mean itself, rank-deficient means included.

Error feedback, as torch's ``powerSGD_hook`` does it: the error uses the same
averaged ``Q`` as the output, so ``e`` differs per rank but its mean over ranks
is what the exchange left out of ``mean(M)``. Summed over steps, the outputs
are the summed mean gradients minus the current mean error,
``Σₜ outₜ = Σₜ mean(Gₜ) − mean(e_T)``: nothing is lost, only delayed. The
paper trains with it (its error-feedback SGD with momentum); without it, the
low-rank exchange is biased and the loss lags all-reduce's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import rng
from ..comm.collectives import AllReduce, Protocol
from .base import Compressor, TensorContext, WireBytes, check_finite, handed_over

__all__ = ["PowerSGD", "orthonormalize_"]


def orthonormalize_(p: Tensor, eps: float) -> Tensor:
    """Modified Gram–Schmidt on the columns of ``p``, in place, with one reorthogonalization per column.

    Left to right, column ``j`` (already stripped of the earlier columns'
    components by the updates of step 4) is:

    1. projected once more against the finished columns ``p[:, :j]``: float32
       MGS alone loses orthogonality in proportion to the condition number of
       ``p``; one more projection restores it to rounding level ("twice is
       enough", Giraud, Langou & Rozložník 2005);
    2. zeroed if its norm is now at most ``eps`` times its norm on entry (it
       was in the span of the earlier columns; an all-zero column included,
       so zeros give zeros, never NaN);
    3. otherwise divided by its norm: exactly unit, whatever the gradient's scale;
    4. removed from every later column (the modified Gram–Schmidt update).

    torch's ``powerSGD_hook`` divides by ``‖p_j‖ + eps`` instead, which
    shrinks columns of small norm, so ``P Pᵀ`` is no longer a projector and
    even the full-rank exchange misses the mean for small gradients.
    Branch-free and in a fixed order: deterministic, no GPU synchronization.
    """
    entry = torch.linalg.vector_norm(p, dim=0)
    for j in range(p.shape[1]):
        col = p[:, j]
        done = p[:, :j]
        col.sub_(done @ (done.t() @ col))
        norm = torch.linalg.vector_norm(col)
        col.mul_(torch.where(norm > eps * entry[j], 1 / norm, 0.0))
        rest = p[:, j + 1 :]
        rest.sub_(col.unsqueeze(1) * (col @ rest).unsqueeze(0))
    return p


@dataclass
class PowerSGD(Compressor):
    """Low-rank (``rank``) exchange of matrices in two ordered all-reduces, with warm-started ``Q`` per tensor.

    ``orthogonalization_epsilon`` is relative: a column of ``P`` whose norm
    after orthogonalization is at most ``eps`` times its norm before is
    treated as zero (see :func:`orthonormalize_`).

    ``error_feedback=True`` keeps a per-rank error ``e`` per tensor and adds
    it to the next gradient (module docstring, steps 0 and 5); it holds two
    float32 buffers per compressed tensor (``e`` and the scratch ``M`` is
    formed in) and sends no extra bytes. It is off by default, which keeps the
    behaviour, checkpoints and memory of earlier versions.
    """

    rank: int = 4
    warm_start: bool = True
    orthogonalization_epsilon: float = 1e-8
    error_feedback: bool = False
    name = "powersgd"

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"PowerSGD rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.warm_start, bool):
            raise ValueError(f"PowerSGD warm_start must be a bool, got {self.warm_start!r}")
        eps = self.orthogonalization_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < 1.0:
            raise ValueError(f"PowerSGD orthogonalization_epsilon must be a number in [0, 1), got {eps!r}")
        if not isinstance(self.error_feedback, bool):
            raise ValueError(f"PowerSGD error_feedback must be a bool, got {self.error_feedback!r}")
        self._q: dict[str, Tensor] = {}
        self._e: dict[str, Tensor] = {}
        self._scratch: dict[str, Tensor] = {}  # per tensor, the buffer M = G + e is formed in (not state)

    @staticmethod
    def matrix_shape(shape: torch.Size) -> tuple[int, int]:
        """``(n_rows, m)``: the matrix view of a tensor of ``shape``."""
        return shape[0], math.prod(shape[1:])

    def effective_rank(self, shape: torch.Size) -> int:
        """``r = min(rank, n_rows, m)``."""
        return min(self.rank, *self.matrix_shape(shape))

    def compressible(self, shape: torch.Size) -> bool:
        return len(shape) >= 2 and shape.numel() > 0

    def wire_bytes(self, shape: torch.Size) -> WireBytes:
        n_rows, m = self.matrix_shape(shape)
        return WireBytes(values=4 * (n_rows + m) * self.effective_rank(shape))

    def _initial_q(self, m: int, r: int, ctx: TensorContext, device: torch.device) -> Tensor:
        """Step 1: the warm ``Q`` (zero columns redrawn, columns scaled to unit norm) or a fresh standard normal.

        Zero columns come from all-zero gradients (unused parameters, DDP's
        Join) and from columns of ``P`` zeroed as dependent; kept, they would
        cap the rank of every later step, so they are redrawn from
        ``rng.generator(seed, step, key)``. Scaling the columns changes nothing
        in exact arithmetic (the orthonormalized ``P`` is the same) but keeps
        ``P = M Q`` at the gradient's scale rather than its square, which
        underflows float32 for small gradients. ``Q`` is identical on every
        rank, so is all of this.
        """
        stored = self._q.get(ctx.key) if self.warm_start else None
        if stored is None or stored.shape[0] != m:
            step = 0 if self.warm_start else ctx.step
            return torch.randn(m, r, generator=rng.generator(ctx.seed, step, ctx.key)).to(device)
        fresh = torch.randn(m, r, generator=rng.generator(ctx.seed, ctx.step, ctx.key)).to(device)
        kept = min(r, stored.shape[1])  # a rank change keeps the old columns, new ones are fresh
        q = torch.cat([stored[:, :kept].to(device), fresh[:, kept:]], dim=1)
        norms = torch.linalg.vector_norm(q, dim=0)
        q = torch.where(norms > 0, q, fresh)
        return q.div_(torch.linalg.vector_norm(q, dim=0))

    def _with_error(self, mat: Tensor, key: str) -> Tensor:
        """Step 0 with error feedback: ``M = G + e``, formed in this tensor's scratch buffer; ``e`` is not touched.

        The scratch is the previous step's error buffer (see :meth:`_commit_error`),
        so no gradient-sized tensor is allocated per step (on CPU a fresh one is
        page-faulted in, which can cost more than the addition itself).
        """
        error = self._e.get(key)
        if error is not None and error.shape != mat.shape:
            raise ValueError(f"powersgd: the error-feedback buffer of {key!r} has shape {tuple(error.shape)}, "
                             f"but the gradient's matrix view is {tuple(mat.shape)} (a checkpoint of another model?)")
        scratch = self._scratch.get(key)
        if scratch is None or scratch.shape != mat.shape or scratch.device != mat.device:
            scratch = self._scratch[key] = torch.empty_like(mat)
        if error is None:
            return scratch.copy_(mat)
        return torch.add(mat, error.to(mat.device), out=scratch)

    def _commit_error(self, key: str, m: Tensor, out: Tensor) -> None:
        """Step 5 with error feedback: ``e ← M − P Qᵀ`` in ``M``'s buffer; the old error buffer becomes the scratch."""
        old = self._e.get(key)
        self._e[key] = m.sub_(out)
        if old is not None and old.shape == m.shape and old.device == m.device:
            self._scratch[key] = old
        else:
            self._scratch.pop(key, None)

    def error(self, key: str) -> Tensor | None:
        """This rank's pending error-feedback buffer of ``key`` (its ``n × m`` matrix view; not a copy), or None."""
        return self._e.get(key)

    def resized(self, rank: int) -> PowerSGD:
        """A PowerSGD of another ``rank`` (same settings) sharing this one's warm-start and error stores.

        When a runtime switches a tensor between ranks (L-GreCo), the new rank
        starts from the old ``Q``: the first columns are kept, new columns are
        drawn from the shared seed (see ``_initial_q``); the error-feedback
        buffer is kept as it is (it lives in the gradient's space, whatever the rank).
        """
        other = PowerSGD(rank, self.warm_start, self.orthogonalization_epsilon, self.error_feedback)
        other._q = self._q
        other._e = self._e
        other._scratch = self._scratch
        return other

    def exchange(self, x: Tensor, ctx: TensorContext) -> Protocol[Tensor]:
        if not self.compressible(x.shape):
            raise ValueError(f"powersgd: cannot compress {ctx.key!r} of shape {tuple(x.shape)} (needs 2-D, non-empty)")
        n_rows, m = self.matrix_shape(x.shape)
        r = self.effective_rank(x.shape)
        mat = x.reshape(n_rows, m).to(torch.float32)
        if self.error_feedback:
            mat = self._with_error(mat, ctx.key)
        q = self._initial_q(m, r, ctx, mat.device)
        p_sum = yield AllReduce(mat @ q, ordered=True)
        check_finite(p_sum, f"powersgd P ({ctx.key})")
        p = orthonormalize_(p_sum / ctx.world_size, self.orthogonalization_epsilon)
        # Mᵀ P, reading M row by row (1.3-1.8× faster than mat.t() @ p), sent contiguous: a runtime that fuses
        # collectives returns it contiguous anyway, and BLAS may round P Qᵀ differently for the two layouts of Q.
        q_sum = yield AllReduce((p.t() @ mat).t().contiguous(), ordered=True)
        check_finite(q_sum, f"powersgd Q ({ctx.key})")
        q = q_sum / ctx.world_size
        target = handed_over(x, ctx)
        if target is not None:  # x is no longer read: no new gradient-sized tensor
            out = torch.matmul(p, q.t(), out=target.view(n_rows, m))
        else:
            out = p @ q.t()
        self._q[ctx.key] = q
        if self.error_feedback:
            self._commit_error(ctx.key, mat, out)
        return out.view(x.shape)

    def state_dict(self) -> dict[str, object]:
        """``{"q": {name: Q}}``, plus ``"e": {name: e}`` (``n × m``, this rank's own) with ``error_feedback``."""
        state: dict[str, object] = {"q": {key: q.clone() for key, q in self._q.items()}}
        if self.error_feedback:
            state["e"] = {key: e.clone() for key, e in self._e.items()}
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Replace the state (``{}`` clears it); ``ValueError`` unless it is ``{"q": {name: 2-D}, "e": {name: 2-D}}``.

        ``"e"`` (the error-feedback buffers) is only accepted with
        ``error_feedback=True``; where a tensor has both, ``e``'s ``m`` columns
        must match ``Q``'s ``m`` rows.
        """
        if not isinstance(state, dict) or set(state) - {"q", "e"}:
            raise ValueError(f"PowerSGD state must be a dict with the keys 'q' and 'e', got {state!r:.200}")
        qs = _load_matrices(state, "q")
        es = _load_matrices(state, "e")
        if es and not self.error_feedback:
            raise ValueError("PowerSGD state holds error-feedback buffers 'e', but this PowerSGD has "
                             "error_feedback=False")
        for key, e in es.items():
            if key in qs and qs[key].shape[0] != e.shape[1]:
                raise ValueError(f"PowerSGD state 'e'[{key!r}] of shape {tuple(e.shape)} does not fit 'q'[{key!r}] "
                                 f"of shape {tuple(qs[key].shape)}: m = {e.shape[1]} vs {qs[key].shape[0]}")
        self._q.clear()  # in place: stores shared by :meth:`resized` stay shared
        self._q.update(qs)
        self._e.clear()
        self._e.update(es)
        self._scratch.clear()


def _load_matrices(state: dict[str, object], part: str) -> dict[str, Tensor]:
    """Validated float32 copies of ``state[part]`` (``{}`` when absent): a dict of finite 2-D float tensors by name."""
    tensors = state.get(part, {})
    if not isinstance(tensors, dict):
        raise ValueError(f"PowerSGD state {part!r} must be a dict of tensors, got {type(tensors).__name__}")
    loaded = {}
    for key, t in tensors.items():
        if not isinstance(key, str) or not isinstance(t, Tensor):
            raise ValueError(f"PowerSGD state {part!r} must map names to tensors, got {key!r}: {type(t).__name__}")
        if t.dim() != 2 or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise ValueError(f"PowerSGD state {part!r}[{key!r}] must be a finite 2-D float tensor, "
                             f"got {t.dtype} of shape {tuple(t.shape)}")
        loaded[key] = t.detach().to(torch.float32, copy=True)
    return loaded
