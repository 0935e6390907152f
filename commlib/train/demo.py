"""``commlib demo``: four local workers show compression, a straggler and a Byzantine worker; one table, one plot.

Run ``commlib demo`` (or ``make demo``; ``--quick`` for a smoke run). Three parts:

1. **Compression.** :func:`commlib.train.spawn.launch` starts 4 gloo ranks on loopback
   (timeouts everywhere, no ``torchrun`` needed); each trains the digits MLP under DDP
   with :func:`commlib.train.trainer.run_rank` once per hook — fp32, top-k 10 % with
   EF21 error feedback, QSGD 4-bit, PowerSGD rank 4 — and reports bytes sent per step,
   the ratio to fp32, test accuracy and wall time.
2. **Byzantine worker.** In the same process group, the last rank sends ALIE
   (Baruch et al., NeurIPS 2019; ``z`` = ``--alie-z``) through the model-wide robust hook
   (:mod:`commlib.ddp.robust`); averaging (``mean``) against the Flag Aggregator
   (Almeida et al., CVPR 2024): test accuracy.
3. **Straggler.** The virtual-clock coded simulator (:func:`commlib.sim.coded.simulate`)
   trains the same MLP on real gradients (half as many steps, batch 32) with 4 workers,
   worker 2 ten times slower every round: no coding (every round waits for it) against gradient coding GC(s=1)
   (Tandon et al., ICML 2017), which decodes every round from any 3 workers.
   Times are simulated seconds of the simulator's default workers (1.2 s overhead,
   2.2 s of computation per full job).

Rank 0's figures and the simulator's go into one table on stdout, ``demo.png`` and
``demo.json`` under ``--out`` (default ``demo_results/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import ops
from .spawn import launch
from .trainer import TrainSettings, number_type, run_rank

__all__ = ["DemoRow", "main"]

HOOKS = {
    "fp32 (no compression)": TrainSettings(compressor="fp32"),
    "top-k 10% + EF21": TrainSettings(compressor="topk:0.1", feedback="ef21"),
    "QSGD 4-bit": TrainSettings(compressor="qsgd:4"),
    "PowerSGD rank 4": TrainSettings(compressor="powersgd:4"),
}
RULES = {"mean": "mean", "flag": "Flag"}
STRAGGLER_SCHEMES = {"none": "no coding (waits)", "gc:1": "gradient coding GC(s=1)"}
SLOW_WORKER = 2


@dataclass
class DemoRow:
    """One line of the table (``None``: not applicable) and the curve the plot draws for it."""

    part: str
    method: str
    bytes_per_step: float | None
    ratio: float | None
    accuracy: float
    seconds: float
    curve: list[float]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="commlib demo", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Four local workers on the digits data: gradient compression, a straggler and a Byzantine "
                    "worker. Prints one table and saves a plot.",
        epilog="example:\n  commlib demo --out demo_results        # about 90 s of CPU time in all\n"
               "  commlib demo --quick                    # a few seconds of training, for a smoke test")
    p.add_argument("--out", type=Path, default=Path("demo_results"), metavar="DIR",
                   help="where demo.png and demo.json go (created; default demo_results/)")
    p.add_argument("--workers", type=number_type(int, 3), default=4, metavar="N", help="local gloo ranks (default 4)")
    p.add_argument("--steps", type=number_type(int, 1), help="training steps per run (default 200; 30 with --quick)")
    p.add_argument("--alie-z", type=number_type(float, 0), default=4.0, metavar="Z",
                   help="strength of the Byzantine rank's ALIE attack (default 4)")
    p.add_argument("--seed", type=number_type(int, 0), default=0)
    p.add_argument("--timeout", type=number_type(float, 1), default=600.0, metavar="SEC",
                   help="give up (and stop the workers) after this long (default 600)")
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    return p


def _worker(rank: int, world: int, runs: list[TrainSettings]) -> list[dict[str, Any]] | None:
    """Every run on this rank (parts 1 and 2); rank 0 returns the summaries."""
    summaries = [run_rank(rank, world, settings) for settings in runs]
    return summaries if rank == 0 else None


def _distributed_rows(args: argparse.Namespace, steps: int) -> list[DemoRow]:
    """Parts 1 and 2 on ``args.workers`` spawned ranks."""
    base = {"steps": steps, "seed": args.seed, "progress": False}
    byzantine = (args.workers - 1,)
    runs = [replace(s, **base) for s in HOOKS.values()]
    runs += [TrainSettings(aggregate=rule, byzantine=byzantine, attack="alie", strength=args.alie_z, **base)
             for rule in RULES]
    summaries = launch(_worker, args.workers, runs, timeout=args.timeout, collective_timeout=120.0)[0]
    rows = []
    for label, summary in zip(list(HOOKS) + [f"{name} vs ALIE on rank {byzantine[0]}" for name in RULES.values()],
                              summaries):
        per_step = summary.get("stats", {}).get("per_step")
        rows.append(DemoRow("compression" if per_step else "byzantine", label,
                            per_step["sent_bytes"] if per_step else None,
                            per_step["ratio_vs_fp32"] if per_step else None,
                            summary["accuracy"], summary["seconds"], summary["losses"]))
    return rows


def _straggler_rows(args: argparse.Namespace, jobs: int) -> list[DemoRow]:
    """Part 3 in this process: coded training on the virtual clock, worker ``SLOW_WORKER`` slow every round."""
    from ..coded.injector import straggler_trace
    from ..coding import make_scheme
    from ..coding.stragglers import Cutoff
    from ..sim.coded import CodedTraining, simulate
    from .data import load_digits
    from .loop import evaluate
    from .models import mlp

    data = load_digits()
    rows = []
    for spec, label in STRAGGLER_SCHEMES.items():
        scheme = make_scheme(spec, args.workers, jobs, seed=args.seed)
        trace = straggler_trace(f"worker:{SLOW_WORKER}", scheme.rounds, args.workers, seed=args.seed, fast=1.2,
                                slow=12.0, compute=2.2)
        training = CodedTraining(lambda k: mlp(data.features, data.classes, seed=args.seed), data.x_train,
                                 data.y_train, batch_size=32, lr=0.1, seed=args.seed, check=False)
        run = simulate(scheme, trace, Cutoff(), training)
        finish = np.sort(run.finish_time[np.isfinite(run.finish_time)])
        rows.append(DemoRow("straggler", label, None, None, evaluate(training.models[0], data), run.total_time,
                            finish.tolist()))
    return rows


def _table(rows: list[DemoRow], header: str) -> str:
    head = f"{'part':<13}{'method':<26}{'bytes/step':>11}{'vs fp32':>9}{'accuracy':>10}{'time (s)':>10}"
    lines = [header, "", head, "-" * len(head)]
    for r in rows:
        sent = f"{r.bytes_per_step:.0f}" if r.bytes_per_step is not None else "-"
        ratio = f"{r.ratio:.1f}x" if r.ratio is not None else "-"
        secs = f"{r.seconds:.1f}" + ("*" if r.part == "straggler" else " ")
        lines.append(f"{r.part:<13}{r.method:<26}{sent:>11}{ratio:>9}{r.accuracy:>10.3f}{secs:>11}")
    lines.append("-" * len(head))
    lines.append(f"* simulated seconds on a virtual clock (half the steps, batch 32): worker {SLOW_WORKER} takes 10x "
                 "longer every round")
    return "\n".join(lines)


def _smooth(values: list[float], width: int = 10) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    width = max(1, min(width, len(v)))
    return np.convolve(v, np.ones(width) / width, mode="valid")


def _plot(path: Path, rows: list[DemoRow], title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.2), layout="constrained")
    loss_ax, strag_ax, byz_ax = fig.subplots(1, 3)
    for r in rows:
        if r.part == "compression":
            saving = f": {r.ratio:.1f}x fewer bytes" if r.ratio and r.ratio > 1.01 else ""
            loss_ax.plot(_smooth(r.curve), label=r.method + saving)
        elif r.part == "byzantine":
            byz_ax.plot(_smooth(r.curve), label=f"{r.method}: acc {r.accuracy:.2f}")
        else:
            strag_ax.step(r.curve, np.arange(1, len(r.curve) + 1), where="post",
                          label=f"{r.method}: {r.seconds:.0f} s")
    loss_ax.set(xlabel="step", ylabel="training loss (moving average)", title="compression: same loss, fewer bytes")
    strag_ax.set(xlabel="simulated time (s)", ylabel="steps completed", title="a straggler: coding stops the wait")
    byz_ax.set(xlabel="step", ylabel="training loss, honest rank 0 (moving average)",
               title="a Byzantine worker: mean vs Flag")
    byz_ax.set_yscale("log")
    for ax in (loss_ax, strag_ax, byz_ax):
        ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Run ``commlib demo``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    steps = args.steps or (30 if args.quick else 200)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out: cannot create {args.out}: {exc.strerror}")
    t0 = time.perf_counter()
    print(f"commlib demo: {args.workers} local gloo workers, {steps} steps per run ...", flush=True)
    rows = _distributed_rows(args, steps)
    rows[len(HOOKS):len(HOOKS)] = _straggler_rows(args, max(1, steps // 2))
    header = (f"commlib demo: digits MLP 64-128-128-10, {args.workers} workers, {steps} steps, "
              f"kernels {ops.backend()}, {time.perf_counter() - t0:.0f} s in all")
    print(_table(rows, header))
    _plot(args.out / "demo.png", rows, header)
    (args.out / "demo.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                    "rows": [vars(r) for r in rows]}, indent=1))
    print(f"plot: {args.out / 'demo.png'}\njson: {args.out / 'demo.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
