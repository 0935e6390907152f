"""Byzantine robustness on digits: worst-case test accuracy over attacks, per rule (with and without NNM) and f.

Setup (ByzFL's default benchmark, scaled to the digits MLP)
-----------------------------------------------------------
:func:`commlib.sim.byzantine.simulate_byzantine`: 10 honest workers and f ∈ {1, 2, 3, 4}
Byzantine ones (the last f), iid shards of the digits training set (``--alpha`` for a
Dirichlet split), batch 25 per worker, worker momentum 0.9, weight decay 1e−4, server SGD with
``--lr`` 0.5 for ``--steps`` 100 (ByzFL runs lr 0.1 for 800 steps on MNIST; digits needs fewer,
and 100 steps at lr 0.5 reach about 96% without attack), ``--seeds`` 1 seed.

Rules: mean, coordinate-wise median, trimmed mean(f), Meamed(f), Phocas(f), geometric median,
Krum(f), Multi-Krum(f), Bulyan(f) (only where n ≥ 4f + 3), centered clipping (τ = 1, a few
times the honest momenta's norm, L = 1), MDA(f), and Flag (m = ⌊n/2⌋ as the authors scale it,
λ = 0, 10 IRLS steps, ``rescale=True`` so that its step is comparable with the others' at the
same learning rate) — each alone and after NNM(f).

Attacks: sign flipping, IPM(ε = 0.1), ALIE (Baruch's z from n and f), optimal IPM and optimal
ALIE (line search against the rule and NNM in use, ``--opt-evals`` evaluations; ByzFL uses 20),
MinMax (−σ direction), mimic (worker 0), label flipping, Gaussian N(0, 1)ᵈ, +∞ (every rule, the
mean included, drops non-finite rows and counts them against f, so +∞ harms none of them).

Metric: test accuracy after the last step; per (rule, f) cell the worst case over attacks (a
diverged run counts with its accuracy, 0.1 or less). Cost of robustness: 10 honest workers and no
attacker, each rule configured for f = 1 and f = 3, vs the mean.

Outputs: ``benchmarks/results/robust_digits.json`` (every run), ``robust_digits.md`` (tables),
``robust_digits.png`` (heatmap). ``--quick``: f ∈ {1, 3}, four attacks, 40 steps (230 runs, a smoke run).
Run: ``PYTHONPATH=. python benchmarks/robust_digits.py [--jobs 2] [--quick]``.

Time: the optimal attacks cost ``--opt-evals`` + 1 aggregations per step and take about 70% of
the full run (966 runs). On our shared 2-core machine the full run took 20 min with 2 processes
(load average 1.5–5.6 from other jobs; 40 core-minutes in the runs) and 50 min at load 5–14,
with bitwise the same results; ``--quick`` took 3.3 min. ``--opt-evals 4 --steps 60`` should
bring the full run to about 10 min (estimated from the per-run times, not measured).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from pathlib import Path

import torch

from commlib.robust import (
    ALIE,
    IPM,
    MDA,
    NNM,
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    FlagAggregator,
    Gaussian,
    GeometricMedian,
    Krum,
    LabelFlip,
    Meamed,
    Mean,
    Mimic,
    MinMax,
    MultiKrum,
    NonFinite,
    OptimalALIE,
    OptimalIPM,
    Phocas,
    SignFlip,
    TrimmedMean,
)
from commlib.sim.byzantine import ByzantineConfig, simulate_byzantine
from commlib.train.data import load_digits

RESULTS = Path(__file__).resolve().parent / "results"
HONEST = 10
RULES = ("mean", "median", "trimmed_mean", "meamed", "phocas", "geomed", "krum", "multi_krum", "bulyan", "cc", "mda",
         "flag")
ATTACKS = ("sign_flip", "ipm_0.1", "alie", "opt_ipm", "opt_alie", "min_max", "mimic", "label_flip", "gaussian", "inf")
QUICK_ATTACKS = ("sign_flip", "alie", "opt_alie", "label_flip")


def make_rule(name: str, f: int, n: int):
    """A fresh rule configured for f Byzantine among n, or None where the rule cannot run."""
    if name == "bulyan" and n < 4 * f + 3:
        return None
    return {
        "mean": lambda: Mean(), "median": lambda: CoordinateMedian(), "trimmed_mean": lambda: TrimmedMean(f),
        "meamed": lambda: Meamed(f), "phocas": lambda: Phocas(f), "geomed": lambda: GeometricMedian(),
        "krum": lambda: Krum(f), "multi_krum": lambda: MultiKrum(f), "bulyan": lambda: Bulyan(f),
        "cc": lambda: CenteredClipping(tau=1.0), "mda": lambda: MDA(f),
        "flag": lambda: FlagAggregator(m=n // 2, max_iter=10, rescale=True),
    }[name]()


def make_attack(name: str, rule, pre: list, evals: int, seed: int):
    return {
        "sign_flip": lambda: SignFlip(), "ipm_0.1": lambda: IPM(0.1), "alie": lambda: ALIE(),
        "opt_ipm": lambda: OptimalIPM(rule, pre, evals=evals), "opt_alie": lambda: OptimalALIE(rule, pre, evals=evals),
        "min_max": lambda: MinMax(), "mimic": lambda: Mimic(0), "label_flip": lambda: LabelFlip(),
        "gaussian": lambda: Gaussian(seed=seed), "inf": lambda: NonFinite("inf"), "none": lambda: None,
    }[name]()


_DATA = {}


def run_one(task: dict) -> dict:
    """One simulation (in a pool worker: one thread, data loaded once per process)."""
    torch.set_num_threads(1)
    seed = task["seed"]
    if seed not in _DATA:
        _DATA[seed] = load_digits(seed)
    f, declared = task["f"], task["declared_f"]
    n = HONEST + f
    rule = make_rule(task["rule"], declared, n)
    pre = [NNM(declared)] if task["nnm"] else []
    attack = make_attack(task["attack"], rule, pre, task["evals"], seed)
    cfg = ByzantineConfig(honest=HONEST, byzantine=f, steps=task["steps"], lr=task["lr"], alpha=task["alpha"],
                          seed=seed)
    t0 = time.perf_counter()
    res = simulate_byzantine(rule, attack, cfg, pre, _DATA[seed])
    last = res.losses[-10:]
    return {**task, "accuracy": res.accuracy, "final_loss": sum(last) / len(last) if last else float("nan"),
            "seconds": time.perf_counter() - t0}


def label(rule: str, nnm: bool) -> str:
    return f"NNM∘{rule}" if nnm else rule


def heatmap(matrix: list[list[float]], rows: list[str], cols: list[str], title: str, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: heatmap skipped")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [[float("nan") if v is None else v for v in row] for row in matrix]
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 3, 0.32 * len(rows) + 1.5))
    im = ax.imshow(data, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--alpha", type=float, default=None, help="Dirichlet alpha (default: iid)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--fs", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--opt-evals", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="f in {1, 3}, four attacks, 40 steps")
    parser.add_argument("--out", type=str, default="robust_digits")
    args = parser.parse_args()
    fs = [1, 3] if args.quick else args.fs
    steps = 40 if args.quick else args.steps
    attacks = QUICK_ATTACKS if args.quick else ATTACKS
    common = {"steps": steps, "lr": args.lr, "alpha": args.alpha, "evals": args.opt_evals}

    tasks = []
    for seed in range(args.seeds):
        for nnm in (False, True):
            for rule in RULES:
                for f in fs:
                    if make_rule(rule, f, HONEST + f) is None:
                        continue
                    tasks += [{**common, "seed": seed, "rule": rule, "nnm": nnm, "f": f, "declared_f": f,
                               "attack": a} for a in attacks]
                for declared in (1, 3):  # cost of robustness: no attacker, rule configured for `declared`
                    if make_rule(rule, declared, HONEST) is not None:
                        tasks.append({**common, "seed": seed, "rule": rule, "nnm": nnm, "f": 0,
                                      "declared_f": declared, "attack": "none"})
    # the slow tasks first, so that the pool ends together
    tasks.sort(key=lambda t: (not t["attack"].startswith("opt"), t["rule"] not in ("geomed", "mda", "bulyan")))
    print(f"{len(tasks)} runs of {steps} steps on {args.jobs} process(es)", flush=True)
    t0 = time.perf_counter()
    rows = []
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for i, row in enumerate(pool.imap_unordered(run_one, tasks), 1):
            rows.append(row)
            if i % 50 == 0 or i == len(tasks):
                print(f"  {i}/{len(tasks)} runs, {time.perf_counter() - t0:.0f} s", flush=True)
    elapsed = time.perf_counter() - t0

    def mean_acc(sel: list[dict]) -> float:
        return sum(r["accuracy"] for r in sel) / len(sel)

    labels = [label(r, nnm) for nnm in (False, True) for r in RULES]
    worst, worst_attack = [], []
    for nnm in (False, True):
        for rule in RULES:
            wrow, arow = [], []
            for f in fs:
                per_attack = {a: [r for r in rows if r["rule"] == rule and r["nnm"] == nnm and r["f"] == f
                                  and r["attack"] == a] for a in attacks}
                if not per_attack[attacks[0]]:
                    wrow.append(None)
                    arow.append("n/a")
                    continue
                accs = {a: mean_acc(sel) for a, sel in per_attack.items()}
                a_min = min(accs, key=accs.get)
                wrow.append(accs[a_min])
                arow.append(a_min)
            worst.append(wrow)
            worst_attack.append(arow)
    cost = {}
    for nnm in (False, True):
        for rule in RULES:
            for declared in (1, 3):
                sel = [r for r in rows if r["rule"] == rule and r["nnm"] == nnm and r["f"] == 0
                       and r["declared_f"] == declared]
                cost[(label(rule, nnm), declared)] = mean_acc(sel) if sel else None
    reference = cost[("mean", 1)]

    split = "iid" if args.alpha is None else f"Dirichlet α={args.alpha}"
    title = (f"digits MLP, {HONEST} honest + f Byzantine, {split}, {steps} steps, lr {args.lr}: "
             f"worst-case test accuracy over {len(attacks)} attacks")
    lines = [f"# Byzantine robustness on digits ({'quick' if args.quick else 'full'} run)", "", title + ".", "",
             "| rule | " + " | ".join(f"f={f}" for f in fs) + " |", "|---|" + "---|" * len(fs)]
    for lab, wrow, arow in zip(labels, worst, worst_attack):
        cells = ["n/a" if v is None else f"{v:.3f} ({a})" for v, a in zip(wrow, arow)]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines += ["", f"Cost of robustness: {HONEST} honest workers, no attacker; accuracy of each rule configured "
              f"for f = 1 and f = 3 (mean: {reference:.3f}).", "", "| rule | f=1 | f=3 |", "|---|---|---|"]
    for lab in labels:
        cells = ["n/a" if cost[(lab, d)] is None else f"{cost[(lab, d)]:.3f}" for d in (1, 3)]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines += ["", f"{len(rows)} runs, {elapsed:.0f} s on {args.jobs} process(es)."]
    table = "\n".join(lines) + "\n"
    print("\n" + table)

    RESULTS.mkdir(exist_ok=True)
    setup = {"honest": HONEST, "fs": fs, "steps": steps, "lr": args.lr, "alpha": args.alpha, "seeds": args.seeds,
             "batch": 25, "worker_momentum": 0.9, "weight_decay": 1e-4, "opt_evals": args.opt_evals,
             "attacks": list(attacks), "rules": list(RULES), "quick": args.quick, "seconds": elapsed,
             "cc": "tau=1.0, iters=1", "flag": "m=n//2, lam=0, max_iter=10, rescale=True"}
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"setup": setup, "runs": rows}, indent=1) + "\n")
    (RESULTS / f"{args.out}.md").write_text(table)
    written = [f"{args.out}.json", f"{args.out}.md"]
    if heatmap(worst, labels, [f"f={f}" for f in fs], title, RESULTS / f"{args.out}.png"):
        written.append(f"{args.out}.png")
    print("wrote " + ", ".join(str(RESULTS / w) for w in written))


if __name__ == "__main__":
    main()
