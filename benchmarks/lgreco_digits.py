"""Uniform vs L-GreCo vs Accordion on the digits MLP (4 simulated workers): bytes sent and test accuracy.

For each family (top-k 0.1 with EF14, QSGD 4 bits without and with EF14, PowerSGD rank 4 without
and with its own error feedback),
method (``--methods``; the richer-grid and mixed-family L-GreCo methods for QSGD and PowerSGD)
and seed (see :mod:`lgreco_compare` for the methods):

1. build the digits MLP (64-256-256-10) and the 4-worker simulator of the method;
2. train ``--steps`` steps with :func:`commlib.train.train_simulated` (SGD, lr 0.1, momentum 0.9,
   16 samples per worker); the policies decide every ``--period`` compressed steps from the
   gradients (plus error feedback) summed over the ``--window`` steps before;
3. record the bytes worker 0 sent over the whole run (dense warm-up and the uniform steps before
   the first decision included), the last step's bytes, and the test accuracy.

Writes ``benchmarks/results/lgreco_digits{_quick}{_first<N>}{_<tag>}.json``, ``.md`` and ``.png``; with ``--merge``,
the earlier file's runs of the (family, method) pairs not run now are kept (same settings required).
Run: ``PYTHONPATH=. python benchmarks/lgreco_digits.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from lgreco_compare import (
    FAMILIES,
    METHODS,
    RESULTS,
    add_naming_arguments,
    describe,
    first_solve_note,
    make_simulator,
    merge_runs,
    results_name,
    run_all,
    summarize,
    write_results,
)

from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_simulated


def run(family: str, method: str, seed: int, args: argparse.Namespace) -> dict[str, object]:
    """One training run: its bytes, accuracy and the policy's final choices."""
    model = mlp(hidden=256, seed=seed)
    cfg = TrainConfig(steps=args.steps, seed=seed)
    sim = make_simulator(method, FAMILIES[family], seed, 4, args.period, args.window,
                         args.first_solve)
    start = time.perf_counter()
    result = train_simulated(model, make_optimizer(model, cfg), load_digits(), cfg, sim)
    return {"family": family, "method": method, "seed": seed, "accuracy": result.accuracy,
            "seconds": time.perf_counter() - start, **describe(sim)}


def _run_task(task: tuple) -> dict:
    return run(*task)


def main() -> None:
    """Run every family × method × seed, then write the JSON, the markdown table and the plot."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--period", type=int, default=20)
    parser.add_argument("--window", type=int, default=10)
    add_naming_arguments(parser)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--merge", action="store_true",
                        help="keep the earlier results file's runs of the (family, method) pairs not run now")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 steps, 2 seeds, period 10, window 5")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seeds, args.period, args.window = 40, 2, 10, 5
    torch.set_num_threads(1)
    tasks = [(family, method, seed, args) for family in args.families for method in FAMILIES[family].methods()
             if method in args.methods for seed in range(args.seeds)]
    name = results_name("lgreco_digits", args)
    runs = run_all(_run_task, tasks, args.jobs)
    if args.merge:
        runs = merge_runs(RESULTS / f"{name}.json", runs, args)
    rows = summarize(runs, "accuracy", higher_is_better=True)
    header = (f"digits MLP (64-256-256-10), 4 simulated workers, {args.steps} steps, α = 1, period "
              f"{args.period}, window {args.window}{first_solve_note(args)}; mean over {args.seeds} seeds "
              f"(bytes include the dense warm-up "
              f"and the uniform steps before the first decision)")
    write_results(name, args, runs, rows, "accuracy", header, header.split(";")[0], RESULTS)


if __name__ == "__main__":
    main()
