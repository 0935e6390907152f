"""Uniform top-k vs L-GreCo on the digits MLP in the simulator: bytes sent and final accuracy over seeds.

For each seed and method:

1. build the digits MLP and the 4-worker simulator (uniform ``TopK``, or ``policy=LGreCo`` around that default);
2. train ``--steps`` steps with :func:`commlib.train.train_simulated`;
3. record the bytes worker 0 sent, the test accuracy and, for L-GreCo, the final per-option layer counts.

Writes ``benchmarks/results/lgreco_digits.json`` and ``.md``. Run: ``PYTHONPATH=. python benchmarks/lgreco_digits.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from commlib.adaptive import LGreCo
from commlib.compress import Identity, TopK
from commlib.sim import Simulator
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_simulated

RESULTS = Path(__file__).parent / "results"


def run(method: str, seed: int, steps: int, density: float, period: int) -> dict[str, object]:
    """One training run; returns its bytes, accuracy and (L-GreCo) choices."""
    model = mlp(hidden=256, seed=seed)
    cfg = TrainConfig(steps=steps, seed=seed)
    if method == "uniform":
        sim = Simulator(TopK(density=density), 4, seed=seed)
    else:
        alpha = float(method.split("=")[1])
        sim = Simulator(Identity(), 4, seed=seed, policy=LGreCo(period=period, window=min(10, period),
                                                                  default_option=f"topk:{density}", alpha=alpha))
    result = train_simulated(model, make_optimizer(model, cfg), load_digits(), cfg, sim)
    out: dict[str, object] = {"method": method, "seed": seed, "accuracy": result.accuracy,
                              "sent_bytes": sim.stats.total.sent_bytes}
    if sim.policy is not None:
        out["option_counts"] = sim.policy.option_counts()
        out["predicted_bytes_per_step"] = sim.policy.stats.predicted_bytes
        out["default_bytes_per_step"] = sim.policy.stats.default_bytes
    return out


def main() -> None:
    """Run every method × seed, then write the JSON and the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--period", type=int, default=40)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    methods = ["uniform"] + [f"lgreco:alpha={a:g}" for a in args.alphas]
    runs = [run(m, s, args.steps, args.density, args.period) for m in methods for s in range(args.seeds)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lgreco_digits.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    lines = [f"digits MLP (64-256-256-10), 4 simulated workers, {args.steps} steps, top-k default "
             f"{args.density}, L-GreCo period {args.period}; mean over {args.seeds} seeds", "",
             "| method | MB sent (worker 0) | accuracy |", "|---|---|---|"]
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        lines.append(f"| {m} | {statistics.mean(r['sent_bytes'] for r in mine) / 1e6:.2f} | "
                     f"{statistics.mean(r['accuracy'] for r in mine):.4f} |")
    (RESULTS / "lgreco_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
