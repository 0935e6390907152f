"""``commlib simulate``: straggler-tolerant coded training on a virtual clock, scheme against scheme.

Drives :func:`commlib.sim.coded.simulate` (timing only): every scheme runs the same jobs on
the same seeded delay traces (common random numbers), one trace per repeat. Worker i in
round r at normalized load L takes

    d = overhead + compute·L          (a good round)
    d = overhead·slowdown + compute·L  (a straggling round, for the pattern models)

or, for ``lognormal`` / ``exponential``, the heavy-tailed delays of
``benchmarks/sgc_sweep.py``. The master ends a round at (1 + μ)·fastest and waits out
straggler sets the scheme's model does not admit (Krishnan, Ebrahimi, Khisti, ICLR 2023;
classic GC: Tandon et al., ICML 2017). It prints a table (runtime mean ± std over the
repeats, wait-outs, stragglers per round) and can save a plot and a JSON file.

Example::

    commlib simulate --workers 64 --stragglers gilbert-elliott --scheme m-sgc:1,2,27 --jobs 200 --seed 0 --plot out.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .coded.injector import STRAGGLER_SPECS, straggler_trace
from .coding import CODE_KINDS, make_scheme
from .coding.stragglers import FALLBACKS, Cutoff
from .sim.coded import CodedRun, simulate

__all__ = ["build_parser", "main"]

PAPER_SCHEMES = ("none", "gc:15", "sr-sgc:2,3,23", "m-sgc:1,2,27")


def _number(kind: type, low: float, strict: bool = False):
    """An argparse type: ``kind`` (int or float) at least ``low`` (greater than ``low`` if ``strict``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not np.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="commlib simulate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Simulate coded (straggler-tolerant) data-parallel training on a virtual clock and compare "
                    "schemes: runtime, wait-outs, stragglers.",
        epilog="schemes:   none | gc:S | sr-sgc:B,W,LAMBDA | m-sgc:B,W,LAMBDA\n"
               f"stragglers: {' | '.join(STRAGGLER_SPECS)}\n"
               "           (worker ids count from 0; pattern models slow a straggler's overhead by --slowdown)\n\n"
               "example:\n  commlib simulate --workers 64 --stragglers gilbert-elliott --scheme m-sgc:1,2,27 "
               "--jobs 200 --seed 0 --plot out.png")
    p.add_argument("--workers", type=_number(int, 1), default=64, metavar="N", help="workers (default 64)")
    p.add_argument("--scheme", action="append", metavar="SPEC",
                   help=f"a scheme to run; repeat to compare (default: {' '.join(PAPER_SCHEMES)})")
    p.add_argument("--jobs", type=_number(int, 1), default=200, metavar="J", help="jobs per run (default 200)")
    p.add_argument("--stragglers", default="gilbert-elliott", metavar="SPEC",
                   help="straggler model (default gilbert-elliott, i.e. gilbert-elliott:0.05,0.5)")
    p.add_argument("--overhead", type=_number(float, 0, strict=True), default=1.2, metavar="SEC",
                   help="per-round overhead of a good round, seconds (default 1.2, the paper's Lambda workers)")
    p.add_argument("--slowdown", type=_number(float, 1, strict=True), default=10.0, metavar="X",
                   help="a straggler's overhead factor for pattern models (default 10)")
    p.add_argument("--compute", type=_number(float, 0), default=2.2, metavar="SEC",
                   help="seconds of computation for a whole job, scaled by load (default 2.2)")
    p.add_argument("--mu", type=_number(float, 0), default=1.0, help="cutoff (1 + mu) x fastest (default 1)")
    p.add_argument("--fallback", choices=FALLBACKS, default="wait-all",
                   help="when the stragglers break the scheme's model (default wait-all, as the paper)")
    p.add_argument("--code", choices=CODE_KINDS, default="crc",
                   help="gradient code (default crc: the paper's loads for every n)")
    p.add_argument("--repeats", type=_number(int, 1), default=5, metavar="R",
                   help="traces per scheme, seeds SEED..SEED+R-1 (default 5)")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--plot", type=Path, metavar="PATH", help="save a figure (jobs done over time, runtime bars)")
    p.add_argument("--json", type=Path, metavar="PATH", help="save every run's summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


class _Progress:
    """tqdm when it is installed, else a one-line counter rewritten on stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, disable=not enabled, unit="run", file=sys.stderr)

    def step(self, label: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(label)
            self.bar.update(1)
        elif self.enabled:
            width = 30
            filled = width * self.done // self.total
            print(f"\rsimulating [{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total} {label:<30}",
                  end="" if self.done < self.total else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _table(labels: list[str], runs: dict[str, list[CodedRun]]) -> str:
    base = runs.get("none")
    base_time = np.mean([r.total_time for r in base]) if base else None
    head = (f"{'scheme':<18}{'load':>9}{'T':>3}{'runtime (s)':>20}{'vs none':>9}{'round (s)':>11}"
            f"{'wait-outs':>11}{'stragglers':>12}{'decoded':>9}")
    lines = [head, "-" * len(head)]
    for label in labels:
        rs = runs[label]
        times = np.array([r.total_time for r in rs])
        rounds = sum(r.rounds for r in rs)
        waits = sum(r.wait_out_count for r in rs) / max(1, rounds)
        stragglers = sum(int(r.stragglers.sum()) for r in rs) / max(1, rounds)
        decoded = np.mean([r.decode_rate for r in rs])
        vs = f"{(times.mean() / base_time - 1) * 100:+.1f}%" if base_time else "-"
        lines.append(f"{label:<18}{float(rs[0].load):>9.5f}{rs[0].delay:>3}"
                     f"{f'{times.mean():.1f} ± {times.std():.1f}':>20}{vs:>9}"
                     f"{np.mean([r.durations.mean() for r in rs]):>11.3f}{waits * 100:>10.1f}%"
                     f"{stragglers:>12.2f}{decoded * 100:>8.1f}%")
    return "\n".join(lines)


def _plot(path: Path, labels: list[str], runs: dict[str, list[CodedRun]], title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    done_ax, bar_ax = fig.subplots(1, 2, width_ratios=(3, 2))
    for label in labels:
        finish = np.sort(runs[label][0].finish_time[np.isfinite(runs[label][0].finish_time)])
        done_ax.step(finish, np.arange(1, len(finish) + 1), where="post", label=label)
    done_ax.set(xlabel="time (s, first trace)", ylabel="jobs decoded", title="progress")
    done_ax.legend(loc="lower right", fontsize="small")
    means = [np.mean([r.total_time for r in runs[label]]) for label in labels]
    stds = [np.std([r.total_time for r in runs[label]]) for label in labels]
    bar_ax.bar(range(len(labels)), means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(labels))])
    bar_ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize="small")
    bar_ax.set(ylabel="total runtime (s)", title=f"runtime, mean ± std over {len(runs[labels[0]])} traces")
    fig.suptitle(title, fontsize="medium")
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    """Run ``commlib simulate`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    specs = args.scheme or list(PAPER_SCHEMES)
    schemes: dict[str, str] = {}  # label -> spec
    rounds = 1
    for spec in specs:
        try:
            scheme = make_scheme(spec, args.workers, args.jobs, code=args.code, seed=args.seed)
        except ValueError as exc:
            parser.error(f"--scheme {spec}: {exc}")
        if scheme.label in schemes:
            parser.error(f"--scheme {spec} is given twice")
        schemes[scheme.label] = spec
        rounds = max(rounds, scheme.rounds)
    try:
        straggler_trace(args.stragglers, 1, args.workers)
    except ValueError as exc:
        parser.error(f"--stragglers: {exc}")
    for flag, path in (("--plot", args.plot), ("--json", args.json)):
        if path is not None and not path.parent.is_dir():
            parser.error(f"{flag}: directory {path.parent} does not exist")
    cutoff = Cutoff(args.mu, args.fallback)
    labels = list(schemes)
    runs: dict[str, list[CodedRun]] = {label: [] for label in labels}
    progress = _Progress(len(labels) * args.repeats, not args.no_progress)
    for seed in range(args.seed, args.seed + args.repeats):
        trace = straggler_trace(args.stragglers, rounds, args.workers, seed=seed, fast=args.overhead,
                                slow=args.overhead * args.slowdown, compute=args.compute)
        for label, spec in schemes.items():
            scheme = make_scheme(spec, args.workers, args.jobs, code=args.code, seed=args.seed)
            runs[label].append(simulate(scheme, trace, cutoff))
            progress.step(f"{label} seed {seed}")
    progress.close()
    title = (f"{args.workers} workers, {args.jobs} jobs, stragglers {args.stragglers}, mu={args.mu:g}, "
             f"{args.fallback}, {args.repeats} traces from seed {args.seed}")
    print(title)
    print(_table(labels, runs))
    if args.plot is not None:
        _plot(args.plot, labels, runs, title)
        print(f"plot: {args.plot}")
    if args.json is not None:
        payload = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "runs": {label: [r.summary() for r in rs] for label, rs in runs.items()}}
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
