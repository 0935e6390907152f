"""Error tables: the compression error of every layer under every option, from accumulated gradients.

L-GreCo (Markov et al., MLSys 2024) measures, for each layer ``l`` and option
``c``, the error ``e[l, c]`` that compressing an accumulated gradient ``A_l``
with ``c`` causes. Here ``e[l, c] = ‖C_c(A_l) − A_l‖²`` (squared Frobenius
norm; the public implementation uses the unsquared norm, see
:class:`~commlib.adaptive.policy.LGreCo`'s ``error_metric``), computed for all
options of a family together rather than one compression per option:

* **top-k** (:func:`topk_errors`): the error of keeping ``k`` entries is the sum
  of squares of the ``d − k`` smallest magnitudes. One histogram pass over the
  float32 bit patterns of ``|A|`` (the top 16 bits: exponent and 7 mantissa
  bits, monotone in magnitude) gives per-bin counts and float64 sums of squares;
  a cumulative sum over bins places every ``k`` in its bin, and a second pass
  collects only those boundary bins, whose few elements are sorted exactly. The
  result equals the sorted-tail sum (what a full sort of ``|A|`` gives) up to
  float64 summation order, at the cost of two streaming passes instead of a sort.
* **QSGD** (:func:`qsgd_errors`): the *expected* squared error over the
  stochastic rounding, given the compressor's per-bucket scale, in closed form:
  ``E‖Q(x) − x‖² = Σ_buckets (scale/s)² · Σ_i p_i(1 − p_i)`` with
  ``p_i = frac(|x_i|·s/scale)`` — each element rounds to one of its two
  neighbouring levels, a Bernoulli(p_i) choice. One streaming pass per
  (bucket size, norm) computes the scales once and every level count ``s``.
* **PowerSGD** (:func:`powersgd_errors`): by default the best rank-``r`` error,
  the tail ``Σ_{i>r} σ_i²`` of the squared singular values, for every rank from
  one SVD (exact ``svdvals`` for small matrices, a randomized SVD for large
  ones, whose estimated tail is never below the true one). PowerSGD itself runs
  one step of subspace iteration per training step, warm-started from the last
  step's ``Q``: on a fixed matrix a single step from a random start is worse than
  the truncated SVD, while warm starts converge towards it. The SVD tail
  matches the public implementation's default ('Power', 5 iterations from a fresh
  start, close to SVD); ``power_iterations=k`` instead measures ``k`` steps of
  subspace iteration from one seeded Gaussian start, for every rank at once
  (the first ``r`` columns of an orthonormalized ``(AAᵀ)^(k−1)AΩ`` span exactly
  what a rank-``r`` start ``Ω[:, :r]`` reaches).
* **fp16 / bf16** (:func:`cast_errors`): the rounding error measured directly,
  ``‖scale·cast(A/scale) − A‖²``, where ``scale`` brings ``A`` back to the range
  of one rank's message (``A`` sums ``window`` steps and each rank sends ``g/n``),
  so overflow (error ``inf``) and underflow are judged at the real scale. fp32: 0.

:class:`ErrorAccumulator` builds the ``A_l``: the sum over a window of steps of
each layer's gradient plus, when given, its error-feedback buffer — the tensor
the compressor actually sees.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import rng
from ..compress import QSGD, PowerSGD, TopK
from .options import Option

__all__ = [
    "ErrorAccumulator",
    "cast_errors",
    "error_table",
    "powersgd_errors",
    "qsgd_errors",
    "topk_errors",
]

_CHUNK = 1 << 18  # elements per streaming chunk (1 MiB of float32: stays in cache across the passes on it)
_KEY_SHIFT = 16  # histogram key: the top 16 bits of |x|'s float32 pattern (sign bit 0, so 2**15 keys)
_NONFINITE_KEY = 0x7F80  # keys from here up hold inf and NaN


def _flat32(x: Tensor) -> Tensor:
    return x.detach().reshape(-1).to(torch.float32)


def _chunks(flat: Tensor, size: int = _CHUNK) -> Iterator[Tensor]:
    for start in range(0, flat.numel(), size):
        yield flat[start : start + size]


def _all_finite(t: Tensor) -> bool:
    """No inf or NaN in ``t`` (one read pass: min and max propagate NaN and show ±inf)."""
    return t.numel() == 0 or all(map(math.isfinite, torch.aminmax(t.detach().reshape(-1).float())))


def _sum_squares(flat: Tensor) -> float:
    return float(sum(float(c.to(torch.float64).square_().sum()) for c in _chunks(flat)))


def topk_errors(x: Tensor, counts: Sequence[int]) -> np.ndarray:
    """Squared error of keeping the ``k`` largest-magnitude entries of ``x``, for each ``k`` in ``counts``.

    Steps: (1) one pass: a histogram of ``|x|`` over the top 16 bits of its
    float32 pattern, with per-bin counts and float64 sums of squares; (2) for
    each ``k``, the ``d − k`` dropped entries are the smallest: whole bins below
    the bin holding the ``(d − k)``-th smallest, plus the smallest few of that
    boundary bin; (3) a second pass gathers the boundary bins' entries, sorted
    exactly. Ties do not matter: tied entries have equal squares.
    Raises ``ValueError`` for non-finite ``x`` or ``k`` outside ``[0, d]``.
    """
    flat = _flat32(x)
    n = flat.numel()
    drops = np.array([n - int(k) for k in counts], dtype=np.int64)
    if drops.size and (drops.min() < 0 or drops.max() > n):
        raise ValueError(f"top-k counts must lie in [0, {n}], got {list(counts)}")
    out = np.zeros(len(drops))
    if n == 0 or not drops.any():
        return out
    bins = 1 << (31 - _KEY_SHIFT)
    hist_n = torch.zeros(bins, dtype=torch.int64, device=flat.device)
    hist_sq = torch.zeros(bins, dtype=torch.float64, device=flat.device)
    for chunk in _chunks(flat):
        key = chunk.abs().view(torch.int32) >> _KEY_SHIFT
        hist_n += torch.bincount(key, minlength=bins)
        hist_sq += torch.bincount(key, weights=chunk.to(torch.float64).square_(), minlength=bins)
    hist_n, hist_sq = hist_n.cpu().numpy(), hist_sq.cpu().numpy()
    if hist_n[_NONFINITE_KEY:].any():
        raise ValueError("top-k error: the tensor holds inf or NaN")
    upto = np.cumsum(hist_n)  # entries in bins 0..j
    below_sq = np.concatenate([[0.0], np.cumsum(hist_sq)])  # sum of squares in bins < j
    active = drops > 0
    bin_of = np.searchsorted(upto, drops[active], side="left")  # bin holding the (d − k)-th smallest entry
    take = drops[active] - (upto[bin_of] - hist_n[bin_of])  # entries of that bin that are dropped (≥ 1)
    partial = take < hist_n[bin_of]
    tails = below_sq[bin_of + 1].copy()  # the whole boundary bin dropped
    if partial.any():
        lut = torch.zeros(bins, dtype=torch.bool, device=flat.device)
        lut[torch.as_tensor(np.unique(bin_of[partial]), device=flat.device)] = True
        vals = [chunk[lut.index_select(0, chunk.abs().view(torch.int32) >> _KEY_SHIFT)] for chunk in _chunks(flat)]
        vals_t = torch.cat(vals).abs().cpu()
        keys_t = vals_t.view(torch.int32) >> _KEY_SHIFT
        for i in np.flatnonzero(partial):
            members = vals_t[keys_t == int(bin_of[i])].to(torch.float64).sort().values
            tails[i] = below_sq[bin_of[i]] + float(members[: int(take[i])].square().sum())
    out[active] = tails
    return out


def qsgd_errors(x: Tensor, specs: Sequence[tuple[int, int, str]]) -> np.ndarray:
    """Expected squared error ``E_ξ‖Q(x) − x‖²`` of QSGD for each ``(levels s, bucket_size, norm)`` in ``specs``.

    Exactly what is measured: the variance of :class:`~commlib.compress.QSGD`'s
    stochastic rounding for this ``x``, averaged over the random ``ξ`` only
    (closed form, no sampling). Per bucket ``x_b`` with the compressor's
    ``scale`` (``‖x_b‖₂`` or ``max|x_b|``), element ``i`` has ``y_i = |x_i|·s/scale``,
    rounds to ``floor(y_i)`` or ``floor(y_i) + 1`` with ``P(up) = p_i = frac(y_i)``,
    so its squared error has mean ``(scale/s)²·p_i(1 − p_i)``. Steps, streamed
    in chunks of whole buckets of every size (``|x|`` computed once per chunk):
    for each (bucket size, norm), (1) per-bucket max and scale, normalized
    magnitudes ``v = |x|/scale`` (via ``|x|/max`` as the compressor does, so tiny
    buckets do not underflow); (2) for each ``s``, ``Σ_i p_i(1 − p_i)`` per bucket
    in float32; (3) weighted by ``(scale/s)²`` in float64 and summed. A zero
    bucket contributes nothing; padding is zeros.
    """
    flat = _flat32(x)
    groups: dict[tuple[int, str], list[int]] = {}
    for i, (levels, bucket, norm) in enumerate(specs):
        if levels < 1 or bucket < 1 or norm not in ("l2", "max"):
            raise ValueError(f"QSGD spec must be (levels >= 1, bucket_size >= 1, 'l2' | 'max'), got {specs[i]!r}")
        groups.setdefault((bucket, norm), []).append(i)
    period = math.lcm(*(bucket for bucket, _ in groups)) if groups else 1
    if len(groups) > 1 and period > 16 * _CHUNK:  # bucket sizes with a huge common multiple: one pass per group
        out = np.zeros(len(specs))
        for members in groups.values():
            out[members] = qsgd_errors(flat, [specs[i] for i in members])
        return out
    acc = np.zeros(len(specs))
    for chunk in _chunks(flat, period * max(1, _CHUNK // period)):
        pad = (-chunk.numel()) % period
        mags = torch.nn.functional.pad(chunk, (0, pad)).abs_() if pad else chunk.abs()
        scratch = torch.empty_like(mags)
        for (bucket, norm), members in groups.items():
            rows = mags.view(-1, bucket)
            top = rows.amax(dim=1, keepdim=True)
            v = rows / torch.where(top > 0, top, 1.0)
            if norm == "l2":
                c = torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_(min=1.0)
                v.div_(c)
                top = top * c
            scale_sq = top.squeeze(1).to(torch.float64).square_()
            for i in members:
                s = float(specs[i][0])
                p = v if s == 1.0 else torch.mul(v, s, out=scratch.view(-1, bucket)).frac_()
                per_bucket = p.sum(dim=1) - torch.linalg.vector_norm(p, dim=1).square_()
                acc[i] += float(torch.dot(scale_sq, per_bucket.to(torch.float64))) / (s * s)
    return acc


def _range_finder(mat: Tensor, columns: int, iterations: int, gen: torch.Generator) -> Tensor:
    """Orthonormal basis of ``(M Mᵀ)^iterations · M · Ω`` (``Ω`` Gaussian from ``gen``), orthonormalized each step."""
    omega = torch.randn(mat.shape[1], columns, generator=gen).to(mat.device)
    basis = torch.linalg.qr(mat @ omega).Q
    for _ in range(iterations):
        basis = torch.linalg.qr(mat @ torch.linalg.qr(mat.t() @ basis).Q).Q
    return basis


def powersgd_errors(
    x: Tensor,
    ranks: Sequence[int],
    *,
    power_iterations: int | None = None,
    generator: torch.Generator | None = None,
    exact_limit: int = 256,
    oversample: int | None = None,
    svd_iterations: int = 2,
) -> np.ndarray:
    """Squared error of a rank-``r`` PowerSGD approximation of ``x``'s matrix view, for each ``r`` in ``ranks``.

    ``power_iterations=None`` (default): the truncated-SVD tail ``Σ_{i>r} σ_i²``,
    a lower bound on any rank-``r`` approximation. Exact (float64 ``svdvals``,
    tail summed from the smallest singular value) when ``min(n, m) ≤ exact_limit``
    or the largest rank needs most of the spectrum; otherwise a randomized SVD
    (Halko et al. 2011: range finder with ``max(r) + oversample`` columns,
    ``oversample`` defaulting to ``max(8, max(r))``, and ``svd_iterations`` power
    iterations, then ``svdvals`` of ``QᵀM``), whose singular values never exceed
    the true ones, so the tail ``‖M‖² − Σ_{i≤r} σ̃_i²`` is never below the true
    tail (and within about 1 % of it even for slowly decaying spectra). ``power_iterations=k``: the error of ``k``
    steps of subspace iteration from the Gaussian start ``Ω[:, :r]``,
    ``‖M‖² − ‖P_rᵀM‖²`` with ``P_r`` the first ``r`` orthonormalized columns, for
    all ranks from one ``Ω`` (``k = 1`` is a cold-started PowerSGD step).
    Ranks beyond ``min(n, m)`` are exact: error 0.
    """
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(f"PowerSGD needs a non-empty tensor of at least 2 dimensions, got shape {tuple(x.shape)}")
    if not ranks or min(ranks) < 1:
        raise ValueError(f"PowerSGD ranks must be positive integers, got {list(ranks)}")
    if power_iterations is not None and power_iterations < 1:
        raise ValueError(f"power_iterations must be >= 1 or None, got {power_iterations!r}")
    n, m = PowerSGD.matrix_shape(x.shape)
    mat = x.detach().reshape(n, m).to(torch.float32)
    full = min(n, m)
    r_max = min(max(ranks), full)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    caps = np.minimum(np.asarray(ranks), full)
    oversample = max(8, r_max) if oversample is None else oversample
    if power_iterations is None and (full <= exact_limit or r_max + oversample >= full // 2):
        sigma_sq = torch.linalg.svdvals(mat.to(torch.float64)).square_().cpu().numpy()
        tail = np.concatenate([np.cumsum(sigma_sq[::-1])[::-1], [0.0]])  # tail[r] = Σ_{i≥r} σ_i²
        return tail[caps]
    total = _sum_squares(mat.reshape(-1))
    if power_iterations is None:
        wide = mat if n <= m else mat.t()  # same singular values; the range finder works in the smaller dimension
        basis = _range_finder(wide, min(r_max + oversample, full), svd_iterations, gen)
        captured = torch.linalg.svdvals((basis.t() @ wide).to(torch.float64)).square_()
    else:  # as PowerSGD: P = orth(M Q) with Q of m rows
        basis = _range_finder(mat, r_max, power_iterations - 1, gen)
        captured = (basis.t() @ mat).to(torch.float64).square_().sum(dim=1)
    head = np.concatenate([[0.0], np.cumsum(captured.cpu().numpy())])
    return np.maximum(total - head[caps], 0.0) * (caps < full)


def cast_errors(x: Tensor, dtype: torch.dtype, scale: float = 1.0) -> float:
    """``‖scale·cast(x/scale) − x‖²`` for a cast to ``dtype`` (fp16 or bf16); ``inf`` when the cast overflows.

    ``scale`` is the divisor that brings ``x`` to the range the wire really
    carries (for an accumulated gradient: the steps summed times the world size).
    Per chunk the squared rounding errors are summed in float32 (relative
    error about 1e-6), in float64 where that would underflow or overflow.
    """
    if not scale > 0 or scale == float("inf"):
        raise ValueError(f"cast scale must be a positive finite number, got {scale!r}")
    total = 0.0
    for chunk in _chunks(_flat32(x)):
        y = chunk / scale if scale != 1.0 else chunk
        diff = y.to(dtype).to(torch.float32).sub_(y)
        part = float(torch.dot(diff, diff))
        if not 1e-30 < part < 1e30:
            part = float(torch.linalg.vector_norm(diff, dtype=torch.float64)) ** 2
        total += part
    return total * scale * scale


def error_table(
    tensors: Mapping[str, Tensor],
    options: Sequence[Option],
    *,
    cast_scale: float | Mapping[str, float] = 1.0,
    power_iterations: int | None = None,
    seed: int = 0,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """The ``(layers, options)`` float64 table of squared errors; ``inf`` where an option does not apply.

    Layers are ``tensors`` in iteration order. Options of one family are
    evaluated together (one histogram, one pass per QSGD bucket size, one SVD).
    ``cast_scale`` (one number, or one per layer name) is :func:`cast_errors`'s ``scale``.
    PowerSGD's random matrices come from ``rng.generator(seed, 0, "lgreco/<name>")``.
    ``timings``, when given, receives the seconds spent per family (added).
    Raises ``ValueError`` when a tensor holds inf or NaN.
    """
    table = np.full((len(tensors), len(options)), np.inf)
    by_family: dict[str, list[int]] = {}
    for k, opt in enumerate(options):
        by_family.setdefault(opt.family, []).append(k)
    clock = timings if timings is not None else {}
    for row, (name, t) in enumerate(tensors.items()):
        if not _all_finite(t):
            raise ValueError(f"error table: layer {name!r} holds inf or NaN")
        for family, members in by_family.items():
            cols = [k for k in members if options[k].applicable(t.shape)]
            if not cols:
                continue
            start = time.perf_counter()
            if family == "topk":
                counts = [_built(options[k], TopK).count(t.numel()) for k in cols]
                table[row, cols] = topk_errors(t, counts)
            elif family == "qsgd":
                specs = [(q.s, q.bucket_size, q.norm) for q in (_built(options[k], QSGD) for k in cols)]
                table[row, cols] = qsgd_errors(t, specs)
            elif family == "powersgd":
                ranks = [int(options[k].param[0]) for k in cols]
                gen = rng.generator(seed, 0, f"lgreco/{name}", device="cpu")
                table[row, cols] = powersgd_errors(t, ranks, power_iterations=power_iterations, generator=gen)
            elif family == "fp32":
                table[row, cols] = 0.0
            else:
                dtype = torch.float16 if family == "fp16" else torch.bfloat16
                scale = cast_scale[name] if isinstance(cast_scale, Mapping) else cast_scale
                table[row, cols] = cast_errors(t, dtype, scale)
            clock[family] = clock.get(family, 0.0) + time.perf_counter() - start
    return table


def _built(option: Option, kind: type):
    compressor = option.build()
    assert isinstance(compressor, kind)
    return compressor


class ErrorAccumulator:
    """Per-layer sums of gradients (plus error-feedback buffers) over a window of up to ``window`` steps.

    Layers are counted separately, so a runtime may add a step's layers in
    several calls (one per DDP bucket); a layer added more than ``window``
    times raises. :meth:`add` leaves the state untouched and returns ``False``
    when any tensor holds inf or NaN (a step ``GradScaler`` will skip), so one
    bad step never poisons the statistics. Sums are float32 on the gradients' device.
    """

    def __init__(self, window: int) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"ErrorAccumulator window must be a positive integer, got {window!r}")
        self.window = window
        self._sums: dict[str, Tensor] = {}
        self._steps: dict[str, int] = {}

    def add(self, grads: Mapping[str, Tensor], feedback: Mapping[str, Tensor] | None = None) -> bool:
        """Add one step of some layers: ``A[name] += grads[name] + feedback.get(name, 0)``; ``False`` if skipped.

        Raises ``ValueError`` when a layer's window is already full, when
        ``feedback`` names a tensor not in ``grads``, or when a shape differs
        from the layer's earlier steps or its feedback.
        """
        feedback = feedback or {}
        if set(feedback) - set(grads):
            raise ValueError(f"feedback buffers for unknown layers: {sorted(set(feedback) - set(grads))}")
        for name, g in grads.items():
            e = feedback.get(name)
            if e is not None and e.shape != g.shape:
                raise ValueError(f"feedback for {name!r} has shape {tuple(e.shape)}, gradient {tuple(g.shape)}")
            if name in self._sums and self._sums[name].shape != g.shape:
                raise ValueError(f"layer {name!r} with shape {tuple(g.shape)} does not match its earlier steps")
            if self._steps.get(name, 0) >= self.window:
                raise ValueError(f"the window of {self.window} steps of layer {name!r} is full; reset() first")
        if not all(map(_all_finite, [*grads.values(), *feedback.values()])):
            return False
        for name, g in grads.items():
            if name in self._sums:
                self._sums[name].add_(g.detach())
            else:
                self._sums[name] = g.detach().to(torch.float32, copy=True)
            if name in feedback:
                self._sums[name].add_(feedback[name].detach())
            self._steps[name] = self._steps.get(name, 0) + 1
        return True

    def steps(self) -> dict[str, int]:
        """Steps summed so far, by layer (layers never added are absent)."""
        return dict(self._steps)

    def sums(self) -> dict[str, Tensor]:
        """The accumulated tensors by layer name (live views: read, do not modify)."""
        return dict(self._sums)

    def reset(self) -> None:
        self._sums, self._steps = {}, {}

    def state_dict(self) -> dict[str, object]:
        return {
            "window": self.window,
            "steps": dict(self._steps),
            "sums": {k: v.clone() for k, v in self._sums.items()},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict`; ``ValueError`` on a different window or malformed entries."""
        if not isinstance(state, Mapping) or set(state) != {"window", "steps", "sums"}:
            raise ValueError(f"ErrorAccumulator state needs keys window, steps, sums; got {state!r:.200}")
        if state["window"] != self.window:
            raise ValueError(f"ErrorAccumulator state has window {state['window']!r}, this one {self.window}")
        steps, sums = state["steps"], state["sums"]
        if not isinstance(sums, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) and v.dtype == torch.float32 for k, v in sums.items()
        ):
            raise ValueError("ErrorAccumulator sums must map layer names to float32 tensors")
        if not isinstance(steps, Mapping) or set(steps) != set(sums) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= self.window for v in steps.values()
        ):
            raise ValueError(f"ErrorAccumulator steps must map each summed layer to an integer in [1, {self.window}]")
        self._steps = dict(steps)
        self._sums = {k: v.clone() for k, v in sums.items()}
