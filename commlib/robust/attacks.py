"""Byzantine attacks, for simulation and benchmarks.

An attack is a callable ``attack(honest, f, step=0) -> Tensor[f, d]``: it sees
the h honest vectors (rows of ``honest``, h ≥ 1) that are sent this step — the
omniscient threat model of the literature — and returns the f Byzantine ones
(n = h + f). Random attacks draw from ``generator(seed, step, key)``, never the
global RNG, so a run is reproducible. Label flipping is a data-side attack
(:class:`LabelFlip`): the simulator makes the Byzantine workers compute honest
gradients on flipped labels.

Notation: μ the honest mean, σ the per-coordinate standard deviation (ddof 1;
0 when h = 1).

References: Xie, Koyejo, Gupta, "Fall of empires: breaking Byzantine-tolerant SGD by inner product
manipulation", UAI 2019 (IPM); Baruch, Baruch, Goldberg, "A little is enough: circumventing defenses for
distributed learning", NeurIPS 2019 (ALIE); Allouah et al., "Fixing by mixing", AISTATS 2023, and the ByzFL
library (optimal IPM/ALIE by line search); Shejwalkar, Houmansadr, "Manipulating the Byzantine: optimizing model
poisoning attacks and defenses for federated learning", NDSS 2021 (MinMax, MinSum); Karimireddy, He, Jaggi,
ICLR 2022 (mimic); Almasi et al., ICLR 2025 (uniform random, drop).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import torch
from torch import Tensor

from ..rng import generator
from .base import Aggregator, check_count, check_matrix, check_positive
from .preagg import Compose, PreAggregator

__all__ = [
    "ALIE",
    "IPM",
    "Attack",
    "Drop",
    "Gaussian",
    "LabelFlip",
    "Mimic",
    "MinMax",
    "MinSum",
    "NonFinite",
    "OptimalALIE",
    "OptimalIPM",
    "SignFlip",
    "Uniform",
    "alie_z",
    "flip_labels",
    "line_maximize",
]


def _std(honest: Tensor) -> Tensor:
    """Per-coordinate standard deviation, ddof 1 (0 for one row); two passes, much faster than ``Tensor.std(0)``."""
    h = honest.shape[0]
    if h == 1:
        return torch.zeros_like(honest[0])
    centred = honest - honest.mean(dim=0)
    return (centred * centred).sum(dim=0).div_(h - 1).sqrt_()


def _repeat(v: Tensor, f: int) -> Tensor:
    return v.unsqueeze(0).expand(f, -1).clone()


class Attack:
    """Base: ``__call__`` checks its arguments and calls ``_attack(honest, f, step)`` when f > 0."""

    name = "attack"

    def __call__(self, honest: Tensor, f: int, step: int = 0) -> Tensor:
        honest = check_matrix(honest, "honest")
        f = check_count(f, "f")
        if f == 0:
            return honest.new_zeros(0, honest.shape[1])
        return self._attack(honest, f, step)

    def _attack(self, honest: Tensor, f: int, step: int) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SignFlip(Attack):
    """Every Byzantine worker sends −μ (ByzFL's SignFlipping)."""

    name = "sign_flip"

    def _attack(self, honest: Tensor, f: int, step: int) -> Tensor:
        return _repeat(-honest.mean(dim=0), f)


class IPM(Attack):
    """Inner-product manipulation (Xie et al. 2019): every Byzantine worker sends −ε·μ."""

    name = "ipm"

    def __init__(self, eps: float = 0.1) -> None:
        self.eps = check_positive(eps, "IPM eps")

    def _attack(self, honest: Tensor, f: int, step: int) -> Tensor:
        return _repeat(-self.eps * honest.mean(dim=0), f)

    def __repr__(self) -> str:
        return f"IPM(eps={self.eps})"


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z_max: with s = ⌊n/2 + 1⌋ − f supporters needed, z = Φ⁻¹((n − s)/n).

    (epfml and Blades use Φ⁻¹((n − f − s)/(n − f)) instead: 0.2104 at n = 15, f = 3, vs 0.4307 here.)
    """
    check_count(n, "n", minimum=1)
    check_count(f, "f")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ValueError(f"ALIE z is undefined for n={n}, f={f}: (n − s)/n = {p} with s = ⌊n/2 + 1⌋ − f = {s}")
    return NormalDist().inv_cdf(p)


class ALIE(Attack):
    """A little is enough (Baruch et al. 2019): every Byzantine worker sends μ − z·σ, z = :func:`alie_z` (n, f)
    unless given."""

    name = "alie"

    def __init__(self, z: float | None = None) -> None:
        self.z = None if z is None else float(z)

    def _attack(self, honest: Tensor, f: int, step: int) -> Tensor:
        z = alie_z(honest.shape[0] + f, f) if self.z is None else self.z
        return _repeat(honest.mean(dim=0) - z * _std(honest), f)

    def __repr__(self) -> str:
        return f"ALIE(z={self.z})"


def line_maximize(objective: Callable[[float], float], evals: int = 20, start: float = 0.0, delta: float = 10.0,
                  ratio: float = 0.8) -> float:
    """Maximize ``objective`` over τ ≥ 0 with ``evals`` evaluations; return the best τ.

    Expansion: from ``start``, try τ + δ, doubling δ after each improvement, until
    one fails. Contraction: δ ← ratio·δ, try τ + δ and max(τ − δ, 0) around the
    best τ, shrinking δ by ``ratio`` every round. Deterministic.
    """
    best_x, best_y = start, objective(start)
    used = 1
    while used < evals:
        x = best_x + delta
        y = objective(x)
        used += 1
        if y <= best_y:
            break
        best_x, best_y = x, y
        delta *= 2.0
    while used < evals:
        delta *= ratio
        for x in (best_x + delta, max(best_x - delta, 0.0)):
            if used >= evals:
                break
            y = objective(x)
            used += 1
            if y > best_y:
                best_x, best_y = x, y
    return best_x


class _Optimal(Attack):
    """Scale τ of a family b(τ) chosen by :func:`line_maximize` to maximize ‖F(H ∪ f·b(τ)) − μ‖.

    F is ``Compose(preaggregators, rule)`` evaluated on the honest rows followed by
    f copies of b(τ) (the simulator's order), at the current step, on a deep copy
    of the rule (a stateful rule's state is seen, never changed).
    """

    def __init__(self, rule: Aggregator, preaggregators: Sequence[PreAggregator] = (), evals: int = 20,
                 start: float = 0.0, delta: float = 10.0, ratio: float = 0.8) -> None:
        self.pipeline = Compose(preaggregators, rule)
        self.evals = check_count(evals, f"{type(self).__name__} evals", minimum=1)
        if not (isinstance(start, (int, float)) and start >= 0):
            raise ValueError(f"{type(self).__name__} start must be a number >= 0, got {start!r}")
        self.start = float(start)
        self.delta = check_positive(delta, f"{type(self).__name__} delta")
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"{type(self).__name__} ratio must be in (0, 1), got {ratio!r}")
        self.ratio = float(ratio)

    def _family(self, mu: Tensor, sigma: Tensor, tau: float) -> Tensor:
        raise NotImplementedError

    def _attack(self, honest: Tensor, f: int, step: int) -> Tensor:
        mu, sigma = honest.mean(dim=0), _std(honest)

        def damage(tau: float) -> float:
            X = torch.cat([honest, _repeat(self._family(mu, sigma, tau), f)])
            out = copy.deepcopy(self.pipeline)(X, step)
            return float(torch.linalg.vector_norm((out - mu).double()))

        tau = line_maximize(damage, self.evals, self.start, self.delta, self.ratio)
        return _repeat(self._family(mu, sigma, tau), f)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r})"


class OptimalIPM(_Optimal):
    """IPM with its scale chosen against the rule in use: b(τ) = −τ·μ."""

    name = "optimal_ipm"

    def _family(self, mu: Tensor, sigma: Tensor, tau: float) -> Tensor:
        return -tau * mu


class OptimalALIE(_Optimal):
    """ALIE with its scale chosen against the rule in use: b(τ) = μ − τ·σ."""

    name = "optimal_alie"

    def _family(self, mu: Tensor, sigma: Tensor, tau: float) -> Tensor:
        return mu - tau * sigma


def _direction(honest: Tensor, kind: str) -> Tensor:
    mu = honest.mean(dim=0)
    if kind == "std":
        return -_std(honest)
    if kind == "unit":
        return -mu / torch.linalg.vector_norm(mu).clamp_min(torch.finfo(mu.dtype).tiny)
    return -torch.sign(mu)


def _largest_root(a: Tensor, b: Tensor, c: float) -> Tensor:
    """Largest γ ≥ 0 with a + 2bγ + cγ² ≤ 0 per entry (a ≤ 0, c > 0): (−b + √(b² − ac))/c."""
    return ((-b + (b * b - a * c).clamp_min(0.0).sqrt()) / c).clamp_min(0.0)


class _Shejwalkar(Attack):
    """b = μ + γ·p for the largest γ satisfying the attack's distance constraint (closed form: the constraint is
    quadratic in γ and holds at γ = 0). p: ``"std"`` −σ, ``"unit"`` −μ/‖μ‖, ``"sign"`` −sign(μ)."""

    def __init__(self, direction: str = "std") -> None:
        if direction not in ("std", "unit", "sign"):
            raise ValueError(f"{type(self).__name__} direction must be 'std', 'unit' or 'sign', got {direction!r}")
        self.direction = direction

    def _gamma(self, H: Tensor, mu: Tensor, p: Tensor) -> float:
        raise NotImplementedError

    def _attack(self, honest: Tensor, f: int, step: int) -> Tensor:
        H = honest.double()
        mu = H.mean(dim=0)
        p = _direction(H, self.direction)
        gamma = self._gamma(H, mu, p) if float(p @ p) > 0 else 0.0
        return _repeat((mu + gamma * p).to(honest.dtype), f)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(direction={self.direction!r})"


def _pairwise_sq(H: Tensor) -> Tensor:
    return torch.cdist(H, H, compute_mode="donot_use_mm_for_euclid_dist").pow(2)


class MinMax(_Shejwalkar):
    """MinMax (Shejwalkar & Houmansadr 2021): the largest γ with max_i ‖b − hᵢ‖ ≤ max_{i,j} ‖hᵢ − hⱼ‖."""

    name = "min_max"

    def _gamma(self, H: Tensor, mu: Tensor, p: Tensor) -> float:
        bound = float(_pairwise_sq(H).max())
        diff = mu - H
        return float(_largest_root((diff * diff).sum(dim=1) - bound, diff @ p, float(p @ p)).min())


class MinSum(_Shejwalkar):
    """MinSum (Shejwalkar & Houmansadr 2021): the largest γ with Σᵢ ‖b − hᵢ‖² ≤ max_i Σⱼ ‖hᵢ − hⱼ‖²."""

    name = "min_sum"

    def _gamma(self, H: Tensor, mu: Tensor, p: Tensor) -> float:
        bound = float(_pairwise_sq(H).sum(dim=1).max())
        diff = mu - H
        h = H.shape[0]
        return float(_largest_root((diff * diff).sum() - bound, (diff @ p).sum(), h * float(p @ p)))


class Mimic(Attack):
    """Mimic (Karimireddy et al. 2022): every Byzantine worker copies honest worker ``index``."""

    name = "mimic"

    def __init__(self, index: int = 0) -> None:
        self.index = check_count(index, "Mimic index")

    def _attack(self, honest: Tensor, f: int, step: int) -> Tensor:
        if self.index >= honest.shape[0]:
            raise ValueError(f"Mimic index {self.index} out of range for {honest.shape[0]} honest vectors")
        return _repeat(honest[self.index], f)

    def __repr__(self) -> str:
        return f"Mimic(index={self.index})"


class Gaussian(Attack):
    """Every Byzantine worker sends its own N(mean, std²)ᵈ draw from ``generator(seed, step, "attack/gaussian")``."""

    name = "gaussian"

    def __init__(self, mean: float = 0.0, std: float = 1.0, seed: int = 0) -> None:
        self.mean, self.std = float(mean), check_positive(std, "Gaussian std")
        self.seed = check_count(seed, "Gaussian seed")

    def _attack(self, honest: Tensor, f: int, step: int) -> Tensor:
        gen = generator(self.seed, step, "attack/gaussian")
        noise = torch.randn((f, honest.shape[1]), generator=gen, dtype=honest.dtype)
        return noise.mul_(self.std).add_(self.mean)

    def __repr__(self) -> str:
        return f"Gaussian(mean={self.mean}, std={self.std}, seed={self.seed})"


class Uniform(Attack):
    """Every Byzantine worker sends its own U[low, high)ᵈ draw (FA's "random" attack: U[0, 1))."""

    name = "uniform"

    def __init__(self, low: float = 0.0, high: float = 1.0, seed: int = 0) -> None:
        if not float(low) < float(high):
            raise ValueError(f"Uniform needs low < high, got low={low!r}, high={high!r}")
        self.low, self.high = float(low), float(high)
        self.seed = check_count(seed, "Uniform seed")

    def _attack(self, honest: Tensor, f: int, step: int) -> Tensor:
        gen = generator(self.seed, step, "attack/uniform")
        u = torch.rand((f, honest.shape[1]), generator=gen, dtype=honest.dtype)
        return u.mul_(self.high - self.low).add_(self.low)

    def __repr__(self) -> str:
        return f"Uniform(low={self.low}, high={self.high}, seed={self.seed})"


class NonFinite(Attack):
    """Every Byzantine worker sends +∞ (``value="inf"``, ByzFL) or NaN (``value="nan"``) everywhere."""

    name = "non_finite"

    def __init__(self, value: str = "inf") -> None:
        if value not in ("inf", "nan"):
            raise ValueError(f"NonFinite value must be 'inf' or 'nan', got {value!r}")
        self.value = value

    def _attack(self, honest: Tensor, f: int, step: int) -> Tensor:
        return honest.new_full((f, honest.shape[1]), float(self.value))

    def __repr__(self) -> str:
        return f"NonFinite(value={self.value!r})"


class Drop(Attack):
    """Lossy workers (FA's "drop", which the authors' code leaves a no-op): Byzantine worker j sends honest row
    j mod h with a random ``fraction`` of its coordinates zeroed (``generator(seed, step, "attack/drop")``)."""

    name = "drop"

    def __init__(self, fraction: float = 0.1, seed: int = 0) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"Drop fraction must be in [0, 1], got {fraction!r}")
        self.fraction = float(fraction)
        self.seed = check_count(seed, "Drop seed")

    def _attack(self, honest: Tensor, f: int, step: int) -> Tensor:
        h, d = honest.shape
        out = honest[torch.arange(f) % h].clone()
        gen = generator(self.seed, step, "attack/drop")
        count = round(self.fraction * d)
        for row in out:
            row[torch.randperm(d, generator=gen)[:count]] = 0.0
        return out

    def __repr__(self) -> str:
        return f"Drop(fraction={self.fraction}, seed={self.seed})"


def flip_labels(labels: Tensor, classes: int) -> Tensor:
    """Label flipping: y ↦ classes − 1 − y."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    check_count(classes, "classes", minimum=1)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    return classes - 1 - labels


class LabelFlip:
    """Data-side attack: the Byzantine workers run the honest protocol on labels y ↦ C − 1 − y
    (:func:`flip_labels`). The simulator applies it when computing their gradients."""

    name = "label_flip"

    def labels(self, labels: Tensor, classes: int) -> Tensor:
        return flip_labels(labels, classes)

    def __repr__(self) -> str:
        return "LabelFlip()"
