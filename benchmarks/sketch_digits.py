"""Sketched gradient exchange on digits: accuracy and bytes per family and mode, FetchSGD, and accuracy vs ε with DP.

Setup
-----
The reference run of :mod:`commlib.train` in the simulator (``train_simulated``):
the digits MLP (64-128-128-10, d = 26,122 parameters), 4 virtual workers, batch
16 per worker, ``--steps`` 300 steps, SGD with momentum 0.9 (momentum 0 for
FetchSGD, whose momentum lives in the sketch), the exchange's defaults (2 dense
warm-up steps; 1-D biases, 266 values, always dense). Every method runs at each
learning rate of its grid (:func:`methods`); the table reports the rate with the lowest training
loss (mean of the last 30 steps) and its test accuracy. A diverged run counts
as accuracy 0.1. The unbiased sketches and FetchSGD share one grid (``SHARED``),
so their comparison is tuned alike; at its best rate each method of that
comparison is rerun with ``--seeds`` (mean ± spread over seeds: model init, data order,
sketch seeds).

Part 1 — s = d/20 and d/100 (``--ratios``): ``Sketch`` unbiased with block SRHT,
count sketch (1 row) and block Gaussian (blocks of 512: faster to draw);
EF-projection (orthonormal SRHT + ``EF14``); FetchSGD (5 rows, k = d/(5·ratio),
the same bytes as the sketch, k = the columns per row) per tensor, as the exchange runs it, and
model-wide (the whole gradient flattened into one tensor and one sketch, as
Rothchild et al. run it); top-k + EF14 at density 1/(2·ratio) (8 bytes per
entry: the same bytes again); uncompressed fp32. Bytes are those one worker
sends in a compressed step (``CommStats``, the last step).

Heavy hitters: why FetchSGD loses here. On the gradient and the momentum of an
uncompressed run (steps 0, 100, 200), the share of ‖g‖² in the top k
coordinates and how many of those top k a 5-row count sketch of the same bytes
recovers (``heavy_hitters``).

Part 2 — DP (sample level): per-sample gradients (``torch.func``) clipped to
C = 1, summed per worker, the whole model sent as one tensor through
``DPSketch`` (noise N(0, z²C²) on worker 0, before the all-reduce; rescaled by
d/s), divided by the global batch. z is chosen by Opacus for ε ∈ ``--epsilons``
at δ = 1e-5, q = 64/1438, T = steps; ε is reported by the RDP accountant at
every epoch. ``ratio 1`` is plain DP-SGD (a rotation, no compression). The
learning rate is picked by training loss, as in part 1 (tuning on private data
has a privacy cost of its own that this table does not account).

Outputs: ``benchmarks/results/sketch_digits.json`` (every run, per-epoch ε) and
``sketch_digits.md`` (tables). Run: ``PYTHONPATH=. python benchmarks/sketch_digits.py``
(33 minutes with ``--reuse-dp`` on 2 busy cores; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from commlib import ops
from commlib.compress import Compressor, Identity, TopK
from commlib.compress.sketch import FetchSGD, Sketch, unsketch_topk
from commlib.errors import ProtocolMismatchError, WireFormatError
from commlib.feedback import EF14
from commlib.privacy import DPSketch, PrivacyAccountant, clip_per_sample, noise_multiplier_for, per_sample_gradients
from commlib.sim import Simulator
from commlib.train import TrainConfig, load_digits, mlp, train_simulated
from commlib.train.data import Dataset, global_batches, worker_batch

RESULTS = Path(__file__).parent / "results"
WORKERS = 4
DELTA = 1e-5
MAX_NORM = 1.0
SHARED = [0.3, 0.1, 0.03, 0.01, 0.003]  # one learning-rate grid for the unbiased sketches and FetchSGD
COMPARED = ("srht unbiased", "countsketch unbiased", "FetchSGD per tensor", "FetchSGD model-wide",
            "top-k + EF14 (same bytes)")  # rerun with every seed at their best rate


def methods(ratio: float) -> dict[str, tuple[Compressor, object, float, list[float]]]:
    """name -> (compressor, feedback, optimizer momentum, learning rates) at s = d/ratio.

    The unbiased sketches and FetchSGD share ``SHARED``; the other grids
    bracket each method's best rate (found in a pilot run).
    """
    small = [0.03, 0.01, 0.003]
    return {
        "srht unbiased": (Sketch(ratio=ratio, family="srht"), None, 0.9, SHARED),
        "countsketch unbiased": (Sketch(ratio=ratio, family="countsketch"), None, 0.9, SHARED),
        "gaussian unbiased (block 512)": (Sketch(ratio=ratio, family="gaussian", block=512), None, 0.9, small),
        "EF-projection (srht + EF14)": (Sketch(ratio=ratio, mode="projection"), EF14(), 0.9, small),
        "FetchSGD per tensor": (FetchSGD(ratio=ratio, rows=5, density=1 / (5 * ratio)), None, 0.0, SHARED),
        "top-k + EF14 (same bytes)": (TopK(density=1 / (2 * ratio)), EF14(), 0.9, [0.1, 0.03, 0.01]),
    }


def run(compressor: Compressor, feedback, momentum: float, lr: float, data: Dataset, cfg: TrainConfig) -> dict:
    model = mlp(features=data.features, classes=data.classes, seed=cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    sim = Simulator(compressor, WORKERS, feedback=feedback, seed=cfg.seed)
    t0 = time.perf_counter()
    try:
        result = train_simulated(model, opt, data, cfg, sim)
        accuracy, losses = result.accuracy, result.losses
    except (ProtocolMismatchError, WireFormatError):  # NaN means differ, or a sum overflowed: diverged
        accuracy, losses = float("nan"), [float("nan")]
    tail = losses[-30:]
    loss = sum(tail) / len(tail)
    diverged = not math.isfinite(loss) or not math.isfinite(accuracy)
    last = sim.stats.as_dict()["last"]
    return {"lr": lr, "accuracy": 0.1 if diverged else accuracy, "train_loss": loss if not diverged else None,
            "diverged": diverged, "sent_bytes_per_step": last["sent_bytes"],
            "ratio_vs_fp32": last["ratio_vs_fp32"], "seconds": time.perf_counter() - t0}


def best_of(runs: list[dict]) -> dict:
    finite = [r for r in runs if not r["diverged"]]
    return min(finite, key=lambda r: r["train_loss"]) if finite else runs[0]


def worker_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The mean gradient of a worker's batch, per parameter."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def clipped_sum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The sum of the batch's per-sample gradients, each clipped to ``MAX_NORM``, per parameter."""
    per = per_sample_gradients(model, F.cross_entropy, x, y)
    return clip_per_sample([per[name] for name, _ in model.named_parameters()], MAX_NORM)


def train_flat(sim: Simulator, message, scale: float, lr: float, momentum: float, data: Dataset, cfg: TrainConfig,
               after_epoch=None) -> dict:
    """Train with the whole model as one tensor ``("model", (1, d))``: ``message(model, x, y)`` per worker.

    The exchanged mean times ``scale`` is the gradient; ``after_epoch(step)`` runs after every epoch.
    """
    model = mlp(features=data.features, classes=data.classes, seed=cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    params = list(model.parameters())
    global_batch = WORKERS * cfg.batch_per_worker
    losses, step, epoch = [], 0, 0
    t0 = time.perf_counter()
    try:
        while step < cfg.steps:
            for batch in global_batches(len(data.y_train), global_batch, epoch, cfg.seed):
                if step == cfg.steps:
                    break
                per_worker = []
                for r in range(WORKERS):
                    mine = worker_batch(batch, r, WORKERS)
                    parts = message(model, data.x_train[mine], data.y_train[mine])
                    per_worker.append([("model", torch.cat([t.reshape(-1) for t in parts]).view(1, -1))])
                with torch.no_grad():
                    losses.append(F.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).item())
                flat = sim.exchange(per_worker)[0].view(-1) * scale
                offset = 0
                for p in params:
                    p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
                    offset += p.numel()
                opt.step()
                step += 1
            epoch += 1
            if after_epoch is not None:
                after_epoch(step)
    except (ProtocolMismatchError, WireFormatError):  # NaN means differ, or a sum overflowed: diverged
        losses.append(float("nan"))
    tail = losses[-30:]
    loss = sum(tail) / len(tail)
    diverged = not math.isfinite(loss)
    with torch.no_grad():
        accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    last = sim.stats.as_dict()["last"]
    return {"lr": lr, "accuracy": 0.1 if diverged else accuracy, "train_loss": None if diverged else loss,
            "diverged": diverged, "sent_bytes_per_step": last["sent_bytes"], "ratio_vs_fp32": last["ratio_vs_fp32"],
            "seconds": time.perf_counter() - t0}


def fetchsgd_model_wide(ratio: float, lr: float, data: Dataset, cfg: TrainConfig) -> dict:
    """FetchSGD over one sketch of the whole model (as Rothchild et al.), k = d/(5·ratio), the same bytes."""
    sim = Simulator(FetchSGD(ratio=ratio, rows=5, density=1 / (5 * ratio)), WORKERS, seed=cfg.seed)
    return train_flat(sim, worker_gradient, 1.0, lr, 0.0, data, cfg)


def dp_train(ratio: float, z: float, lr: float, data: Dataset, cfg: TrainConfig) -> dict:
    """Sample-level DP-SGD through DPSketch (every value through the mechanism); records ε after every epoch."""
    mech = DPSketch(noise_multiplier=z, max_norm=MAX_NORM, noise_seed=cfg.seed + 1, ratio=ratio, clip=False)
    sim = Simulator(mech, WORKERS, seed=cfg.seed)  # DPSketch is private: every step and value goes through it
    global_batch = WORKERS * cfg.batch_per_worker
    q = global_batch / len(data.y_train)
    accountant, epsilons = PrivacyAccountant(), []

    def account(step: int) -> None:
        if z > 0:
            accountant.step(z, q, steps=step - accountant.steps)
        epsilons.append(accountant.epsilon(DELTA) if z > 0 else None)  # None: no noise, ε = ∞

    result = train_flat(sim, clipped_sum, WORKERS / global_batch, lr, cfg.momentum, data, cfg, account)
    return {**result, "z": z, "epsilon_per_epoch": epsilons}


def heavy_hitters(data: Dataset, ratios: list[float], steps: tuple[int, ...] = (0, 100, 200)) -> list[dict]:
    """Can a 5-row count sketch of s = d/ratio cells find the top k of the whole model's gradient (and momentum)?

    Along an uncompressed run (global batch 64, SGD lr 0.1, momentum 0.9), at each of ``steps``, for
    k = cols (FetchSGD's setting here) and cols/10: the share of ‖v‖² in the true top k, the share of
    the true top k that :func:`unsketch_topk` returns, and ‖v[found] − estimates‖/‖v[found]‖.
    """
    model = mlp(features=data.features, classes=data.classes, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batches = list(global_batches(len(data.y_train), WORKERS * 16, 0, 0))
    momentum, rows, seed, out = None, 5, 1234, []
    for step in range(max(steps) + 1):
        batch = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        momentum = g.clone() if momentum is None else momentum.mul_(0.9).add_(g)
        opt.step()
        if step not in steps:
            continue
        for vector, v in (("gradient", g), ("momentum", momentum)):
            for ratio in ratios:
                out += [{"step": step, "vector": vector, **row} for row in recall_rows(v, ratio, rows, seed)]
    return out


def recall_rows(v: torch.Tensor, ratio: float, rows: int, seed: int) -> list[dict]:
    """Sketch ``v`` into ``rows`` × ``d/(rows·ratio)`` cells; for k = cols and cols/10, how well it finds the top k.

    Per k: the share of ‖v‖² in the true top k, the share of the true top k
    that :func:`unsketch_topk` returns and ‖v[found] − estimates‖/‖v[found]‖.
    """
    cols = max(1, round(v.numel() / (rows * ratio)))
    table = torch.zeros(rows, cols)
    ops.count_sketch_add_(table, v, seed)
    out = []
    for k in (cols, max(1, cols // 10)):
        _, true_idx = ops.topk_magnitude(v, k)
        est, found = unsketch_topk(table, seed, v.numel(), k)
        truth = set(true_idx.tolist())
        out.append({"ratio": ratio, "rows": rows, "cols": cols, "k": k,
                    "top_k_energy": float(v[true_idx.long()].square().sum() / v.square().sum()),
                    "recall": sum(i in truth for i in found.tolist()) / k,
                    "value_error": float((v[found] - est).norm() / v[found].norm())})
    return out


def seed_spread(runs: list[dict]) -> str:
    """``mean ± half-range`` of the accuracies of ``runs`` (one per seed)."""
    accs = [r["accuracy"] for r in runs]
    return f"{sum(accs) / len(accs):.3f} ± {(max(accs) - min(accs)) / 2:.3f}"


def markdown(res: dict) -> str:
    cfg = res["config"]
    lines = [f"# Sketched exchange on digits: {WORKERS} workers, {cfg['steps']} steps, d = {res['d']}", "",
             "Generated by `benchmarks/sketch_digits.py` (setup in its docstring). Accuracy = test accuracy at the "
             "learning rate (per-method grid, see `methods`) with the lowest final training loss; "
             "bytes = bytes one worker sends per compressed step (biases always dense; the 2 dense warm-up "
             "steps excluded).", "",
             "## Accuracy and bytes per family and mode", "",
             "| method | s | lr | accuracy | bytes/step | ratio vs fp32 |", "|---|---|---|---|---|---|"]
    base = res["uncompressed"]
    lines.append(f"| uncompressed fp32 | d | {base['lr']} | {base['accuracy']:.3f} | {base['sent_bytes_per_step']:.0f} "
                 f"| 1.0 |")
    for ratio, table in res["sketch"].items():
        for name, runs in table.items():
            b = best_of(runs)
            acc = "diverged" if b["diverged"] else f"{b['accuracy']:.3f}"
            lines.append(f"| {name} | d/{ratio} | {b['lr']} | {acc} | {b['sent_bytes_per_step']:.0f} | "
                         f"{b['ratio_vs_fp32']:.1f} |")
    seeds = res["config"]["seeds"]
    lines += ["", f"## FetchSGD vs unbiased sketch at equal bytes (seeds {seeds}: mean ± half-range)", "",
              "Each method at its best rate on seed 0 (the unbiased sketches and FetchSGD from one grid, "
              f"{SHARED}); cells: accuracy, then the final training loss of seed 0 and the bytes.", "",
              "| s | " + " | ".join(COMPARED) + " |", "|---|" + "---|" * len(COMPARED)]
    for ratio, table in res["sketch"].items():
        cells = []
        for k in COMPARED:
            b = best_of(table[k])
            loss = "diverged" if b["diverged"] else f"{b['train_loss']:.3f}"
            cells.append(f"{seed_spread([b, *res['seeds'][ratio][k]])} (lr {b['lr']}, loss {loss}, "
                         f"{b['sent_bytes_per_step']:.0f} B)")
        lines.append(f"| d/{ratio} | " + " | ".join(cells) + " |")
    lines += ["", "## Heavy hitters: can a 5-row count sketch of the same bytes find the top k? (`heavy_hitters`)", "",
              "| step | vector | s | cols | k | share of ‖v‖² in top k | top k found | value error |",
              "|---|---|---|---|---|---|---|---|"]
    for h in res["heavy_hitters"]:
        lines.append(f"| {h['step']} | {h['vector']} | d/{h['ratio']:g} | {h['cols']} | {h['k']} | "
                     f"{h['top_k_energy']:.3f} | {h['recall']:.3f} | {h['value_error']:.2f} |")
    lines += ["", f"## Accuracy vs ε (sample-level DP, C = {MAX_NORM}, δ = {DELTA}, q = {res['dp_q']:.4f})", "",
              "| ε target | z | " + " | ".join(f"{'DP-SGD (no sketch)' if r == 1 else f'DP sketch d/{r}'}"
                                             for r in cfg["dp_ratios"]) + " | ε after each epoch |",
              "|---|---|" + "---|" * len(cfg["dp_ratios"]) + "---|"]
    for eps, row in res["dp"].items():
        best = [best_of(row[str(r)]) for r in cfg["dp_ratios"]]
        trail = best[0]["epsilon_per_epoch"]
        shown = ", ".join("∞" if e is None else f"{e:.2f}" for e in trail)
        lines.append(f"| {eps} | {best[0]['z']:.3f} | " + " | ".join(f"{b['accuracy']:.3f} (lr {b['lr']})"
                                                                    for b in best) + f" | {shown} |")
    if res.get("dp_reused_from"):
        lines += ["", f"(DP rows reused from {res['dp_reused_from']}: the DP code path is unchanged.)"]
    lines += ["", f"Total time: {res['elapsed_s']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--ratios", type=float, nargs="+", default=[20, 100])
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="one grid for all (default: per method)")
    parser.add_argument("--dp-ratios", type=int, nargs="+", default=[1, 20, 100])
    parser.add_argument("--dp-lrs", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the equal-bytes comparison")
    parser.add_argument("--reuse-dp", action="store_true", help="keep the DP rows of the existing JSON")
    parser.add_argument("--quick", action="store_true", help="40 steps, one learning rate: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.lrs, args.dp_lrs, args.epsilons, args.ratios = 40, [0.03], [0.1], [4.0], [20.0]
        args.seeds = [0, 1]
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load_digits()
    cfg = TrainConfig(steps=args.steps)
    d = sum(p.numel() for p in mlp(features=data.features, classes=data.classes).parameters())
    res: dict[str, object] = {"config": vars(args), "d": d, "sketch": {}, "seeds": {}, "dp": {}}
    res["heavy_hitters"] = heavy_hitters(data, args.ratios)
    base = [run(Identity(), None, 0.9, lr, data, cfg) for lr in (args.lrs or [0.1, 0.03])]
    res["uncompressed"] = best_of(base)
    for ratio in args.ratios:
        table = {}
        for name, (compressor, feedback, momentum, lrs) in methods(ratio).items():
            table[name] = [run(compressor, feedback, momentum, lr, data, cfg) for lr in (args.lrs or lrs)]
            b = best_of(table[name])
            print(f"[{time.perf_counter() - start:6.1f}s] d/{ratio:g} {name}: acc {b['accuracy']:.3f} "
                  f"(lr {b['lr']}), {b['sent_bytes_per_step']:.0f} B/step", flush=True)
        table["FetchSGD model-wide"] = [fetchsgd_model_wide(ratio, lr, data, cfg) for lr in (args.lrs or SHARED)]
        res["sketch"][f"{ratio:g}"] = table
        res["seeds"][f"{ratio:g}"] = reruns = {}
        for name in COMPARED:
            lr = best_of(table[name])["lr"]
            others = [TrainConfig(steps=args.steps, seed=seed) for seed in args.seeds if seed != cfg.seed]
            if name == "FetchSGD model-wide":
                reruns[name] = [fetchsgd_model_wide(ratio, lr, data, c) for c in others]
            else:
                compressor, feedback, momentum, _ = methods(ratio)[name]
                reruns[name] = [run(compressor, feedback, momentum, lr, data, c) for c in others]
            print(f"[{time.perf_counter() - start:6.1f}s] d/{ratio:g} {name} seeds {args.seeds}: "
                  f"{seed_spread([best_of(table[name]), *reruns[name]])}", flush=True)
    q = WORKERS * cfg.batch_per_worker / len(data.y_train)
    res["dp_q"] = q
    if args.reuse_dp:
        previous = json.loads((RESULTS / "sketch_digits.json").read_text())
        res["dp"], res["dp_reused_from"] = previous["dp"], "the previous sketch_digits.json"
        res["config"]["dp_ratios"], res["config"]["epsilons"] = (previous["config"]["dp_ratios"],
                                                                 previous["config"]["epsilons"])
    for eps in [] if args.reuse_dp else [math.inf, *args.epsilons]:
        z = 0.0 if math.isinf(eps) else noise_multiplier_for(eps, DELTA, q, args.steps)
        row = {str(r): [dp_train(r, z, lr, data, cfg) for lr in args.dp_lrs] for r in args.dp_ratios}
        res["dp"]["∞ (clip only)" if math.isinf(eps) else f"{eps:g}"] = row
        accs = ", ".join(f"r={r}: {best_of(row[str(r)])['accuracy']:.3f}" for r in args.dp_ratios)
        print(f"[{time.perf_counter() - start:6.1f}s] ε={eps} z={z:.3f}: {accs}", flush=True)
    res["elapsed_s"] = time.perf_counter() - start
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "sketch_digits.json").write_text(json.dumps(res, indent=1))
        (RESULTS / "sketch_digits.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
