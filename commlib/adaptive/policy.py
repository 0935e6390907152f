"""The L-GreCo policy: a schedule of layerwise re-solves, as pure state a runtime drives.

Markov et al., "L-GreCo: Layerwise-adaptive gradient compression for efficient
data-parallel deep learning", MLSys 2024. Every ``period`` steps the policy
measures each layer's compression error under every option on gradients
accumulated over the last ``window`` steps (:mod:`.tables`), prices every
option (:mod:`.cost`), and picks one option per layer minimizing total cost
within ``α`` times the error of the uniform default (:mod:`.dp`).

Schedule, for a step counter ``τ`` counting compressed steps (the runtime runs
its dense warm-up first and starts ``τ`` at 0 after it):

1. ``τ < first_solve`` (default ``period``): every layer uses the uniform default
   (``default_option``; a layer it cannot compress — a bias for PowerSGD — uses ``fp32``).
2. Steps ``τ ∈ [s − window, s)`` before each re-solve step ``s`` (``first_solve``, then the
   multiples of ``period`` after it): :meth:`LGreCo.wants_gradients`
   is true; the runtime feeds :meth:`LGreCo.observe` the tensors the compressor
   is about to see (gradient plus error-feedback buffer), by layer name — all
   layers at once or bucket by bucket, each layer at most once per step.
3. At ``τ = s`` (or the first :meth:`LGreCo.decide` after it):
   :meth:`LGreCo.decide` re-solves from the accumulated sums and returns the
   decision, an int64 tensor of option indices (one per layer, registration
   order) that the runtime broadcasts as a tensor — never a pickled object.
   Ranks without statistics (if only rank 0 observes) keep their decision in
   ``decide`` and take the broadcast one with :meth:`LGreCo.load_decision`.
4. The runtime maps indices to compressors with :attr:`LGreCo.options`
   (``options[i].build()``, or reconfigures its existing ones).

With ``once=True`` the first due re-solve (at ``τ = first_solve``) is the last: the
policy then holds its decision (no more windows or re-solves) — on every rank
alike, solved or skipped, so the runtime's broadcasts stay matched.

With ``refine_time=True`` (a :class:`~commlib.adaptive.cost.TimeCost` only), the runtime
times its collective rounds and its buckets' own work in each window and, before each due
re-solve, hands every rank the same timings (each maxed over ranks) to :meth:`LGreCo.refine`,
which refits the model's links (:meth:`TimeCost.refit`) and rescales its local work
(:meth:`TimeCost.rescale_local`) — so every rank holds the same model and rank 0 re-solves
with it. The simulator has no real timings: there the model stays as given.

With a ``TimeCost``, a runtime that notes its buckets (:meth:`LGreCo.note_bucket`: which
registered layers travel together, in the window) has each re-solve's choice checked bucket
by bucket: the per-layer DP pays a latency per layer, the exchange one per fused collective,
so where a bucket is predicted faster with all of its layers ``fp32``
(:func:`~commlib.adaptive.cost.exchange_seconds`), they go ``fp32``.

Call :meth:`~LGreCo.decide` before :meth:`~LGreCo.observe` within a step. All
state is in :meth:`~LGreCo.state_dict` (tensors and plain values).
:class:`AdaptivePolicy` is the interface runtimes rely on (met by
:class:`LGreCo` and :class:`~commlib.adaptive.Accordion`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .cost import CostModel, ElementCost, RoundTiming, TimeCost, cost_table, exchange_seconds
from .dp import Solution, solve
from .options import Option, default_grid
from .tables import ErrorAccumulator, error_table

__all__ = ["AdaptivePolicy", "LGreCo", "LGreCoStats"]

_log = logging.getLogger(__name__)

_METRICS = ("squared", "norm")
_HELD = 0  # ``_next_solve`` once a ``once=True`` policy has had its re-solve: no more windows or re-solves


class AdaptivePolicy(Protocol):
    """What a runtime (``GradientExchange``, ``CommState``, ``Simulator``) uses of a layerwise policy."""

    options: list[Option]
    layer_names: list[str]

    def register(self, shapes: Mapping[str, Sequence[int]], world_size: int | None = None) -> None: ...
    def wants_gradients(self, step: int) -> bool: ...
    def observe(self, step: int, grads: Mapping[str, Tensor], feedback: Mapping[str, Tensor] | None = None) -> bool: ...
    def should_solve(self, step: int) -> bool: ...
    def decide(self, step: int) -> Tensor: ...
    def load_decision(self, decision: Tensor) -> None: ...
    def choices(self) -> dict[str, Option]: ...
    def config(self) -> dict[str, object]: ...
    def state_dict(self) -> dict[str, object]: ...
    def load_state_dict(self, state: Mapping[str, object]) -> None: ...


@dataclass
class LGreCoStats:
    """What the policy decided and predicts, for the current decision and the uniform default.

    Costs are per step in the cost model's ``unit``; bytes are the payload
    bytes one rank contributes per step (the compressors' ``wire_bytes``).
    """

    solves: int = 0
    skipped: int = 0  # re-solves that were due without statistics (this rank observed nothing)
    changed_layers: int = 0  # layers whose option changed, summed over solves
    last_step: int = -1
    budget: float = math.nan
    predicted_error: float = math.nan
    predicted_cost: float = math.nan
    default_cost: float = math.nan
    predicted_bytes: float = math.nan
    default_bytes: float = math.nan
    table_seconds: float = 0.0  # time spent measuring errors, summed over solves
    dp_seconds: float = 0.0
    unit: str = ""
    refits: int = 0  # time-model refinements from measured rounds (``refine_time``)
    refit_measured_s: float = 0.0  # the last refinement's rounds: seconds measured (slowest rank) …
    refit_predicted_s: float = 0.0  # … predicted by the model before the refinement …
    refit_refined_s: float = 0.0  # … and after it
    dense_buckets: int = 0  # buckets a re-solve sent all fp32, predicted faster as a whole (TimeCost), summed
    local_scale: float = 1.0  # the TimeCost's local-work scale after the last refit (refine_time)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _check_int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"LGreCo {name} must be an integer >= {low}, got {value!r}")
    return value


class LGreCo:
    """Layerwise-adaptive choice among ``options`` (mixed families allowed), re-solved every ``period`` steps.

    ``options`` defaults to :func:`~commlib.adaptive.options.default_grid` of
    ``default_option``; the default option and ``fp32`` are always included.
    ``cost_model`` defaults to :class:`~commlib.adaptive.cost.ElementCost` (the
    paper's); ``world_size`` is what it prices for (set it, or pass it to
    :meth:`register`, with ``ByteCost`` or ``TimeCost``). ``error_metric``: ``"norm"``
    (default; sum of per-layer error norms, as the paper and its public
    implementation) or ``"squared"`` (sum of squared errors, the squared norm
    of the whole model's compression error, which lets the largest layer
    dominate the budget). ``power_iterations`` and ``seed`` go to
    :func:`~commlib.adaptive.tables.error_table`. ``first_solve``: the step ``τ`` of the
    first re-solve (default ``period``; at least ``window``, whose steps it is solved from):
    with ``first_solve = window`` the uniform default holds only while the first window fills,
    not for a whole period. ``once``: re-solve only at ``τ = first_solve``, then hold that
    decision (module docstring). ``refine_time`` (needs a
    ``TimeCost``): refine the model from the runtime's timed rounds before each re-solve
    (:meth:`refine`, blending with ``refine_momentum``).
    """

    def __init__(
        self,
        period: int = 500,
        alpha: float = 1.0,
        bins: int = 10_000,
        options: Sequence[Option | str] | None = None,
        default_option: Option | str = "powersgd:4",
        cost_model: CostModel | None = None,
        window: int = 10,
        world_size: int = 1,
        error_metric: str = "norm",
        power_iterations: int | None = None,
        seed: int = 0,
        once: bool = False,
        refine_time: bool = False,
        refine_momentum: float = 0.1,
        first_solve: int | None = None,
    ) -> None:
        self.period = _check_int(period, "period", 1)
        self.window = _check_int(window, "window", 1)
        if self.window > self.period:
            raise ValueError(f"LGreCo window ({window}) must not exceed period ({period})")
        self.first_solve = self.period if first_solve is None else _check_int(first_solve, "first_solve", 1)
        if self.first_solve < self.window:
            raise ValueError(f"LGreCo first_solve ({first_solve}) must be at least the window ({window}): "
                             "the first re-solve needs a full window of gradients")
        self.bins = _check_int(bins, "bins", 1)
        self.world_size = _check_int(world_size, "world_size", 1)
        self.seed = _check_int(seed, "seed", 0)
        if not isinstance(once, bool):
            raise ValueError(f"LGreCo once must be a bool, got {once!r}")
        self.once = once
        if not isinstance(refine_time, bool):
            raise ValueError(f"LGreCo refine_time must be a bool, got {refine_time!r}")
        if refine_time and not isinstance(cost_model, TimeCost):
            raise ValueError(f"LGreCo refine_time needs a TimeCost cost_model, got {type(cost_model).__name__}")
        if (isinstance(refine_momentum, bool) or not isinstance(refine_momentum, (int, float))
                or not 0 < refine_momentum <= 1):
            raise ValueError(f"LGreCo refine_momentum must be in (0, 1], got {refine_momentum!r}")
        self.refine_time, self.refine_momentum = refine_time, float(refine_momentum)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"LGreCo alpha must be a positive finite number, got {alpha!r}")
        if error_metric not in _METRICS:
            raise ValueError(f"LGreCo error_metric must be one of {_METRICS}, got {error_metric!r}")
        if power_iterations is not None:
            _check_int(power_iterations, "power_iterations", 1)
        self.alpha, self.error_metric, self.power_iterations = float(alpha), error_metric, power_iterations
        self.default_option = Option.parse(default_option)
        grid = default_grid(self.default_option) if options is None else [Option.parse(o) for o in options]
        for required in (self.default_option, Option("fp32")):
            if required not in grid:
                grid.append(required)
        if len(set(grid)) != len(grid):
            raise ValueError(f"LGreCo options must be distinct, got {[str(o) for o in grid]}")
        self.options: list[Option] = grid
        self.cost_model = cost_model if cost_model is not None else ElementCost()
        self.layer_names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.stats = LGreCoStats(unit=self.cost_model.unit)
        self.last_solution: Solution | None = None
        self.last_tables: tuple[np.ndarray, np.ndarray] | None = None  # (errors, costs) of the last solve
        self._defaults = torch.zeros(0, dtype=torch.int64)
        self._decision = torch.zeros(0, dtype=torch.int64)
        self._bytes = np.zeros((0, len(grid)))
        self._accumulator = ErrorAccumulator(self.window)
        self._buckets: dict[tuple[str, ...], int] = {}  # noted since the last solve: layer names -> other dense numel
        self._next_solve = self.first_solve

    # -- layers ----------------------------------------------------------------------------------------

    def register(self, shapes: Mapping[str, Sequence[int]], world_size: int | None = None) -> None:
        """Set the layers, by name and shape; their order is the decision's order (identical on every rank)."""
        if world_size is not None:
            self.world_size = _check_int(world_size, "world_size", 1)
        names = list(shapes)
        if not all(isinstance(n, str) for n in names):
            raise ValueError("LGreCo layer names must be strings")
        dims = [tuple(int(d) for d in shapes[n]) for n in names]
        self._bytes = np.array(
            [[o.wire_bytes(d) if o.applicable(d) else np.inf for o in self.options] for d in dims], dtype=np.float64
        ).reshape(len(dims), len(self.options))
        fallback = self.options.index(Option("fp32"))
        default = self.options.index(self.default_option)
        self.layer_names, self.shapes = names, dims
        self._defaults = torch.tensor(
            [default if np.isfinite(self._bytes[row, default]) else fallback for row in range(len(names))],
            dtype=torch.int64,
        )
        self._decision = self._defaults.clone()
        self._accumulator.reset()
        self._refresh_predictions()

    def default_decision(self) -> Tensor:
        """The uniform default, per layer."""
        return self._defaults.clone()

    # -- schedule --------------------------------------------------------------------------------------

    def wants_gradients(self, step: int) -> bool:
        """Whether ``step`` is in the window before the next re-solve (feed :meth:`observe` only then)."""
        return self._next_solve - self.window <= step < self._next_solve

    def observe(
        self, step: int, grads: Mapping[str, Tensor], feedback: Mapping[str, Tensor] | None = None
    ) -> bool:
        """Add ``grads`` (+ ``feedback``) to the window sums when ``step`` is in the window; ``True`` if used.

        ``grads`` names registered layers (all, or one bucket's). A call
        holding inf or NaN is skipped (``False``) and leaves the statistics untouched.
        """
        if not self.wants_gradients(step):
            return False
        shapes = dict(zip(self.layer_names, self.shapes))
        for name, g in grads.items():
            if name not in shapes:
                raise ValueError(f"LGreCo got a gradient for {name!r}, not a registered layer")
            if tuple(g.shape) != shapes[name]:
                raise ValueError(f"layer {name!r}: gradient shape {tuple(g.shape)}, registered {shapes[name]}")
        return self._accumulator.add(grads, feedback)

    def should_solve(self, step: int) -> bool:
        """Whether a re-solve is due at ``step`` (the first call at or after ``first_solve``, then each
        multiple of ``period`` after it)."""
        return self._next_solve != _HELD and step >= self._next_solve

    def decide(self, step: int) -> Tensor:
        """The decision for ``step`` (int64 option indices per layer), re-solving first when due.

        A due re-solve without statistics (this rank observed nothing) keeps
        the decision and counts as ``skipped``.
        """
        if self.should_solve(step):
            self._next_solve = _HELD if self.once else (step // self.period + 1) * self.period
            self.stats.last_step = step
            if self._accumulator.steps():
                self.solve()
            else:
                self.stats.skipped += 1
        return self._decision.clone()

    # -- solving ---------------------------------------------------------------------------------------

    def solve(self) -> Solution:
        """Re-solve now from the accumulated sums (then cleared): error table, cost table, dynamic program.

        A layer without statistics keeps its default option (its row allows
        only the default, at error 0, so it takes no share of the budget).
        """
        steps = self._accumulator.steps()
        if not steps:
            raise ValueError("LGreCo.solve: no gradients observed since the last solve")
        sums = self._accumulator.sums()
        seen = [row for row, name in enumerate(self.layer_names) if name in steps]
        start = time.perf_counter()
        errors = np.full((len(self.layer_names), len(self.options)), np.inf)
        errors[np.arange(len(errors)), self._defaults.numpy()] = 0.0
        errors[seen] = error_table(
            {self.layer_names[row]: sums[self.layer_names[row]] for row in seen},
            self.options,
            cast_scale={name: float(count * self.world_size) for name, count in steps.items()},
            power_iterations=self.power_iterations,
            seed=self.seed,
        )
        if self.error_metric == "norm":
            errors = np.sqrt(errors)
        mid = time.perf_counter()
        costs = cost_table(self.shapes, self.options, self.cost_model, self.world_size)
        solution = solve(costs, errors, self._defaults.numpy(), alpha=self.alpha, bins=self.bins)
        self.stats.table_seconds += mid - start
        self.stats.dp_seconds += time.perf_counter() - mid
        self._accumulator.reset()
        self.last_solution, self.last_tables = solution, (errors, costs)
        self.stats.solves += 1
        self.stats.budget, self.stats.predicted_error = solution.budget, solution.error
        self._apply(torch.from_numpy(self._whole_buckets(solution.choice.copy())))
        _log.info("L-GreCo solve %d at step %d: %s; predicted %.0f bytes/step (uniform %.0f), error %.4g of budget "
                  "%.4g (%s); choices %s", self.stats.solves, self.stats.last_step, self.option_counts(),
                  self.stats.predicted_bytes, self.stats.default_bytes, solution.error, solution.budget,
                  solution.source, {n: str(o) for n, o in self.choices().items()})
        return solution

    def note_bucket(self, names: Sequence[str], dense_numel: int = 0) -> None:
        """The runtime sends the registered layers ``names`` in one bucket, beside ``dense_numel`` other elements.

        Kept until the next :meth:`solve`, which checks each noted bucket as a whole
        (a ``TimeCost`` only; see :meth:`_whole_buckets`). ``ValueError`` for an unregistered
        name or a negative count.
        """
        unknown = sorted(set(names) - set(self.layer_names))
        if unknown:
            raise ValueError(f"LGreCo.note_bucket: layers {unknown} are not registered")
        if isinstance(dense_numel, bool) or not isinstance(dense_numel, int) or dense_numel < 0:
            raise ValueError(f"LGreCo.note_bucket: dense_numel must be an int >= 0, got {dense_numel!r}")
        if names:
            self._buckets[tuple(names)] = dense_numel

    def _whole_buckets(self, choice: np.ndarray) -> np.ndarray:
        """``choice`` with each noted bucket sent all ``fp32`` where that is predicted faster; clears the notes.

        The DP prices layers one by one, each paying its own latency; the exchange fuses a
        bucket's tensors into one collective per round and kind, so an all-``fp32`` bucket is one
        all-reduce, and compressing even a small layer of it adds the compressed kind's collective
        (its latency) to the bucket. Per noted bucket: :func:`exchange_seconds` of the DP's
        choice against all of its layers ``fp32``; the faster wins (``fp32`` adds no error, so the
        budget still holds). Only with a ``TimeCost``: the other models count no latency.
        """
        buckets, self._buckets = self._buckets, {}
        if not isinstance(self.cost_model, TimeCost):
            return choice
        fp32 = self.options.index(Option("fp32"))
        rows = {name: row for row, name in enumerate(self.layer_names)}
        for names, dense_numel in buckets.items():
            idx = [rows[name] for name in names]
            chosen = [(self.shapes[r], self.options[choice[r]]) for r in idx]
            dense = [(self.shapes[r], self.options[fp32]) for r in idx]
            if (exchange_seconds(self.cost_model, dense, self.world_size, dense_numel)
                    < exchange_seconds(self.cost_model, chosen, self.world_size, dense_numel)):
                choice[idx] = fp32
                self.stats.dense_buckets += 1
        return choice

    def refine(self, rounds: Sequence[RoundTiming], own_work: tuple[float, float] | None = None) -> None:
        """Refine the ``TimeCost`` from the runtime's timings (``refine_time``); call it on every rank alike.

        1. :meth:`TimeCost.refit` fits every collective's ``α`` and ``β`` to the rounds' seconds
           jointly and blends the fit in with ``refine_momentum``;
        2. ``own_work`` — the timed buckets' own work (seconds less their rounds'), as measured and
           as the model predicted it — rescales the model's local seconds
           (:meth:`TimeCost.rescale_local`, same momentum);
        3. the stats record the rounds' measured seconds and the model's predictions before and
           after, and the local scale; the predicted costs are refreshed.

        No rounds and no own work: nothing changes. The same inputs give the same model bits on every rank.
        """
        if not self.refine_time:
            raise ValueError("LGreCo.refine needs refine_time=True")
        if not all(isinstance(r, RoundTiming) for r in rounds):
            raise TypeError("LGreCo.refine takes a sequence of RoundTiming")
        if not rounds and own_work is None:
            return
        model: TimeCost = self.cost_model  # type: ignore[assignment]
        before = sum(model.round_seconds(r.collectives, r.world_size) for r in rounds)
        model.refit(rounds, self.refine_momentum)
        if own_work is not None:
            model.rescale_local(*own_work, momentum=self.refine_momentum)
        after = sum(model.round_seconds(r.collectives, r.world_size) for r in rounds)
        measured = sum(r.seconds for r in rounds)
        self.stats.refits += 1
        self.stats.refit_measured_s, self.stats.refit_predicted_s, self.stats.refit_refined_s = measured, before, after
        self.stats.local_scale = model.local_scale
        self._refresh_predictions()
        _log.info("L-GreCo time refit %d: %d rounds took %.4g s (slowest rank); the model predicted %.4g s, "
                  "now %.4g s; local work scaled by %.3g", self.stats.refits, len(rounds), measured, before, after,
                  model.local_scale)

    def load_decision(self, decision: Tensor) -> None:
        """Adopt a decision computed elsewhere (rank 0's broadcast); ``ValueError`` if it does not fit the layers."""
        if not isinstance(decision, Tensor) or decision.dtype != torch.int64 or decision.shape != self._decision.shape:
            raise ValueError(f"a decision must be an int64 tensor of shape {tuple(self._decision.shape)}")
        decision = decision.detach().cpu()
        if decision.numel() and (int(decision.min()) < 0 or int(decision.max()) >= len(self.options)):
            raise ValueError(f"decision indices must lie in [0, {len(self.options)}), got {decision.tolist()}")
        rows = torch.arange(decision.numel())
        if not np.isfinite(self._bytes[rows.numpy(), decision.numpy()]).all():
            raise ValueError("the decision assigns an option to a layer it cannot compress")
        self._apply(decision.clone())

    def _apply(self, decision: Tensor) -> None:
        self.stats.changed_layers += int((decision != self._decision).sum())
        self._decision = decision
        self._refresh_predictions()

    def _refresh_predictions(self) -> None:
        rows = np.arange(len(self.layer_names))
        choice, default = self._decision.numpy(), self._defaults.numpy()
        costs = cost_table(self.shapes, self.options, self.cost_model, self.world_size)
        self.stats.predicted_cost = float(costs[rows, choice].sum())
        self.stats.default_cost = float(costs[rows, default].sum())
        self.stats.predicted_bytes = float(self._bytes[rows, choice].sum())
        self.stats.default_bytes = float(self._bytes[rows, default].sum())

    # -- queries ---------------------------------------------------------------------------------------

    def config(self) -> dict[str, object]:
        """The settings every rank must share (plain values, for a runtime's config fingerprint).

        The ``refine_*`` keys appear only with ``refine_time``, ``first_solve`` only when it is not the
        period (older checkpoints' configs stay valid).
        """
        refine = {"refine_time": True, "refine_momentum": self.refine_momentum} if self.refine_time else {}
        first = {"first_solve": self.first_solve} if self.first_solve != self.period else {}
        return {"options": [str(o) for o in self.options], "default": str(self.default_option), "period": self.period,
                "window": self.window, "alpha": self.alpha, "bins": self.bins, "error_metric": self.error_metric,
                "power_iterations": self.power_iterations, "seed": self.seed, "once": self.once,
                "cost": self.cost_model.unit, **refine, **first,
                "layers": list(self.layer_names)}

    def decision(self) -> Tensor:
        """The current decision (int64 option indices, one per layer)."""
        return self._decision.clone()

    def choices(self) -> dict[str, Option]:
        """The current option of each layer, by name."""
        return {n: self.options[i] for n, i in zip(self.layer_names, self._decision.tolist())}

    def option_counts(self) -> dict[str, int]:
        """How many layers use each option now."""
        counts = dict.fromkeys((str(o) for o in self.options), 0)
        for i in self._decision.tolist():
            counts[str(self.options[i])] += 1
        return counts

    # -- checkpoints -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, object]:
        """Plain values and tensors; with ``refine_time`` also the refined time model (``"time_model"``)."""
        state = {
            "options": [str(o) for o in self.options],
            "layers": list(self.layer_names),
            "shapes": [list(s) for s in self.shapes],
            "world_size": self.world_size,
            "decision": self._decision.clone(),
            "next_solve": self._next_solve,
            "accumulator": self._accumulator.state_dict(),
            "stats": self.stats.as_dict(),
        }
        if self.refine_time:
            state["time_model"] = self.cost_model.state_dict()  # type: ignore[attr-defined]
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict` (registering its layers, at its world size); ``ValueError`` if options,
        layers or a registered world size differ. A checkpoint without ``"world_size"`` (older) keeps this one's."""
        keys = {"options", "layers", "shapes", "decision", "next_solve", "accumulator", "stats"}
        keys |= {"time_model"} if self.refine_time else set()
        if not isinstance(state, Mapping) or set(state) - {"world_size"} != keys:
            raise ValueError(f"LGreCo state needs keys {sorted(keys)} (and 'world_size'), got {state!r:.200}")
        world_size = _check_int(state.get("world_size", self.world_size), "world_size", 1)
        if self.layer_names and world_size != self.world_size:
            raise ValueError(f"LGreCo state was priced for {world_size} workers, this policy is registered "
                             f"for {self.world_size}")
        if list(state["options"]) != [str(o) for o in self.options]:
            raise ValueError(f"LGreCo state is for options {state['options']}, this policy has {self.options}")
        layers, shapes = list(state["layers"]), [tuple(s) for s in state["shapes"]]
        if self.layer_names and (layers != self.layer_names or shapes != self.shapes):
            raise ValueError("LGreCo state is for other layers than the registered ones")
        stats = dict(state["stats"])
        if not set(stats) <= set(LGreCoStats.__dataclass_fields__):  # a missing field (older checkpoint): default
            raise ValueError(f"LGreCo stats need the fields of LGreCoStats, got {sorted(stats)}")
        next_solve = _check_int(state["next_solve"], "next_solve", _HELD)
        self.register(dict(zip(layers, shapes)), world_size=world_size)
        self._accumulator.load_state_dict(state["accumulator"])
        self.load_decision(state["decision"])
        if self.refine_time:
            self.cost_model.load_state_dict(state["time_model"])  # type: ignore[attr-defined]
        self.stats = LGreCoStats(**stats)
        self._refresh_predictions()
        self._next_solve = next_solve
