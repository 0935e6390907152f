"""Accordion: switch each layer between light and heavy compression on critical regimes (the baseline).

Agarwal et al., "Adaptive Gradient Communication via Critical Learning Regime
Identification", MLSys 2021 (code: ``uw-mad-dash/Accordion``). Per layer it
watches the norm of the gradient accumulated over a window of steps; a large
relative change between two checks marks a *critical regime*, where
compressing hard hurts accuracy. Steps, for a step counter ``τ`` (compressed
steps; the caller handles any dense warm-up):

1. During the ``window`` steps before every check (checks at ``τ = interval,
   2·interval, …``; a missed one happens at the next :meth:`Accordion.decide`),
   sum each layer's gradients: ``A_l``.
2. At a check, ``ratio_l = |‖A_l^prev‖ − ‖A_l‖| / ‖A_l^prev‖``. The layer is
   critical — gets the *light* option (low compression) — when ``ratio_l ≥ η``
   (η = 0.5 in the paper), when there is no previous norm (the first check) or
   it is 0. Otherwise it gets the *heavy* option. ``‖A_l‖`` becomes the previous norm.
3. :meth:`Accordion.notify_lr_decay` (the paper's second rule) makes every
   layer critical at once, until the next check.

Before the first check every layer is light (the paper starts with low
compression). Decisions are tensors of 0 (light) and 1 (heavy) per layer in
registration order, so a runtime broadcasts them as tensors.

It has the runtime interface of :class:`~commlib.adaptive.LGreCo`
(``register``, ``wants_gradients``, ``observe``, ``should_solve``, ``decide``,
``load_decision``, ``choices``, ``config``, ``state_dict``), so
``GradientExchange``, ``CommState`` and ``Simulator`` take it as ``policy=``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .options import Option
from .tables import ErrorAccumulator

__all__ = ["Accordion", "AccordionStats"]

LIGHT, HEAVY = 0, 1
_log = logging.getLogger(__name__)


@dataclass
class AccordionStats:
    """Checks done, checks due without statistics, layer switches, and the payload bytes per step now."""

    checks: int = 0
    skipped: int = 0
    changed_layers: int = 0
    light_layers: int = 0
    predicted_bytes: float = 0.0  # payload bytes one rank sends per step for the registered layers
    light_bytes: float = 0.0  # the same with every layer light

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Accordion:
    """Per-layer light/heavy switching on the relative change of accumulated gradient norms.

    ``light`` and ``heavy`` are the two settings (e.g. PowerSGD rank 4 and 1,
    or top-k 99 % and 10 %); :attr:`options` is ``[light, heavy]`` and decisions
    index it. ``window`` (default: ``interval``) is how many steps before each
    check are summed.
    """

    def __init__(
        self,
        light: Option | str,
        heavy: Option | str,
        interval: int,
        eta: float = 0.5,
        window: int | None = None,
    ) -> None:
        self.options = [Option.parse(light), Option.parse(heavy)]
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"Accordion interval must be a positive integer, got {interval!r}")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta > 0 or not math.isfinite(eta):
            raise ValueError(f"Accordion eta must be a positive finite number, got {eta!r}")
        window = interval if window is None else window
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= interval:
            raise ValueError(f"Accordion window must be an integer in [1, interval={interval}], got {window!r}")
        self.interval, self.eta, self.window = interval, float(eta), window
        self.layer_names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.stats = AccordionStats()
        self._accumulator = ErrorAccumulator(window)
        self._prev_norms = torch.zeros(0, dtype=torch.float64)  # NaN: no previous norm yet
        self._decision = torch.zeros(0, dtype=torch.int64)
        self._next_check = interval

    def register(self, layers: Sequence[str] | Mapping[str, Sequence[int]], world_size: int | None = None) -> None:
        """Set the layers: names, or ``{name: shape}`` (then both options must apply to every shape).

        Their order is the decision's order (identical on every rank).
        ``world_size`` is accepted for the runtimes' common interface; the
        light/heavy rule does not depend on it.
        """
        names = list(layers)
        if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
            raise ValueError("Accordion layer names must be distinct strings")
        shapes = [tuple(int(d) for d in layers[n]) for n in names] if isinstance(layers, Mapping) else []
        for name, shape in zip(names, shapes):
            for option in self.options:
                if not option.applicable(shape):
                    raise ValueError(f"Accordion option {option} does not apply to layer {name!r} of shape {shape}")
        self.layer_names, self.shapes = names, shapes
        self._prev_norms = torch.full((len(names),), math.nan, dtype=torch.float64)
        self._decision = torch.full((len(names),), LIGHT, dtype=torch.int64)
        self._accumulator.reset()
        self._refresh_bytes()

    def wants_gradients(self, step: int) -> bool:
        """Whether ``step`` falls in the window before the next check (feed :meth:`observe` only then)."""
        return self._next_check - self.window <= step < self._next_check

    def observe(
        self, step: int, grads: Mapping[str, Tensor], feedback: Mapping[str, Tensor] | None = None
    ) -> bool:
        """Add gradients (+ ``feedback``; all layers, or one bucket's) to the window sums if ``step`` is in a window.

        Returns ``True`` if they were used (``False``: outside the window, or inf/NaN).
        """
        if not self.wants_gradients(step):
            return False
        unknown = set(grads) - set(self.layer_names)
        if unknown:
            raise ValueError(f"Accordion got gradients for unregistered layers {sorted(unknown)}")
        return self._accumulator.add(grads, feedback)

    def should_solve(self, step: int) -> bool:
        """Whether a check is due at ``step`` (the first call at or after each multiple of ``interval``)."""
        return step >= self._next_check

    def decide(self, step: int) -> Tensor:
        """The decision for ``step`` (int64, 0 = light, 1 = heavy per layer), re-checking first when due.

        Call it before :meth:`observe` for the same step. A layer with no
        observed step since the last check keeps its decision and norm; a due check
        without any statistics (a rank that does not observe) counts as ``skipped``.
        """
        if self.should_solve(step):
            self._next_check = (step // self.interval + 1) * self.interval
            sums = self._accumulator.sums()
            if not sums:
                self.stats.skipped += 1
                return self._decision.clone()
            seen = torch.tensor([n in sums for n in self.layer_names], dtype=torch.bool)
            norms = torch.tensor(
                [float(torch.linalg.vector_norm(sums[n], dtype=torch.float64)) if n in sums else 0.0
                 for n in self.layer_names],
                dtype=torch.float64,
            )
            prev = self._prev_norms
            ratio = (prev - norms).abs() / prev
            critical = torch.isnan(prev) | (prev == 0) | (ratio >= self.eta)
            self._prev_norms = torch.where(seen, norms, prev)
            self._accumulator.reset()
            self.stats.checks += 1
            self._apply(torch.where(seen, torch.where(critical, LIGHT, HEAVY), self._decision).to(torch.int64))
            _log.info("Accordion check %d at step %d: %d of %d layers light (critical); %.0f bytes/step (all light "
                      "%.0f); choices %s", self.stats.checks, step, self.stats.light_layers, len(self.layer_names),
                      self.stats.predicted_bytes, self.stats.light_bytes,
                      {n: str(o) for n, o in self.choices().items()})
        return self._decision.clone()

    def load_decision(self, decision: Tensor) -> None:
        """Adopt a decision computed elsewhere (rank 0's broadcast); ``ValueError`` if it is not 0/1 per layer."""
        if not isinstance(decision, Tensor) or decision.dtype != torch.int64 or decision.shape != self._decision.shape:
            raise ValueError(f"an Accordion decision must be an int64 tensor of shape {tuple(self._decision.shape)}")
        decision = decision.detach().cpu()
        if decision.numel() and not bool(((decision == LIGHT) | (decision == HEAVY)).all()):
            raise ValueError(f"Accordion decision entries must be 0 (light) or 1 (heavy), got {decision.tolist()}")
        self._apply(decision.clone())

    def notify_lr_decay(self) -> None:
        """The learning rate just dropped: every layer is critical (light) until the next check."""
        self._apply(torch.full_like(self._decision, LIGHT))

    def _apply(self, decision: Tensor) -> None:
        self.stats.changed_layers += int((decision != self._decision).sum())
        self._decision = decision
        self._refresh_bytes()

    def _refresh_bytes(self) -> None:
        """Stats of the current decision (payload bytes only when the layers were registered with shapes)."""
        light, heavy = self.options
        self.stats.light_layers = int((self._decision == LIGHT).sum())
        self.stats.light_bytes = float(sum(light.wire_bytes(s) for s in self.shapes))
        self.stats.predicted_bytes = float(sum((light if d == LIGHT else heavy).wire_bytes(s)
                                               for s, d in zip(self.shapes, self._decision.tolist())))

    def decision(self) -> Tensor:
        """The current decision (int64, 0 = light, 1 = heavy per layer)."""
        return self._decision.clone()

    def option_counts(self) -> dict[str, int]:
        """How many layers use the light and the heavy option now."""
        light = self.stats.light_layers
        return {str(self.options[LIGHT]): light, str(self.options[HEAVY]): len(self.layer_names) - light}

    def config(self) -> dict[str, object]:
        """The settings every rank must share (plain values, for a runtime's config fingerprint)."""
        return {"policy": "accordion", "options": [str(o) for o in self.options], "interval": self.interval,
                "eta": self.eta, "window": self.window, "layers": list(self.layer_names)}

    def critical(self) -> dict[str, bool]:
        """Per layer: whether it is currently in a critical regime (light compression)."""
        return {n: bool(d == LIGHT) for n, d in zip(self.layer_names, self._decision.tolist())}

    def choices(self) -> dict[str, Option]:
        return {n: self.options[d] for n, d in zip(self.layer_names, self._decision.tolist())}

    def state_dict(self) -> dict[str, object]:
        return {
            "options": [str(o) for o in self.options],
            "layers": list(self.layer_names),
            "shapes": [list(s) for s in self.shapes],
            "prev_norms": self._prev_norms.clone(),
            "decision": self._decision.clone(),
            "next_check": self._next_check,
            "accumulator": self._accumulator.state_dict(),
            "stats": self.stats.as_dict(),
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict` (registers the layers it names); ``ValueError`` when it does not fit."""
        keys = {"options", "layers", "shapes", "prev_norms", "decision", "next_check", "accumulator", "stats"}
        if not isinstance(state, Mapping) or set(state) != keys:
            raise ValueError(f"Accordion state needs keys {sorted(keys)}, got {state!r:.200}")
        if list(state["options"]) != [str(o) for o in self.options]:
            raise ValueError(f"Accordion state is for options {state['options']}, this one has {self.options}")
        layers = list(state["layers"])
        norms, decision = state["prev_norms"], state["decision"]
        if not (isinstance(norms, Tensor) and norms.dtype == torch.float64 and norms.shape == (len(layers),)):
            raise ValueError("Accordion prev_norms must be a float64 tensor with one entry per layer")
        if not (isinstance(decision, Tensor) and decision.dtype == torch.int64 and decision.shape == (len(layers),)):
            raise ValueError("Accordion decision must be an int64 tensor with one entry per layer")
        if decision.numel() and not bool(((decision == LIGHT) | (decision == HEAVY)).all()):
            raise ValueError("Accordion decision entries must be 0 (light) or 1 (heavy)")
        shapes = [tuple(s) for s in state["shapes"]]
        if shapes and len(shapes) != len(layers):
            raise ValueError("Accordion shapes must list one shape per layer (or none)")
        stats = dict(state["stats"])
        if set(stats) != set(AccordionStats.__dataclass_fields__):
            raise ValueError(f"Accordion stats need the fields of AccordionStats, got {sorted(stats)}")
        self.register(dict(zip(layers, shapes)) if shapes else layers)
        self._accumulator.load_state_dict(state["accumulator"])
        self._prev_norms, self._decision = norms.clone(), decision.clone()
        self._next_check = int(state["next_check"])
        self.stats = AccordionStats(**stats)
        self._refresh_bytes()
