"""FetchSGD vs unbiased sketches at equal bytes on a word model whose gradient is sparse: where FetchSGD should win.

FetchSGD (Rothchild et al. 2020) targets gradients with heavy hitters, such as
large embedding tables of which a batch touches few rows. The digits MLP
(``sketch_digits.py``) has a dense gradient and FetchSGD loses there. This
benchmark asks the same question on the model class it was designed for.

Setup
-----
Data and model: :mod:`commlib.train.words`. Passages of 16 words from pydoc's
topic pages (text shipped with Python), labelled by page (79 classes), 80/20
split; vocabulary = every training word (3,205 with the unknown word). Model:
``BagOfWords`` (fastText-style mean of token embeddings, then a linear layer),
in two sizes (``--models``):

* ``words``: words only, width 64: table 3,205 × 64 = 205,120 of d = 210,255;
* ``bigrams``: also adjacent-word pairs hashed into 2^16 extra rows, width 16:
  table 68,741 × 16 = 1,099,856 of d = 1,101,199 (fastText's hashing trick).
  By default only its heavy-hitter analysis runs (``--models bigrams`` trains
  it too, at about 5 times the cost per step).

A global batch of 32 passages touches about 270 word rows (8% of the words-only
table, 17k nonzero gradient values) and, with bigrams, about 720 rows (1% of
the table, 11.5k values).

Training: 4 simulated workers (:class:`commlib.sim.Simulator`), 8 passages each
per step, ``--steps`` steps, SGD (momentum 0.9; 0 for FetchSGD and the two-round
variant, whose momentum lives in the compressor), the exchange's defaults (2 dense warm-up steps; the bias,
79 values, always dense). The loss curve is the mean of the workers' batch
losses before each step; "train loss" is its mean over the last 30 steps.
``--schedule triangular`` runs every method under the learning-rate schedule of
Rothchild et al.'s CIFAR-10 runs (linear warm-up to the peak at 5/24 of the
run, then linear decay to 0; :func:`lr_factor`); the default is constant.

Methods at s = d/ratio (``--ratios``), all at the same bytes per compressed step
(within 1%): ``Sketch`` unbiased SRHT and count sketch (1 row); FetchSGD per tensor
and model-wide (the whole model as one tensor, as Rothchild et al. run it; the
bias is then sketched too) with 5 rows, k = cols, as in ``sketch_digits.py``;
FetchSGD per tensor with 1 row (the shape of Rothchild et al.'s own CIFAR-10
and ImageNet runs), k = cols and cols/4; the two-round variant
(:class:`~commlib.compress.sketch.SketchedSGD`, Ivkin et al.'s Sketched-SGD:
the sketch finds the top k, a second round fetches their exact values, momentum
and error stay on each worker) with 1 or 5 rows and half the bytes on the exact
values (k = s/2, sketch s/2 cells); top-k + EF14 at density 1/(2·ratio) (8
bytes per entry); uncompressed fp32. Every method runs at every rate of its
grid (``grids``) on seed 0; while the best is the highest or lowest rate tried
the grid grows one ladder step past it (:func:`widen`), then the half steps
around the best are added (:func:`refine`). The rate with the lowest train loss
is rerun with the other ``--seeds`` (model init, data order, sketch hashes),
and the table gives mean ± std over seeds.

Remedies (``--remedies``, seed 0, ``--remedy-lrs`` widened and refined): the
choices Rothchild et al. leave open at a fixed byte budget: rows × cols (1 or 5
rows), k (cols, cols/4, cols/16) and the in-sketch momentum ρ (0.9, 0); and the
two-round variant's rows (1, 5) and share of the bytes for exact values (¼, ¾).

``--by-accuracy`` (after a run, on its JSON): every method also at the rate of
its grid with the best seed-0 test accuracy, rerun on the other seeds: an
oracle picked on the test set, for all methods alike, to show how much the
train-loss selection moves each method's accuracy.

Runs can be split over processes (``--ratios`` and ``--methods`` subsets, same
steps and seeds) and combined with ``--merge``; the JSON's ``merged`` lists them.

Heavy hitters (``heavy_hitters``): along an uncompressed run, for the embedding
table's gradient and momentum, the share of ‖v‖² in its true top k and the
share of that top k a count sketch of the same bytes finds (:func:`unsketch_topk`).

Outputs ``benchmarks/results/sketch_fetchsgd_words.{json,md,png}`` (the PNG: loss
against step per method at its best rate, mean over seeds). The published files
come from one run without the heavy-hitter analysis (24 minutes), then
``--by-accuracy``, the remedies of each ratio (``--remedies --methods --ratios r``,
separate processes) and the heavy hitters of the previous run, joined with
``--merge``; ``sketch_fetchsgd_words_triangular.*`` from ``--schedule
triangular --out sketch_fetchsgd_words_triangular`` (without 5-row and
model-wide FetchSGD), then ``--by-accuracy``. A run is about 5–20 s on one core.
Run: ``PYTHONPATH=. python benchmarks/sketch_fetchsgd_words.py`` (``--quick``: a smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sketch_digits import best_of, recall_rows

from commlib.compress import Compressor, Identity, TopK
from commlib.compress.sketch import FetchSGD, Sketch, SketchedSGD
from commlib.errors import ProtocolMismatchError, WireFormatError
from commlib.feedback import EF14
from commlib.sim import Simulator
from commlib.train.data import Dataset, global_batches, worker_batch
from commlib.train.loop import simulated_step
from commlib.train.words import BagOfWords, load_topic_passages

RESULTS = Path(__file__).parent / "results"
WORKERS, BATCH, LENGTH, TAIL = 4, 8, 16, 30
TRIANGLE_PEAK = 5 / 24
MODELS = {"words": {"width": 64, "bigram_buckets": 0}, "bigrams": {"width": 16, "bigram_buckets": 1 << 16}}


def grids(ratio: float, quick: bool) -> dict[str, list[float]]:
    """Learning rates per kind of method (one rate each for ``quick``).

    Dense, top-k and 1-row FetchSGD: around the uncompressed optimum (1 in a
    pilot); 5-row FetchSGD: 3 to 30 (a pilot over 0.3–10 chose 10); unbiased sketches: their error √(d/s − 1) asks
    for about s/d to 10·s/d of the dense rate, so 30/ratio down to 1/ratio.
    """
    if quick:
        return {"dense": [1.0], "fetch": [1.0], "unbiased": [round(3 / ratio, 6)]}
    return {"dense": [3.0, 1.0, 0.3], "fetch": [30.0, 10.0, 3.0],
            "unbiased": [round(c / ratio, 6) for c in (30.0, 10.0, 3.0, 1.0)]}


Method = tuple[Compressor, object, float, list[float], bool]


def methods(ratio: float, grid: dict[str, list[float]]) -> dict[str, Method]:
    """name -> (compressor, feedback, optimizer momentum, learning rates, model-wide) at s = d/ratio."""
    fetch = FetchSGD(ratio=ratio, rows=5, density=1 / (5 * ratio))
    one_row = {per: FetchSGD(ratio=ratio, rows=1, density=1 / (ratio * per)) for per in (1, 4)}
    two_rounds = {rows: SketchedSGD(ratio=ratio, rows=rows, share=0.5) for rows in (1, 5)}
    return {
        "srht unbiased": (Sketch(ratio=ratio, family="srht"), None, 0.9, grid["unbiased"], False),
        "countsketch unbiased": (Sketch(ratio=ratio, family="countsketch"), None, 0.9, grid["unbiased"], False),
        "FetchSGD per tensor": (fetch, None, 0.0, grid["fetch"], False),
        "FetchSGD model-wide": (fetch, None, 0.0, grid["fetch"], True),
        "FetchSGD per tensor, 1 row, k = cols": (one_row[1], None, 0.0, grid["dense"], False),
        "FetchSGD per tensor, 1 row, k = cols/4": (one_row[4], None, 0.0, grid["dense"], False),
        "2 rounds (Sketched-SGD), 1 row, k = s/2": (two_rounds[1], None, 0.0, grid["dense"], False),
        "2 rounds (Sketched-SGD), 5 rows, k = s/2": (two_rounds[5], None, 0.0, grid["dense"], False),
        "top-k + EF14": (TopK(density=1 / (2 * ratio)), EF14(), 0.9, grid["dense"], False),
    }


def remedies(ratio: float) -> dict[str, FetchSGD | SketchedSGD]:
    """FetchSGD variants at the same bytes: rows × cols, k and in-sketch momentum ρ (k given in columns).

    Also the two-round variant (:class:`SketchedSGD`) with 1 or 5 rows and a
    quarter, half or three quarters of the bytes spent on exact values. The
    main table's settings (5 rows, k = cols, ρ 0.9; two rounds with half) are not repeated.
    """
    out = {}
    for rows in (1, 5):
        for per in (1, 4, 16):
            if (rows, per) != (5, 1):
                out[f"{rows} rows, k = cols/{per}, ρ 0.9"] = FetchSGD(ratio=ratio, rows=rows,
                                                                      density=1 / (rows * ratio * per))
    out["5 rows, k = cols, ρ 0"] = FetchSGD(ratio=ratio, rows=5, density=1 / (5 * ratio), momentum=0.0)
    out["5 rows, k = cols/4, ρ 0"] = FetchSGD(ratio=ratio, rows=5, density=1 / (20 * ratio), momentum=0.0)
    for rows in (1, 5):
        for share in (0.25, 0.75):
            out[f"2 rounds, {rows} row{'s' if rows > 1 else ''}, k = {share:g}·s"] = SketchedSGD(
                ratio=ratio, rows=rows, share=share)
    return out


def flat_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: Dataset, sim: Simulator,
              batches: list[torch.Tensor]) -> list[float]:
    """:func:`simulated_step` with the whole model exchanged as one tensor ``("model", (1, d))``."""
    params = list(model.parameters())
    per_worker, losses = [], []
    for mine in batches:
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(data.x_train[mine]), data.y_train[mine])
        loss.backward()
        per_worker.append([("model", torch.cat([p.grad.reshape(-1) for p in params]).view(1, -1))])
        losses.append(loss.item())
    flat, offset = sim.exchange(per_worker)[0].view(-1), 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    optimizer.step()
    return losses


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The rate's multiplier at ``step`` of ``steps``, taken at the step's midpoint.

    ``constant``: 1. ``triangular``: the schedule of Rothchild et al.'s CIFAR-10
    runs (kiddyboots216/CommEfficient ``cv_train.py``, ``PiecewiseLinear([0,
    pivot, epochs], [0, lr, 0])``, after cifar10_fast's ``[0, 5, 24]``): linear
    from 0 up to 1 at 5/24 of the run (warm-up), then linear down to 0.
    """
    if schedule == "constant":
        return 1.0
    t, peak = step + 0.5, TRIANGLE_PEAK * steps
    return t / peak if t < peak else (steps - t) / (steps - peak)


def train(kind: str, compressor: Compressor, feedback, momentum: float, lr: float, data: Dataset, vocab: int,
          steps: int, seed: int, model_wide: bool = False, schedule: str = "constant") -> dict:
    """One run: per-step loss (mean over workers), final train loss, test loss and accuracy, bytes."""
    model = BagOfWords(vocab, data.classes, seed=seed, **MODELS[kind])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    sim = Simulator(compressor, WORKERS, feedback=feedback, seed=seed)
    step_fn = flat_step if model_wide else simulated_step
    curve, step, epoch = [], 0, 0
    t0 = time.perf_counter()
    try:
        while step < steps:
            for batch in global_batches(len(data.y_train), WORKERS * BATCH, epoch, seed):
                if step == steps:
                    break
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor(schedule, step, steps)
                losses = step_fn(model, opt, data, sim, [worker_batch(batch, r, WORKERS) for r in range(WORKERS)])
                curve.append(sum(losses) / len(losses))
                step += 1
                if not math.isfinite(curve[-1]):
                    raise WireFormatError("non-finite loss")
            epoch += 1
    except (ProtocolMismatchError, WireFormatError):  # NaN means differ, a sum overflowed, or the loss did
        curve.append(float("nan"))
    tail = curve[-TAIL:]
    loss = sum(tail) / len(tail)
    with torch.no_grad():
        logits = model(data.x_test)
        test_loss = F.cross_entropy(logits, data.y_test).item()
        accuracy = (logits.argmax(1) == data.y_test).float().mean().item()
    diverged = not (math.isfinite(loss) and math.isfinite(test_loss))
    stats = sim.stats.as_dict()
    return {"lr": lr, "seed": seed, "diverged": diverged, "train_loss": None if diverged else loss,
            "test_loss": None if diverged else test_loss, "accuracy": 0.0 if diverged else accuracy,
            "sent_bytes_per_step": stats["last"]["sent_bytes"], "sent_bytes_total": stats["total"]["sent_bytes"],
            "ratio_vs_fp32": stats["last"]["ratio_vs_fp32"], "seconds": time.perf_counter() - t0,
            "curve": [round(sum(curve[i : i + 10]) / len(curve[i : i + 10]), 4) for i in range(0, len(curve), 10)]}


def heavy_hitters(data: Dataset, vocab: int, kind: str, ratios: list[float], steps: tuple[int, ...]) -> list[dict]:
    """Can a count sketch of the same bytes find the top k of the embedding table's gradient (and momentum)?

    Along an uncompressed run (global batch 32, SGD lr 1, momentum 0.9), at each
    of ``steps``: nonzeros of the gradient; for rows 1 and 5 (cols = d/(rows·ratio))
    and k = cols and cols/10, the share of ‖v‖² in the true top k, the share of
    the true top k that :func:`unsketch_topk` returns and ‖v[found] − est‖/‖v[found]‖.
    """
    model = BagOfWords(vocab, data.classes, seed=0, **MODELS[kind])
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    batches = list(global_batches(len(data.y_train), WORKERS * BATCH, 0, 0))
    momentum, seed, out = None, 1234, []
    for step in range(max(steps) + 1):
        batch = batches[step % len(batches)]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
        g = model.embed.weight.grad.reshape(-1).clone()
        momentum = g.clone() if momentum is None else momentum.mul_(0.9).add_(g)
        opt.step()
        if step not in steps:
            continue
        for vector, v in (("gradient", g), ("momentum", momentum)):
            for ratio in ratios:
                for rows in (1, 5):
                    out += [{"step": step, "vector": vector, "nonzeros": int((v != 0).sum()), **row}
                            for row in recall_rows(v, ratio, rows, seed)]
    return out


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def summary(runs: list[dict]) -> dict:
    """Mean ± std over seeds of train loss, test loss and accuracy (a diverged run: accuracy 0, losses ∞)."""
    def pick(key: str) -> list[float]:
        return [math.inf if r[key] is None else r[key] for r in runs]

    return {"train_loss": mean_std(pick("train_loss")), "test_loss": mean_std(pick("test_loss")),
            "accuracy": mean_std(pick("accuracy")), "diverged": sum(r["diverged"] for r in runs),
            "seeds": len(runs), "lr": runs[0]["lr"], "sent_bytes_per_step": runs[0]["sent_bytes_per_step"],
            "sent_bytes_total": runs[0]["sent_bytes_total"]}


def markdown(res: dict) -> str:
    cfg = res["config"]
    lines = [f"# FetchSGD vs unbiased sketches at equal bytes on pydoc topic passages ({WORKERS} workers, "
             f"{cfg['steps']} steps, {cfg.get('schedule', 'constant')} learning rate)", "",
             "Generated by `benchmarks/sketch_fetchsgd_words.py` (setup in its docstring). Cells: mean ± std over "
             f"seeds {cfg['seeds']} at the rate (all rates tried in brackets: the grid, widened past an edge best "
             "and refined by half steps around the best) with the lowest seed-0 train loss "
             f"(mean of the last {TAIL} steps); a diverged run counts as loss ∞, accuracy 0. Bytes: one worker's, "
             "per compressed step and over the whole run (2 dense warm-up steps included).", ""]
    for kind, model in res["models"].items():
        lines += [f"## Model `{kind}`: d = {model['d']:,}, embedding table {model['table']:,} "
                  f"({model['table'] / model['d']:.1%})", ""]
        rows = [("uncompressed fp32", "d", model["fp32"])] if "fp32" in model else []
        rows += [(name, f"d/{ratio}", table) for ratio, tables in model["compared"].items()
                 for name, table in tables.items()]
        if rows:
            lines += ["| method | s | lr (grid) | train loss | test loss | test accuracy | bytes/step | total MB | "
                      "diverged |", "|---|---|---|---|---|---|---|---|---|"]
        for name, s, table in rows:
            sm = table["summary"]
            grid = ", ".join(f"{r['lr']:g}" for r in table["grid"])
            lines.append(f"| {name} | {s} | {sm['lr']:g} ({grid}) | {sm['train_loss']} | {sm['test_loss']} | "
                         f"{sm['accuracy']} | {sm['sent_bytes_per_step']:,} | {sm['sent_bytes_total'] / 1e6:.2f} | "
                         f"{sm['diverged']}/{sm['seeds']} |")
        oracle = [(name, s, table) for name, s, table in rows if "by_accuracy" in table]
        if oracle:
            lines += ["", f"### The same methods at the rate with the best seed-0 test accuracy (model `{kind}`)", "",
                      "An oracle, for every method alike: the rate is picked on the test set (there is no "
                      "validation split), then rerun on the other seeds. It shows how much each method's "
                      "accuracy depends on the train-loss selection above.", "",
                      "| method | s | lr | train loss | test loss | test accuracy |", "|---|---|---|---|---|---|"]
            for name, s, table in oracle:
                sm = table["by_accuracy"]["summary"]
                lines.append(f"| {name} | {s} | {sm['lr']:g} | {sm['train_loss']} | {sm['test_loss']} | "
                             f"{sm['accuracy']} |")
        if model.get("remedies"):
            lines += ["", f"### FetchSGD remedies at equal bytes (model `{kind}`, seed 0, best rate of "
                      f"{res['remedy_grid']}, widened and refined as in the main table)", "",
                      "| s | variant | lr (tried) | train loss | test loss | test accuracy | bytes/step |",
                      "|---|---|---|---|---|---|---|"]
            for ratio, variants in model["remedies"].items():
                for name, grid in variants.items():
                    b = best_of(grid)
                    tl = "diverged" if b["diverged"] else f"{b['train_loss']:.3f}"
                    te = "—" if b["diverged"] else f"{b['test_loss']:.3f}"
                    tried = ", ".join(f"{r['lr']:g}" for r in sorted(grid, key=lambda r: -r["lr"]))
                    lines.append(f"| d/{ratio} | {name} | {b['lr']:g} ({tried}) | {tl} | {te} | {b['accuracy']:.3f} | "
                                 f"{b['sent_bytes_per_step']:,} |")
        if model.get("heavy_hitters"):
            lines += ["", f"### Heavy hitters of the embedding table's gradient (model `{kind}`, uncompressed run)",
                      "", "| step | vector | s | rows × cols | k | nonzeros | share of ‖v‖² in top k | "
                      "top k found | value error |", "|---|---|---|---|---|---|---|---|---|"]
            for h in model["heavy_hitters"]:
                lines.append(f"| {h['step']} | {h['vector']} | d/{h['ratio']:g} | {h['rows']} × {h['cols']} | "
                             f"{h['k']} | {h['nonzeros']} | {h['top_k_energy']:.3f} | {h['recall']:.3f} | "
                             f"{h['value_error']:.2f} |")
        lines.append("")
    lines += [f"Total time: {res['elapsed_s']:.0f} s.", ""]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [kind for kind, model in res["models"].items() if any(model["compared"].values())]
    ratios = sorted({ratio for kind in kinds for ratio, tables in res["models"][kind]["compared"].items() if tables},
                    key=float)
    fig, axes = plt.subplots(len(kinds), len(ratios), figsize=(5.5 * len(ratios), 4 * len(kinds)), squeeze=False)
    for i, kind in enumerate(kinds):
        model = res["models"][kind]
        for j, ratio in enumerate(ratios):
            ax = axes[i][j]
            tables = {"uncompressed fp32": model["fp32"]} if "fp32" in model else {}
            tables.update(model["compared"].get(ratio, {}))
            for name, table in tables.items():
                curves = [r["curve"] for r in table["seeds"] if not r["diverged"]]
                if not curves:
                    continue
                n = min(len(c) for c in curves)
                mean = [statistics.fmean(c[t] for c in curves) for t in range(n)]
                ax.plot([10 * t + 5 for t in range(n)], mean, label=f"{name} (lr {table['summary']['lr']:g})")
            ax.set_title(f"{kind}, s = d/{ratio}")
            ax.set_xlabel("step")
            ax.set_ylabel("train loss (10-step mean, mean over seeds)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rate_beyond(rate: float, up: bool) -> float:
    """The next rate of the grids' ladder (…, 0.1, 0.3, 1, 3, …; 0.5 → 1.5 or 0.15) above or below ``rate``."""
    lead = f"{rate:e}"[0]
    if up:
        return round(rate * (10 / 3 if lead == "3" else 3), 6)
    return round(rate / 3 if lead == "3" else rate * 0.3, 6)


def widen(run_one, runs: list[dict], seed: int, most: int = 3) -> list[dict]:
    """While the best rate of ``runs`` is the highest (lowest) tried, add the next one up (down), ``most`` at most."""
    runs = list(runs)
    for _ in range(most):
        rates, best = sorted(r["lr"] for r in runs), best_of(runs)["lr"]
        if len(rates) == 1 or best not in (rates[0], rates[-1]):
            break
        runs.append(run_one(rate_beyond(best, up=best == rates[-1]), seed))
    return runs


def refine(run_one, runs: list[dict], seed: int) -> list[dict]:
    """Add the half steps of the ladder around the best rate: best·√3 and best/√3 (2 significant digits)."""
    best, tried = best_of(runs)["lr"], [r["lr"] for r in runs]
    for rate in (float(f"{best * 3**0.5:.2g}"), float(f"{best / 3**0.5:.2g}")):
        if all(abs(rate - t) > 0.01 * t for t in tried):
            runs = runs + [run_one(rate, seed)]
    return runs


def tuned(run_one, grid: list[float], seeds: list[int]) -> dict:
    """Every rate of ``grid`` on ``seeds[0]``, :func:`widen`-ed and :func:`refine`-d; the best rerun on the others.

    The best is the lowest train loss on ``seeds[0]``; every method gets the
    same procedure, so no chosen rate sits at the edge of what was tried.
    """
    runs = refine(run_one, widen(run_one, [run_one(lr, seeds[0]) for lr in grid], seeds[0]), seeds[0])
    best = best_of(runs)
    reruns = [best] + [run_one(best["lr"], seed) for seed in seeds[1:]]
    grid_runs = sorted(({k: v for k, v in r.items() if k != "curve"} for r in runs), key=lambda r: -r["lr"])
    return {"grid": grid_runs, "seeds": reruns, "summary": summary(reruns)}


def by_accuracy(run_one, table: dict, seeds: list[int]) -> dict:
    """The rate of ``table``'s grid with the best ``seeds[0]`` test accuracy, on every seed (picked on the test set)."""
    best = max(table["grid"], key=lambda r: r["accuracy"])
    if best["lr"] == table["summary"]["lr"]:
        runs = table["seeds"]
    else:
        runs = [best] + [run_one(best["lr"], seed) for seed in seeds[1:]]
    return {"seeds": [{k: v for k, v in r.items() if k != "curve"} for r in runs], "summary": summary(runs)}


def accuracy_pass(args: argparse.Namespace) -> None:
    """``--by-accuracy``: add :func:`by_accuracy` to every table of ``--out``'s JSON (same steps, seeds, schedule)."""
    stem = RESULTS / args.out
    res = json.loads(stem.with_suffix(".json").read_text())
    cfg, start = res["config"], time.perf_counter()
    torch.set_num_threads(1)
    passages = load_topic_passages(LENGTH)
    data, vocab = passages.data, len(passages.vocab)
    for kind, model in res["models"].items():
        todo = [(Identity(), None, 0.9, False, model["fp32"])] if "fp32" in model else []
        for ratio, tables in model["compared"].items():
            for name, (compressor, feedback, momentum, _, wide) in methods(float(ratio), grids(1.0, False)).items():
                if name in tables:
                    todo.append((compressor, feedback, momentum, wide, tables[name]))
        for compressor, feedback, momentum, wide, table in todo:
            def run_one(rate, seed, c=compressor, f=feedback, m=momentum, w=wide, kind=kind):
                return train(kind, c, f, m, rate, data, vocab, cfg["steps"], seed, w, cfg.get("schedule", "constant"))

            table["by_accuracy"] = by_accuracy(run_one, table, cfg["seeds"])
            print(f"[{time.perf_counter() - start:6.0f}s] {kind} {table['by_accuracy']['summary']}", flush=True)
    res["elapsed_s"] += time.perf_counter() - start
    write(res, stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--ratios", type=float, nargs="+", default=[20, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["words"], choices=list(MODELS), help="models to train")
    parser.add_argument("--heavy-hitter-models", nargs="*", default=list(MODELS), choices=list(MODELS),
                        help="models for the heavy-hitter analysis (trained or not)")
    parser.add_argument("--remedies", action="store_true", help="also the FetchSGD variants (seed 0)")
    parser.add_argument("--remedy-lrs", type=float, nargs="+", default=[3.0, 1.0, 0.3])
    parser.add_argument("--methods", nargs="*", default=None,
                        help="only these of the compared methods (and 'uncompressed fp32')")
    parser.add_argument("--schedule", default="constant", choices=["constant", "triangular"],
                        help="learning-rate schedule of every run (lr_factor)")
    parser.add_argument("--out", default="sketch_fetchsgd_words", help="basename of the result files")
    parser.add_argument("--merge", metavar="JSON", nargs="+", default=None,
                        help="add to the results (--out) what other runs' JSONs hold and it lacks; trains nothing")
    parser.add_argument("--quick", action="store_true",
                        help="words model, 20 steps, d/20, one rate, 2 seeds: a smoke run")
    parser.add_argument("--by-accuracy", action="store_true",
                        help="add to --out's JSON each table's rate with the best seed-0 test accuracy, rerun on the "
                             "other seeds (an oracle picked on the test set); trains nothing else")
    args = parser.parse_args()
    if args.by_accuracy:
        accuracy_pass(args)
        return
    if args.merge:
        merge(RESULTS / f"{args.out}.json", [Path(p) for p in args.merge])
        return
    if args.quick:
        args.steps, args.ratios, args.seeds, args.models, args.heavy_hitter_models = 20, [20.0], [0, 1], ["words"], []
        args.remedy_lrs = [1.0]
    torch.set_num_threads(1)
    start = time.perf_counter()
    passages = load_topic_passages(LENGTH)
    data, vocab = passages.data, len(passages.vocab)
    res: dict[str, object] = {"config": vars(args), "remedy_grid": args.remedy_lrs, "vocab": vocab,
                              "classes": data.classes, "train_passages": len(data.y_train),
                              "test_passages": len(data.y_test), "models": {}}
    for kind in dict.fromkeys(args.models + args.heavy_hitter_models):
        probe = BagOfWords(vocab, data.classes, **MODELS[kind])
        model = res["models"][kind] = {"d": sum(p.numel() for p in probe.parameters()),
                                       "table": probe.embed.weight.numel(), "compared": {}, "remedies": {}}
        if kind in args.heavy_hitter_models:
            model["heavy_hitters"] = heavy_hitters(data, vocab, kind, args.ratios, (0, 200, args.steps - 1))
            print(f"[{time.perf_counter() - start:6.0f}s] {kind}: heavy hitters done", flush=True)
        if kind not in args.models:
            continue

        def runner(compressor, feedback, momentum, wide=False, kind=kind):
            return lambda rate, seed: train(kind, compressor, feedback, momentum, rate, data, vocab, args.steps,
                                            seed, wide, args.schedule)

        if args.methods is None or "uncompressed fp32" in args.methods:
            model["fp32"] = tuned(runner(Identity(), None, 0.9), grids(1.0, args.quick)["dense"], args.seeds)
            print(f"[{time.perf_counter() - start:6.0f}s] {kind} fp32: {model['fp32']['summary']}", flush=True)
            if not args.quick:
                save_json(res, RESULTS / args.out, time.perf_counter() - start)
        for ratio in args.ratios:
            key = f"{ratio:g}"
            model["compared"][key] = tables = {}
            for name, (compressor, feedback, momentum, grid, wide) in methods(ratio, grids(ratio, args.quick)).items():
                if args.methods is not None and name not in args.methods:
                    continue
                tables[name] = tuned(runner(compressor, feedback, momentum, wide), grid, args.seeds)
                if not args.quick:  # a partial result survives an interrupted run
                    save_json(res, RESULTS / args.out, time.perf_counter() - start)
                print(f"[{time.perf_counter() - start:6.0f}s] {kind} d/{key} {name}: {tables[name]['summary']}",
                      flush=True)
            if args.remedies:
                model["remedies"][key] = variants = {}
                for name, fetch in remedies(ratio).items():
                    run_one = runner(fetch, None, 0.0)
                    variants[name] = refine(run_one, widen(run_one, [run_one(lr, args.seeds[0])
                                                                     for lr in args.remedy_lrs], args.seeds[0]),
                                            args.seeds[0])
                    b = best_of(variants[name])
                    print(f"[{time.perf_counter() - start:6.0f}s] {kind} d/{key} remedy {name}: lr {b['lr']} "
                          f"train {b['train_loss']} acc {b['accuracy']:.3f}", flush=True)
    res["elapsed_s"] = time.perf_counter() - start
    if not args.quick:
        write(res, RESULTS / args.out)
    print(markdown(res))


def save_json(res: dict, stem: Path, elapsed: float) -> None:
    """``stem``.json with the results so far."""
    stem.parent.mkdir(exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({**res, "elapsed_s": elapsed}, indent=1))


def write(res: dict, stem: Path) -> None:
    """``stem``.json, .md and .png."""
    stem.parent.mkdir(exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
    stem.with_suffix(".md").write_text(markdown(res))
    plot(res, stem.with_suffix(".png"))


def merge(target: Path, sources: list[Path]) -> None:
    """Add to ``target`` (a JSON of this script) the methods, remedies and analyses of ``sources`` that it lacks.

    Runs split over processes (same steps and seeds) become one table; ``merged``
    records each source's configuration. Rewrites the .json, .md and .png.
    """
    res = json.loads(target.read_text())
    res.setdefault("merged", [])
    for source in sources:
        other = json.loads(source.read_text())
        mine, theirs = res["config"], other["config"]
        if mine["steps"] != theirs["steps"] or mine["seeds"][0] != theirs["seeds"][0]:
            raise ValueError(f"{source} ran other steps or a different first seed than {target}")
        for kind, model in other["models"].items():
            mine = res["models"].setdefault(kind, model)
            for ratio, tables in model["compared"].items():
                for name, table in tables.items():
                    mine["compared"].setdefault(ratio, {}).setdefault(name, table)
            for ratio, variants in model.get("remedies", {}).items():
                mine.setdefault("remedies", {}).setdefault(ratio, variants)
            if len(model.get("heavy_hitters", [])) > len(mine.get("heavy_hitters", [])):  # the fuller analysis
                mine["heavy_hitters"] = model["heavy_hitters"]
        if any(m.get("remedies") for m in other["models"].values()):
            res["remedy_grid"] = other["remedy_grid"]
        res["merged"].append({"source": source.name, "config": other["config"], "elapsed_s": other["elapsed_s"]})
        res["elapsed_s"] += other["elapsed_s"]
    write(res, target.with_suffix(""))


if __name__ == "__main__":
    main()
