"""Runtime of sequential gradient coding vs GC vs no coding at 256 workers (after Krishnan et al., ICLR 2023).

Setup
-----
Timing only (``commlib.sim.coded.simulate`` without a model): n = ``--workers`` (256)
workers run J = ``--jobs`` (496) jobs; the master ends a round at (1 + μ)·fastest,
μ = ``--mu`` (1), and waits out straggler sets that break the scheme's model.

Delays (``commlib.coding.stragglers.ParametricDelays``), fitted to the paper's description
of its AWS Lambda workers: a 1.2 s invocation overhead with a heavy right tail plus
2.2 s × load of computation. Worker i in round r at load L takes

    d = 1.2·(1 + E_o) + c·L·(1 + E_c),   E_c ~ Exp(mean 0.5), c = 2.2 / 1.5 (mean slope 2.2 s),

with two overhead tails, both tuned so that 5% of the workers straggle at μ = 1 and load
0 (the notes' trace analysis: 12.8 of 256 per round):

* ``lognormal``:   E_o = 0.2·exp(0.98·Z)   (median 0.2; P(E_o > 1) = 5%; heavy tail)
* ``exponential``: E_o ~ Exp(mean 1/ln 20) (P(E_o > 1) = 5%; lighter tail)

Delays are i.i.d. over rounds and workers, and every scheme sees the same trace per seed
(common random numbers). Codes are cyclic repetition codes (loads exactly as the paper's
table; decodability of n − s results is all the timing needs).

Parameter search (per delay model and fallback), as in the paper but on a small grid,
scored by mean runtime of the first ``--probe-jobs`` (80) jobs on ``--probe-seeds`` (3)
separate traces:

* GC: s ∈ {2, 4, 6, 8, 10, 12, 15, 18, 22, 27, 32, 40};
* SR-SGC: (B, W) ∈ {(1,2), (1,3), (2,3), (1,4), (3,4), (2,5)}, λ ∈ {2, 4, 8, 12, 16, 20, 23, 27, 32, 40, 48};
* M-SGC: (B, W) with W − 1 + B ≤ 4 ({(1,2), (1,3), (2,3), (1,4)}), λ ∈ {4, 6, 9, 14, 18, 23, 27, 32, 40, 48, 64}.

The best parameters, and the paper's choices (GC s=15, SR-SGC (2,3,23), M-SGC (1,2,27)),
then run all J jobs on ``--seeds`` (10) evaluation traces. Fallbacks: ``wait-all`` (the
paper) and ``wait-conform`` (wait only until the missing workers fit the model).

Outputs: ``benchmarks/results/sgc_sweep.json`` (every figure), ``sgc_sweep.md`` (tables)
and ``sgc_sweep.png`` (runtime bars with ±1 std).

Run: ``PYTHONPATH=. python benchmarks/sgc_sweep.py [--seeds 10] [--jobs 496]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from commlib.coding import make_scheme
from commlib.coding.stragglers import FALLBACKS, Cutoff, DelayTrace, Noise, ParametricDelays
from commlib.sim.coded import simulate

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMES = ("none", "gc", "sr-sgc", "m-sgc")
PAPER_PARAMS = {"none": "none", "gc": "gc:15", "sr-sgc": "sr-sgc:2,3,23", "m-sgc": "m-sgc:1,2,27"}
PAPER_RUNTIME = {"m-sgc": (916.37, 63.14), "sr-sgc": (1019.46, 49.92), "gc": (1095.14, 50.66),
                 "none": (1321.18, 86.84)}
COMPUTE_NOISE = Noise("exponential", 0.5)
DELAY_MODELS = {
    "lognormal": ParametricDelays(1.2, 2.2 / 1.5, Noise("lognormal", 0.2, 0.98), COMPUTE_NOISE),
    "exponential": ParametricDelays(1.2, 2.2 / 1.5, Noise("exponential", 1 / math.log(20)), COMPUTE_NOISE),
}


def grid(n: int) -> dict[str, list[str]]:
    gc = [f"gc:{s}" for s in (2, 4, 6, 8, 10, 12, 15, 18, 22, 27, 32, 40) if s < n]
    sr = [f"sr-sgc:{b},{w},{lam}" for b, w in ((1, 2), (1, 3), (2, 3), (1, 4), (3, 4), (2, 5))
          for lam in (2, 4, 8, 12, 16, 20, 23, 27, 32, 40, 48) if lam < n]
    m = [f"m-sgc:{b},{w},{lam}" for b, w in ((1, 2), (1, 3), (2, 3), (1, 4))
         for lam in (4, 6, 9, 14, 18, 23, 27, 32, 40, 48, 64) if lam < n]
    return {"none": ["none"], "gc": gc, "sr-sgc": sr, "m-sgc": m}


def run_many(spec: str, traces: list[DelayTrace], n: int, jobs: int, cutoff: Cutoff) -> list[dict[str, object]]:
    return [simulate(make_scheme(spec, n, jobs, code="crc"), t, cutoff).summary() for t in traces]


def aggregate(runs: list[dict[str, object]]) -> dict[str, object]:
    times = np.array([r["total_time"] for r in runs])
    return {"scheme": runs[0]["scheme"], "load": runs[0]["load"], "load_exact": runs[0]["load_exact"],
            "delay": runs[0]["delay"], "runtime_mean": float(times.mean()), "runtime_std": float(times.std(ddof=1))
            if len(times) > 1 else 0.0, "runtimes": times.tolist(),
            "wait_outs_mean": float(np.mean([r["wait_outs"] for r in runs])),
            "rounds_mean": float(np.mean([r["rounds"] for r in runs])),
            "mean_stragglers": float(np.mean([r["mean_stragglers"] for r in runs])),
            "decode_rate": float(np.mean([r["decode_rate"] for r in runs]))}


def search(kind: str, specs: list[str], traces: list[DelayTrace], args: argparse.Namespace,
           cutoff: Cutoff) -> tuple[str, list[dict[str, object]]]:
    scored = []
    for spec in specs:
        runs = run_many(spec, traces, args.workers, args.probe_jobs, cutoff)
        scored.append({"spec": spec, "probe_runtime": float(np.mean([r["total_time"] for r in runs]))})
    best = min(scored, key=lambda s: s["probe_runtime"])
    return str(best["spec"]), scored


def ordering(rows: dict[str, dict[str, object]]) -> dict[str, object]:
    """Does M-SGC < SR-SGC < GC < none hold (by mean runtime), and by how much?"""
    t = {k: float(v["runtime_mean"]) for k, v in rows.items()}
    holds = t["m-sgc"] < t["sr-sgc"] < t["gc"] < t["none"]
    return {"holds": holds, "ranking": sorted(t, key=t.get),
            "m_vs_gc_pct": 100 * (1 - t["m-sgc"] / t["gc"]), "m_vs_none_pct": 100 * (1 - t["m-sgc"] / t["none"]),
            "sr_vs_gc_pct": 100 * (1 - t["sr-sgc"] / t["gc"]), "gc_vs_none_pct": 100 * (1 - t["gc"] / t["none"])}


def markdown(results: dict[str, object], args: argparse.Namespace) -> str:
    lines = [f"# SGC runtime sweep: {args.workers} workers, {args.jobs} jobs, μ = {args.mu}, {args.seeds} seeds",
             "", "Generated by `benchmarks/sgc_sweep.py` (see its docstring for the delay model and grid). "
             "Runtime = virtual seconds for all jobs, mean ± std over seeds. Paper (Canada traces, wait-all): "
             + ", ".join(f"{k} {m:.0f} ± {s:.0f} s" for k, (m, s) in PAPER_RUNTIME.items()) + ".", ""]
    for model, per_fb in results["models"].items():
        for fb, res in per_fb.items():
            lines += [f"## delays `{model}`, fallback `{fb}`", "",
                      "| scheme | params | load | T | runtime (s) | wait-outs | decode rate |",
                      "|---|---|---|---|---|---|---|"]
            for label, rows in (("best", res["best"]), ("paper", res["paper"])):
                for kind in SCHEMES:
                    row = rows[kind]
                    if label == "paper" and kind == "none":
                        continue
                    lines.append(f"| {kind} ({label}) | `{row['scheme']}` | {row['load']:.6f} | {row['delay']} | "
                                 f"{row['runtime_mean']:.1f} ± {row['runtime_std']:.1f} | "
                                 f"{row['wait_outs_mean']:.1f} / {row['rounds_mean']:.0f} | {row['decode_rate']:.3f} |")
            for label in ("best", "paper"):
                o = res[f"ordering_{label}"]
                lines.append(f"\n*{label} parameters*: paper's ordering M-SGC < SR-SGC < GC < none "
                             f"{'holds' if o['holds'] else 'does not hold'}; ranking {' < '.join(o['ranking'])}; "
                             f"M-SGC vs GC {o['m_vs_gc_pct']:+.1f}%, SR-SGC vs GC {o['sr_vs_gc_pct']:+.1f}%, "
                             f"GC vs none {o['gc_vs_none_pct']:+.1f}%, M-SGC vs none {o['m_vs_none_pct']:+.1f}% "
                             "(positive = faster).")
            lines.append("")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = [(m, fb) for m, per in results["models"].items() for fb in per]
    fig, axes = plt.subplots(1, len(combos), figsize=(4.2 * len(combos), 3.6), sharey=True)
    for ax, (model, fb) in zip(np.atleast_1d(axes), combos):
        res = results["models"][model][fb]
        x = np.arange(len(SCHEMES))
        for label, color, dx in (("best", "tab:blue", -0.2), ("paper", "tab:orange", 0.2)):
            means = [res[label][s]["runtime_mean"] for s in SCHEMES]
            stds = [res[label][s]["runtime_std"] for s in SCHEMES]
            ax.bar(x + dx, means, 0.4, yerr=stds, color=color, label=f"{label} params", capsize=3)
        ax.set_xticks(x, SCHEMES)
        ax.set_title(f"{model} delays, {fb}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel(f"runtime of {results['config']['jobs']} jobs (s)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=496)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--probe-seeds", type=int, default=3)
    parser.add_argument("--probe-jobs", type=int, default=80)
    parser.add_argument("--mu", type=float, default=1.0)
    parser.add_argument("--models", nargs="+", default=list(DELAY_MODELS), choices=list(DELAY_MODELS))
    parser.add_argument("--fallbacks", nargs="+", default=list(FALLBACKS), choices=list(FALLBACKS))
    args = parser.parse_args()
    start = time.perf_counter()
    specs = grid(args.workers)
    results: dict[str, object] = {"config": vars(args), "grid": specs, "models": {}}
    for model_name in args.models:
        model = DELAY_MODELS[model_name]
        probe_len = args.probe_jobs + 8
        probes = [model.trace(probe_len, args.workers, seed=1000 + k) for k in range(args.probe_seeds)]
        evals = [model.trace(args.jobs + 8, args.workers, seed=k) for k in range(args.seeds)]
        results["models"][model_name] = {}
        for fb in args.fallbacks:
            cutoff = Cutoff(args.mu, fb)
            res: dict[str, object] = {"best": {}, "paper": {}, "search": {}}
            for kind in SCHEMES:
                best, scored = search(kind, specs[kind], probes, args, cutoff)
                res["search"][kind] = scored
                res["best"][kind] = aggregate(run_many(best, evals, args.workers, args.jobs, cutoff))
                res["paper"][kind] = aggregate(run_many(PAPER_PARAMS[kind], evals, args.workers, args.jobs, cutoff))
            res["ordering_best"] = ordering(res["best"])
            res["ordering_paper"] = ordering(res["paper"])
            results["models"][model_name][fb] = res
            best = res["best"]
            summary = ", ".join(f"{k} {best[k]['scheme']} {best[k]['runtime_mean']:.0f}s" for k in SCHEMES)
            print(f"[{time.perf_counter() - start:6.1f}s] {model_name}/{fb}: {summary}", flush=True)
    results["elapsed_s"] = time.perf_counter() - start
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sgc_sweep.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "sgc_sweep.md").write_text(markdown(results, args))
    plot(results, RESULTS / "sgc_sweep.png")
    print((RESULTS / "sgc_sweep.md").read_text())


if __name__ == "__main__":
    main()
