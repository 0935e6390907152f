"""CPU benchmark: L-GreCo's dynamic program and error tables.

What is measured
----------------
One process, ``torch.set_num_threads(--threads)`` (2).

1. **The dynamic program** (``commlib.adaptive.dp``) on ``--layers`` (500) ×
   ``--options`` (16) × ``--bins`` (10,000). Tables are synthetic trade-offs: per
   layer, errors fall and costs rise across options (log-uniform, so every
   option is on the layer's Pareto front before discretization), the default
   is option ``K/2``, α = 1. Timed: ``solve_discretized`` (steps 2–4: pruning,
   min-plus convolutions, backtracking) and ``solve`` (adds discretizing and the
   comparison with the uniform default). Target: ≤ 100 ms.
2. **Error tables** (``commlib.adaptive.tables.error_table``) for the
   gradients of a 25M-parameter MLP, 1024-4096-4096-1024-10 with biases
   (25.2M parameters, 8 tensors), Gaussian tensors (the cost does not depend
   on the values). Two option sets: ``mixed`` (top-k 0.001/0.01/0.05/0.1, QSGD
   bits 2/4/8 × buckets 128/512, PowerSGD ranks 1/2/4/8/16, fp16, bf16, fp32:
   18 options) and ``powersgd`` (the paper's grid for rank 4: ranks 2–8 and
   fp32). Timed per family and in total, a whole ``LGreCo.solve`` (error
   table, cost table, dynamic program) on the mixed set, and, apart, one
   ``ErrorAccumulator.add`` (what ``LGreCo.observe`` costs per step in the window). Target: ≤ 1 s
   per solve.

Each measurement runs ``--warmup`` (1) untimed call, then ``--repeats`` (5)
timed calls; the JSON keeps every wall-clock and process-CPU time, the table
prints the median and best wall time and the median CPU time. The first call
of a process is slow on this machine (fresh memory pages), hence the warm-up.
Other work on the machine (the load average, in the JSON) inflates wall
times; with ``--threads 1`` the CPU time is what the work would take on an
idle core (memory-bandwidth and cache sharing aside), so it is the robust
figure on a shared machine. With 2 threads on a loaded machine torch's
parallel kernels wait for descheduled threads and wall times explode.

Writes ``benchmarks/results/lgreco_dp.json``.

Usage::

    PYTHONPATH=. python benchmarks/lgreco_dp.py            # ~1 min on 2 cores
    PYTHONPATH=. python benchmarks/lgreco_dp.py --quick    # 100 layers, MLP 1024-1024-1024-10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from commlib.adaptive import LGreCo, Option, option_grid
from commlib.adaptive.dp import discretize, solve, solve_discretized
from commlib.adaptive.tables import ErrorAccumulator, error_table

RESULTS = Path(__file__).parent / "results" / "lgreco_dp.json"


def _timed(fn: Callable[[], object], warmup: int, repeats: int) -> dict[str, object]:
    """Wall-clock and process CPU seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "median_s": statistics.median(wall),
        "best_s": min(wall),
        "cpu_median_s": statistics.median(cpu),
        "times_s": wall,
        "cpu_s": cpu,
    }


def synthetic_tables(layers: int, options: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: costs rising and errors falling across options, log-uniform."""
    rng = np.random.default_rng(seed)
    cost = np.sort(10 ** rng.uniform(3, 7, size=(layers, options)), axis=1)
    error = np.sort(10 ** rng.uniform(-3, 1, size=(layers, options)), axis=1)[:, ::-1].copy()
    return cost, error


def mlp_shapes(widths: list[int]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        shapes[f"{i}.weight"] = (fan_out, fan_in)
        shapes[f"{i}.bias"] = (fan_out,)
    return shapes


def bench_dp(args: argparse.Namespace) -> dict[str, object]:
    cost, error = synthetic_tables(args.layers, args.options, args.seed)
    default = args.options // 2
    budget = float(error[:, default].sum())
    q = discretize(error, budget, args.bins)
    sol = solve(cost, error, default, bins=args.bins)
    return {
        "layers": args.layers,
        "options": args.options,
        "bins": args.bins,
        "solve_discretized": _timed(lambda: solve_discretized(cost, q, args.bins), args.warmup, args.repeats),
        "solve": _timed(lambda: solve(cost, error, default, bins=args.bins), args.warmup, args.repeats),
        "cost_vs_uniform": sol.cost / float(cost[:, default].sum()),
        "error_vs_budget": sol.error / sol.budget,
    }


def bench_tables(args: argparse.Namespace, widths: list[int]) -> dict[str, object]:
    shapes = mlp_shapes(widths)
    gen = torch.Generator().manual_seed(args.seed)
    grads = {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}
    numel = sum(t.numel() for t in grads.values())
    grids = {
        "mixed": option_grid(
            topk=(0.001, 0.01, 0.05, 0.1),
            qsgd_bits=(2, 4, 8),
            qsgd_buckets=(128, 512),
            powersgd=(1, 2, 4, 8, 16),
            casts=("fp16", "bf16", "fp32"),
        ),
        "powersgd": option_grid(powersgd=range(2, 9)),
    }
    out: dict[str, object] = {"widths": widths, "parameters": numel, "tensors": len(grads)}
    for label, options in grids.items():
        per_family: dict[str, list[float]] = {}

        def run(options: list[Option] = options, per_family: dict[str, list[float]] = per_family) -> None:
            timings: dict[str, float] = {}
            error_table(grads, options, timings=timings)
            for family, seconds in timings.items():
                per_family.setdefault(family, []).append(seconds)

        out[label] = {
            "options": [str(o) for o in options],
            "table": _timed(run, args.warmup, args.repeats),
            "per_family_median_s": {f: statistics.median(v[args.warmup :]) for f, v in per_family.items()},
        }

    policy = LGreCo(period=1, window=1, options=grids["mixed"], default_option="qsgd:4x128", bins=args.bins)
    policy.register(shapes)

    accumulator = ErrorAccumulator(window=1)
    observe_s = _timed(lambda: (accumulator.reset(), accumulator.add(grads)), args.warmup, args.repeats)
    policy.observe(0, grads)
    policy.solve()  # warm-up
    solves = []
    for _ in range(args.repeats):
        policy.observe(0, grads)  # untimed: the runtime's per-step cost, measured above
        solves.append(_timed(policy.solve, 0, 1))
    out["lgreco_observe"] = observe_s
    out["lgreco_solve_mixed"] = {
        "median_s": statistics.median(t["median_s"] for t in solves),
        "best_s": min(t["best_s"] for t in solves),
        "cpu_median_s": statistics.median(t["cpu_median_s"] for t in solves),
        "times_s": [t["median_s"] for t in solves],
        "cpu_s": [t["cpu_median_s"] for t in solves],
    }
    out["lgreco_choices"] = {name: str(opt) for name, opt in policy.choices().items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=500)
    ap.add_argument("--options", type=int, default=16)
    ap.add_argument("--bins", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="100 layers; MLP 1024-1024-1024-10")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.quick:
        args.layers = 100
    widths = [1024, 1024, 1024, 10] if args.quick else [1024, 4096, 4096, 1024, 10]
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    dp = bench_dp(args)
    tables = bench_tables(args, widths)
    result = {
        "config": vars(args) | {"out": str(args.out)},
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "dp": dp,
        "tables": tables,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    ms = 1e3
    print(f"DP {dp['layers']} layers x {dp['options']} options x {dp['bins']} bins (target <= 100 ms)")
    for key in ("solve_discretized", "solve"):
        s = dp[key]
        print(
            f"  {key:18s} median {s['median_s'] * ms:7.1f} ms   best {s['best_s'] * ms:7.1f} ms   "
            f"CPU median {s['cpu_median_s'] * ms:7.1f} ms"
        )
    print(f"  cost vs uniform {dp['cost_vs_uniform']:.3f}, error / budget {dp['error_vs_budget']:.4f}")
    mlp = "-".join(map(str, widths))
    print(f"Error tables, MLP {mlp}: {tables['parameters'] / 1e6:.1f}M parameters (target <= 1 s)")
    for label in ("mixed", "powersgd"):
        t = tables[label]
        fams = ", ".join(f"{f} {v * ms:.0f}" for f, v in t["per_family_median_s"].items())
        print(
            f"  {label:8s} {len(t['options']):2d} options: median {t['table']['median_s'] * ms:6.0f} ms, "
            f"best {t['table']['best_s'] * ms:6.0f} ms, CPU {t['table']['cpu_median_s'] * ms:6.0f} ms  ({fams} ms)"
        )
    s = tables["lgreco_observe"]
    print(f"  observe (one step): median {s['median_s'] * ms:6.0f} ms, CPU {s['cpu_median_s'] * ms:6.0f} ms")
    s = tables["lgreco_solve_mixed"]
    print(
        f"  LGreCo.solve (mixed): median {s['median_s'] * ms:6.0f} ms, best {s['best_s'] * ms:6.0f} ms, "
        f"CPU {s['cpu_median_s'] * ms:6.0f} ms"
    )
    print(f"load average before {load_before}, after {result['loadavg_after']}; wrote {args.out}")


if __name__ == "__main__":
    main()
