"""How much can L-GreCo save at α = 1 with a given option grid? The DP's optimum on measured error tables.

The training benchmarks (:mod:`lgreco_digits`, :mod:`lgreco_text`) show what one grid realizes;
this one explains why a family has room or not, for many grids at once, without a training run
per grid:

1. train once with the family's uniform default (digits MLP or the char transformer, seed 0,
   the training benchmarks' settings) through a recording policy that keeps every window's
   accumulated gradients (worker 0's, as L-GreCo's rank 0 sees them) and never changes a layer;
2. per window, one error table (:func:`commlib.adaptive.error_table`) over the union of every
   grid's options, and the payload-bytes table (``Option.wire_bytes``);
3. per grid (a subset of those columns, always with the default and ``fp32``) and error measure
   (``norm``: sum of per-layer error norms, the paper's; ``squared``), the DP at α = 1
   (:func:`commlib.adaptive.solve`, 10,000 bins) → the policy layers' bytes per step under the
   choice, against the uniform default's: the steady-state saving L-GreCo predicts;
4. the per-layer trade-off table of the last window: every option's bytes and error norm
   relative to the default on that layer.

The saving over a whole run is smaller: the dense warm-up, the uniform steps before the first
decision and the dense biases are paid by every method.

Writes ``benchmarks/results/lgreco_grids{_quick}.json`` and ``.md``.
Run: ``PYTHONPATH=. python benchmarks/lgreco_grids.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch
from lgreco_compare import RESULTS
from lgreco_text import CharTransformer, load_text
from lgreco_text import train as train_text
from torch import Tensor

from commlib.adaptive import LGreCo, Option, error_table, solve
from commlib.compress import Identity
from commlib.sim import Simulator
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_simulated

WORKERS = 4
_QSGD_BUCKETS = (32, 128, 512, 2048)
_QSGD_ALL = [f"qsgd:{b}x{s}{n}" for b in (2, 4, 8) for s in _QSGD_BUCKETS for n in ("", ":max")]
_RANKS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64)
_TOPK = [f"topk:{d}" for d in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)]

#: Per default: named grids (``fp32`` and the default are always added).
GRIDS: dict[str, dict[str, list[str]]] = {
    "qsgd:4x128": {
        "default grid (2/4/8 bits × 128)": ["qsgd:2x128", "qsgd:8x128"],
        "bits × buckets 32…2048 (l2)": [o for o in _QSGD_ALL if not o.endswith(":max")],
        "bits × buckets × {l2, max}": _QSGD_ALL,
        "in-family + fp16/bf16": [*_QSGD_ALL, "fp16", "bf16"],
        "mixed: QSGD + top-k + PowerSGD + casts": [*_QSGD_ALL, *_TOPK, *(f"powersgd:{r}" for r in _RANKS),
                                                   "fp16", "bf16"],
        "mixed: default + PowerSGD + fp16": ["qsgd:2x128", "qsgd:8x128", *(f"powersgd:{r}" for r in _RANKS), "fp16"],
    },
    "qsgd:4x128:max": {
        "bits × buckets × {l2, max}": _QSGD_ALL,
        "mixed: QSGD + top-k + PowerSGD + casts": [*_QSGD_ALL, *_TOPK, *(f"powersgd:{r}" for r in _RANKS),
                                                   "fp16", "bf16"],
    },
    "powersgd:4": {
        "default grid (ranks 2…8)": [f"powersgd:{r}" for r in range(2, 9)],
        "ranks 1…8": [f"powersgd:{r}" for r in range(1, 9)],
        "ranks 1…64": [f"powersgd:{r}" for r in _RANKS],
        "ranks 1…64 + fp16/bf16": [*(f"powersgd:{r}" for r in _RANKS), "fp16", "bf16"],
        "mixed: PowerSGD + QSGD + top-k + casts": [*(f"powersgd:{r}" for r in _RANKS), *_QSGD_ALL, *_TOPK,
                                                   "fp16", "bf16"],
    },
    "powersgd:2": {"ranks 1…64": [f"powersgd:{r}" for r in _RANKS]},
    "powersgd:8": {"ranks 1…64": [f"powersgd:{r}" for r in _RANKS]},
}


class WindowRecorder(LGreCo):
    """An L-GreCo schedule that records each window's accumulated gradients and keeps the uniform default."""

    def __init__(self, default: str, period: int, window: int) -> None:
        super().__init__(period=period, window=window, default_option=default, options=[default])
        self.windows: list[tuple[dict[str, Tensor], dict[str, int]]] = []

    def solve(self) -> None:  # type: ignore[override]
        """Keep the window's sums (a copy) and clear them; the decision stays the uniform default."""
        sums = self._accumulator.sums()
        self.windows.append(({n: t.clone() for n, t in sums.items()}, self._accumulator.steps()))
        self._accumulator.reset()
        self.stats.solves += 1


def record(task: str, default: str, args: argparse.Namespace) -> tuple[WindowRecorder, dict[str, tuple[int, ...]]]:
    """Train ``task`` uniformly at ``default`` (seed 0) and return the recorder (worker 0's) and the layer shapes."""
    sim = Simulator(Identity(), WORKERS, seed=0, policy=WindowRecorder(default, args.period, args.window))
    if task == "digits":
        model = mlp(hidden=args.hidden, depth=args.depth, seed=0)
        cfg = TrainConfig(steps=args.steps, seed=0)
        train_simulated(model, make_optimizer(model, cfg), load_digits(), cfg, sim)
    else:
        train_ids, _, vocab = load_text(args.chars)
        model = CharTransformer(vocab, args.layers, 0)
        train_text(model, sim, train_ids, args.steps, args.batch, 0)
    recorder = sim.policy
    assert isinstance(recorder, WindowRecorder)
    return recorder, dict(zip(recorder.layer_names, recorder.shapes))


def analyse(task: str, default: str, args: argparse.Namespace) -> dict[str, object]:
    """Steps 2–4 of the module docstring for one task and default."""
    recorder, shapes = record(task, default, args)
    grids = GRIDS[default]
    universe = list(dict.fromkeys([default, "fp32", *(o for grid in grids.values() for o in grid)]))
    options = [Option.parse(o) for o in universe]
    names = list(shapes)
    nbytes = np.array([[o.wire_bytes(shapes[n]) if o.applicable(shapes[n]) else np.inf for o in options]
                       for n in names])
    defaults = np.array([0 if np.isfinite(nbytes[i, 0]) else 1 for i in range(len(names))])
    rows = np.arange(len(names))
    tables = []
    for sums, steps in recorder.windows:
        sq = error_table(sums, options, cast_scale={n: float(c * WORKERS) for n, c in steps.items()}, seed=0)
        tables.append(sq)
    results = []
    for label, grid in grids.items():
        cols = [universe.index(o) for o in dict.fromkeys([default, "fp32", *grid])]
        for metric in ("norm", "squared"):
            ratios, last = [], None
            for sq in tables:
                err = np.sqrt(sq[:, cols]) if metric == "norm" else sq[:, cols]
                sol = solve(nbytes[:, cols], err, defaults, alpha=1.0, bins=10_000)
                chosen = nbytes[rows, np.array(cols)[sol.choice]].sum()
                ratios.append(float(nbytes[rows, defaults].sum() / chosen))
                last = {n: universe[cols[c]] for n, c in zip(names, sol.choice)}
            results.append({"grid": label, "metric": metric, "options": len(cols),
                            "ratio_mean": statistics.mean(ratios), "ratio_min": min(ratios),
                            "ratio_max": max(ratios), "ratios": ratios, "last_choice": last})
    last_sq = tables[-1]
    default_norms = np.sqrt(last_sq[rows, defaults])
    tradeoff = {n: {universe[k]: {"bytes_x": float(nbytes[i, k] / nbytes[i, defaults[i]]),
                                  "error_x": float(np.sqrt(last_sq[i, k] / last_sq[i, defaults[i]]))}
                    for k in range(len(universe)) if np.isfinite(nbytes[i, k])}
                for i, n in enumerate(names)}
    return {"task": task, "default": default, "windows": len(tables),
            "layers": {n: list(s) for n, s in shapes.items()},
            "default_bytes": {n: float(nbytes[i, defaults[i]]) for i, n in enumerate(names)},
            "default_error_share": {n: float(default_norms[i] / default_norms.sum()) for i, n in enumerate(names)},
            "results": results, "tradeoff": tradeoff}


_TRADEOFF_COLUMNS = {
    "qsgd:4x128": ["qsgd:2x128", "qsgd:2x2048:max", "qsgd:2x512:max", "qsgd:2x128:max", "qsgd:4x2048:max",
                   "qsgd:8x128", "topk:0.01", "topk:0.05", "powersgd:1", "powersgd:4", "powersgd:16", "fp16"],
    "qsgd:4x128:max": ["qsgd:2x128:max", "qsgd:2x512:max", "qsgd:2x2048:max", "qsgd:4x2048:max", "qsgd:8x128:max",
                       "topk:0.01", "powersgd:1", "powersgd:4", "fp16"],
    "powersgd:2": ["powersgd:1", "powersgd:3", "powersgd:4", "powersgd:8"],
    "powersgd:8": ["powersgd:2", "powersgd:4", "powersgd:6", "powersgd:12", "powersgd:16"],
    "powersgd:4": ["powersgd:1", "powersgd:2", "powersgd:3", "powersgd:6", "powersgd:8", "powersgd:16",
                   "powersgd:32", "qsgd:2x2048:max", "topk:0.01", "fp16"],
}


def markdown(reports: list[dict[str, object]], args: argparse.Namespace) -> str:
    lines = [f"L-GreCo's DP optimum at α = 1 on measured error tables: uniform training, seed 0, {args.period}-step "
             f"period, {args.window}-step window, 4 simulated workers; ratio = uniform default's bytes per step / "
             "the DP choice's (policy layers only; mean, min–max over the windows); digits MLP "
             f"64-{'-'.join([str(args.hidden)] * args.depth)}-10", ""]
    for rep in reports:
        lines += [f"### {rep['task']}, default {rep['default']} ({rep['windows']} windows)", "",
                  "| grid | options | × fewer bytes (norm) | × fewer bytes (squared) | last choice (norm) |",
                  "|---|---|---|---|---|"]
        by = {(r["grid"], r["metric"]): r for r in rep["results"]}
        for grid in dict.fromkeys(r["grid"] for r in rep["results"]):
            n, s = by[(grid, "norm")], by[(grid, "squared")]
            choice = ", ".join(f"{k.split('.')[-2] if '.' in k else k}={v}" for k, v in n["last_choice"].items())
            lines.append(f"| {grid} | {n['options']} | {n['ratio_mean']:.2f} ({n['ratio_min']:.2f}–"
                         f"{n['ratio_max']:.2f}) | {s['ratio_mean']:.2f} ({s['ratio_min']:.2f}–{s['ratio_max']:.2f})"
                         f" | {choice} |")
        cols = _TRADEOFF_COLUMNS[rep["default"]]
        lines += ["", "Per-layer trade-off, last window: bytes × / error-norm × relative to the default on that "
                  "layer (in brackets: the default's bytes per step and the layer's share of the default's summed "
                  "error norms, the norm budget)", "",
                  "| layer | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for layer, opts in rep["tradeoff"].items():
            cells = [f"{opts[c]['bytes_x']:.2f} / {opts[c]['error_x']:.2f}" if c in opts else "–" for c in cols]
            share = rep["default_error_share"][layer]
            lines.append(f"| {layer} ({rep['default_bytes'][layer]:.0f} B, {share:.0%}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", nargs="+", default=["digits", "text"], choices=["digits", "text"])
    parser.add_argument("--defaults", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: digits 200, text 150)")
    parser.add_argument("--period", type=int, default=20)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4, help="text: windows per worker per step")
    parser.add_argument("--layers", type=int, default=2, help="text: transformer blocks")
    parser.add_argument("--hidden", type=int, default=256, help="digits: width of the MLP's hidden layers")
    parser.add_argument("--depth", type=int, default=2, help="digits: number of hidden layers")
    parser.add_argument("--chars", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 steps, period 10, window 5")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reports = []
    for task in args.tasks:
        task_args = argparse.Namespace(**vars(args))
        task_args.steps = args.steps or (200 if task == "digits" else 150)
        if args.quick:
            task_args.steps, task_args.period, task_args.window = 40, 10, 5
        for default in args.defaults:
            reports.append(analyse(task, default, task_args))
            print(f"{task} {default} done", flush=True)
    name = "lgreco_grids_quick" if args.quick else "lgreco_grids"
    if (args.hidden, args.depth) != (256, 2):
        name += f"_mlp{args.hidden}x{args.depth}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"args": vars(args), "reports": reports}, indent=1))
    text = markdown(reports, args)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
