"""Shared parts of the L-GreCo benchmarks: the methods compared, their simulators, the summary table and plot.

For one compression family (top-k, QSGD or PowerSGD) and its default setting, four methods run in
the 4-worker :class:`~commlib.sim.Simulator`:

* ``uniform`` — the family's compressor at the default on every compressed layer;
* ``lgreco-norm`` — :class:`~commlib.adaptive.LGreCo` at ``α = 1`` with the paper's error
  measure (sum of per-layer Frobenius norms of the error on the accumulated gradient);
* ``lgreco-sq`` — the same with ``error_metric="squared"`` (sum of squared norms);
* ``accordion`` — :class:`~commlib.adaptive.Accordion` switching each layer between a light
  setting (twice the default's bytes: density ×2, rank ×2, 8 bits) and a heavy one (half:
  density ÷2, rank ÷2, 2 bits), checked every ``period`` steps on the same window, η = 0.5;
* ``lgreco-grid-norm`` / ``lgreco-grid-sq`` — L-GreCo (either error measure) with a richer grid
  of the same family (:attr:`Family.grid`: QSGD bits × bucket sizes × norms, PowerSGD ranks 1…64);
* ``lgreco-mixed-norm`` / ``lgreco-mixed-sq`` — L-GreCo choosing per layer among several families
  (:attr:`Family.mixed`, dense fp16/bf16 included); the uniform baseline stays the family's default.

The grid and mixed methods run for the families that define those grids (QSGD and PowerSGD).

All methods of a family use the same error feedback (EF14 for top-k, none for QSGD, which is
unbiased, and PowerSGD, which commlib's error feedback does not take; family ``powersgd-ef`` uses
PowerSGD's own feedback, every rank ``powersgd:r:ef``) and the same seeds; the
L-GreCo methods without a suffix use :func:`~commlib.adaptive.default_grid` of the default. Uniform runs the plain
compressor; the policies start from the same uniform default until their first decision, so the
bytes before it are the same (checked on the digits results: uniform's ``last_step_bytes`` equals
the policies' ``default_bytes`` plus the dense biases and the 4-byte non-finite flag).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from commlib.adaptive import Accordion, LGreCo, Option
from commlib.compress import Identity
from commlib.feedback import EF14
from commlib.sim import Simulator

RESULTS = Path(__file__).parent / "results"
METHODS = ("uniform", "lgreco-norm", "lgreco-sq", "accordion", "lgreco-grid-norm", "lgreco-grid-sq",
           "lgreco-mixed-norm", "lgreco-mixed-sq")
#: What must match for ``--merge`` to combine runs from an earlier results file with new ones.
MERGE_KEYS = ("steps", "seeds", "period", "window", "first_solve", "batch", "layers", "chars")

_QSGD_GRID = tuple(f"qsgd:{b}x{s}{n}" for b in (2, 4, 8) for s in (32, 128, 512, 2048) for n in ("", ":max"))
_RANKS = tuple(f"powersgd:{r}" for r in (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64))
_RANKS_EF = tuple(f"{rank}:ef" for rank in _RANKS)
_TOPK = tuple(f"topk:{d}" for d in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2))


@dataclass(frozen=True)
class Family:
    """A compression family: its default option, Accordion's light and heavy options, and its error feedback.

    ``grid`` (richer candidates of the same family) and ``mixed`` (candidates of several
    families) are the options of the ``lgreco-grid-*`` and ``lgreco-mixed-*`` methods; empty: no such methods.
    """

    name: str
    default: str
    light: str
    heavy: str
    feedback: bool
    grid: tuple[str, ...] = ()
    mixed: tuple[str, ...] = ()

    def methods(self) -> tuple[str, ...]:
        """The methods this family runs."""
        missing = [prefix for prefix, grid in (("lgreco-grid", self.grid), ("lgreco-mixed", self.mixed)) if not grid]
        return tuple(m for m in METHODS if not any(m.startswith(prefix) for prefix in missing))


FAMILIES = {
    "topk": Family("topk", "topk:0.1", "topk:0.2", "topk:0.05", feedback=True),
    "qsgd": Family("qsgd", "qsgd:4x128", "qsgd:8x128", "qsgd:2x128", feedback=False, grid=_QSGD_GRID,
                   mixed=(*_QSGD_GRID, *_RANKS, "fp16", "bf16")),
    "qsgd-ef": Family("qsgd-ef", "qsgd:4x128", "qsgd:8x128", "qsgd:2x128", feedback=True, grid=_QSGD_GRID,
                      mixed=(*_QSGD_GRID, *_TOPK)),
    "powersgd": Family("powersgd", "powersgd:4", "powersgd:8", "powersgd:2", feedback=False, grid=_RANKS,
                       mixed=(*_RANKS, *_QSGD_GRID, "fp16", "bf16")),
    "powersgd-ef": Family("powersgd-ef", "powersgd:4:ef", "powersgd:8:ef", "powersgd:2:ef", feedback=False,
                          grid=_RANKS_EF, mixed=(*_RANKS_EF, *_QSGD_GRID, "fp16", "bf16")),
}


def make_simulator(method: str, family: Family, seed: int, workers: int, period: int, window: int,
                   first_solve: int | None = None) -> Simulator:
    """The simulator of one method (see the module docstring); ``first_solve``: L-GreCo's (default: the period)."""
    feedback = EF14() if family.feedback else None
    if method == "uniform":
        return Simulator(Option.parse(family.default).build(), workers, seed=seed, feedback=feedback)
    if method.startswith("lgreco"):
        metric = "squared" if method.endswith("-sq") else "norm"
        options = family.grid if "-grid-" in method else family.mixed if "-mixed-" in method else None
        policy = LGreCo(period=period, window=window, alpha=1.0, options=list(options) if options else None,
                        default_option=family.default, error_metric=metric, seed=seed, first_solve=first_solve)
    elif method == "accordion":
        policy = Accordion(family.light, family.heavy, interval=period, window=window, eta=0.5)
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return Simulator(Identity(), workers, seed=seed, feedback=feedback, policy=policy)


def add_naming_arguments(parser: argparse.ArgumentParser) -> None:
    """``--first-solve`` and ``--tag``, the options that (with ``--quick``) name the results file."""
    parser.add_argument("--first-solve", type=int, default=None,
                        help="L-GreCo's first decision at this compressed step (default: the period); "
                             "results go to a file named ..._first<N>")
    parser.add_argument("--tag", default=None,
                        help="appended to the results file's name (e.g. steps400 → ..._steps400)")


def results_name(base: str, args: argparse.Namespace) -> str:
    """The results file's name without suffix: ``base[_quick][_first<N>][_<tag>]``."""
    name = f"{base}_quick" if args.quick else base
    if args.first_solve is not None:
        name += f"_first{args.first_solve}"
    if args.tag:
        name += f"_{args.tag}"
    return name


def first_solve_note(args: object) -> str:
    """``", first decision at step N"`` for the table headers when ``--first-solve`` was given, else ``""``."""
    first = getattr(args, "first_solve", None)
    return "" if first is None else f", first decision at compressed step {first}"


def describe(sim: Simulator) -> dict[str, object]:
    """Bytes and the policy's final choices of a finished run."""
    out: dict[str, object] = {"sent_bytes": sim.stats.total.sent_bytes, "last_step_bytes": sim.stats.last.sent_bytes,
                              "last_step_policy_bytes": sim.stats.last.policy_sent_bytes}
    policy = sim.policy
    if isinstance(policy, LGreCo):
        out.update(option_counts=policy.option_counts(), predicted_bytes=policy.stats.predicted_bytes,
                   default_bytes=policy.stats.default_bytes, solves=policy.stats.solves,
                   choices={n: str(o) for n, o in policy.choices().items()})
    elif isinstance(policy, Accordion):
        out.update(option_counts=policy.option_counts(), predicted_bytes=policy.stats.predicted_bytes,
                   checks=policy.stats.checks, choices={n: str(o) for n, o in policy.choices().items()})
    return out


def run_all(fn: Callable[[tuple], dict], tasks: list[tuple], jobs: int) -> list[dict]:
    """``fn`` over ``tasks`` (in order), in ``jobs`` processes; prints one line per finished run."""
    if jobs <= 1:
        return [_report(fn(task)) for task in tasks]
    with mp.get_context("fork").Pool(jobs) as pool:
        return [_report(r) for r in pool.imap(fn, tasks)]


def _report(r: dict) -> dict:
    quality = "accuracy" if "accuracy" in r else "val_loss"
    print(f"{r['family']:8s} {r['method']:12s} seed {r['seed']}: {r['sent_bytes'] / 1e6:6.2f} MB, "
          f"{quality} {r[quality]:.4f} ({r['seconds']:.1f} s)", flush=True)
    return r


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict], quality: str, higher_is_better: bool) -> list[dict[str, object]]:
    """Per (family, method): mean bytes, bytes ratio vs uniform, quality mean ± std, and the one-std check.

    "within 1 std" compares the mean quality with uniform's: the gap is at most the larger of the
    two seed standard deviations, or the method is better.
    """
    rows = []
    for fam in dict.fromkeys(r["family"] for r in runs):
        base = [r for r in runs if r["family"] == fam and r["method"] == "uniform"]
        base_bytes = statistics.mean(r["sent_bytes"] for r in base)
        base_q, base_sd = _mean_std([r[quality] for r in base])
        for method in dict.fromkeys(r["method"] for r in runs if r["family"] == fam):
            mine = [r for r in runs if r["family"] == fam and r["method"] == method]
            sent = statistics.mean(r["sent_bytes"] for r in mine)
            q, sd = _mean_std([r[quality] for r in mine])
            gap = (base_q - q) if higher_is_better else (q - base_q)
            rows.append({"family": fam, "method": method, "seeds": len(mine), "MB": sent / 1e6,
                         "fewer_bytes_x": base_bytes / sent,
                         "last_step_x": statistics.mean(r["last_step_bytes"] for r in base)
                         / statistics.mean(r["last_step_bytes"] for r in mine),
                         quality: q, f"{quality}_std": sd, "within_1std": gap <= max(sd, base_sd) + 1e-12})
    return rows


def markdown(rows: list[dict[str, object]], quality: str, header: str) -> str:
    lines = [header, "", f"| family | method | MB sent (worker 0) | × fewer bytes than uniform (run / last step) "
             f"| {quality} (mean ± std) | within 1 std of uniform |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['method']} | {r['MB']:.2f} | {r['fewer_bytes_x']:.2f} / "
                     f"{r['last_step_x']:.2f} | {r[quality]:.4f} ± {r[f'{quality}_std']:.4f} | "
                     f"{'yes' if r['within_1std'] else 'no'} |")
    return "\n".join(lines) + "\n"


def merge_runs(path: Path, runs: list[dict], args: object) -> list[dict]:
    """``runs`` plus the runs of ``path`` (an earlier results file) for the (family, method) pairs ``runs`` lacks.

    Raises ``ValueError`` when the earlier file's settings (:data:`MERGE_KEYS`) differ from ``args``.
    """
    if not path.exists():
        return runs
    earlier = json.loads(path.read_text())
    mine, theirs = vars(args), earlier["args"]
    differ = [k for k in MERGE_KEYS if mine.get(k) != theirs.get(k)]
    if differ:
        raise ValueError(f"cannot merge with {path}: settings differ in {differ}")
    done = {(r["family"], r["method"]) for r in runs}
    kept = [r for r in earlier["runs"] if (r["family"], r["method"]) not in done]
    order = {m: i for i, m in enumerate(METHODS)}
    families = list(dict.fromkeys([*(r["family"] for r in earlier["runs"]), *(r["family"] for r in runs)]))
    return sorted(kept + runs, key=lambda r: (families.index(r["family"]), order[r["method"]], r["seed"]))


def write_results(name: str, args: object, runs: list[dict], rows: list[dict[str, object]], quality: str,
                  header: str, title: str, results: Path) -> None:
    """Write ``name``.json (args, summary, runs), .md (table) and .png (plot) under ``results``; print the table."""
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps({"args": vars(args), "summary": rows, "runs": runs}, indent=1))
    (results / f"{name}.md").write_text(markdown(rows, quality, header))
    plot(runs, quality, title, results / f"{name}.png")
    print(markdown(rows, quality, header))


def plot(runs: list[dict], quality: str, title: str, path: Path) -> None:
    """One panel per family: MB sent (x) against quality (y), mean ± std over seeds per method; one shared legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in runs))
    fig, axes = plt.subplots(1, len(families), figsize=(max(7.0, 4.2 * len(families)), 4.4), squeeze=False)
    style = {m: (f"C{i}", marker) for i, (m, marker) in enumerate(zip(METHODS, "osD^vPXp"))}
    handles: dict[str, object] = {}
    for ax, fam in zip(axes[0], families):
        for method in dict.fromkeys(r["method"] for r in runs if r["family"] == fam):
            mine = [r for r in runs if r["family"] == fam and r["method"] == method]
            mb, mb_sd = _mean_std([r["sent_bytes"] / 1e6 for r in mine])
            q, q_sd = _mean_std([r[quality] for r in mine])
            color, marker = style.get(method, ("k", "x"))
            handles[method] = ax.errorbar(mb, q, xerr=mb_sd, yerr=q_sd, marker=marker, color=color, capsize=3,
                                          label=method)
        ax.set_title(fam)
        ax.set_xlabel("MB sent by worker 0")
        ax.set_ylabel(quality)
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 8), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
