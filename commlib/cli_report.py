"""``commlib report``: curves and a summary from JSON-lines logs of ``commlib train --log-jsonl``.

For each log (labelled by its file name): training loss (moving average over
``--smooth`` steps), test accuracy at the evaluated steps, megabytes sent by the rank
(cumulative) and wall time per step, each against the step — four panels in one PNG
(matplotlib, Agg). A panel no log has figures for says so. Logs of an adaptive policy with
a time model add a fifth panel: the collective time per step as measured (solid) and as
predicted (dashed), from the records' ``collective_s`` and ``predicted_collective_s``
(all-zero series — no clock, no prediction, older logs without them — are left out).
A table on stdout gives each log's steps, final loss and accuracy, total MB sent and
median step time.

Example::

    commlib train --spawn 4 --compressor topk:0.01 --feedback ef21 --log-jsonl topk.jsonl --eval-every 50
    commlib train --spawn 4 --log-jsonl fp32.jsonl --eval-every 50
    commlib report fp32.jsonl topk.jsonl --out report.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .train.logs import read_jsonl

__all__ = ["build_parser", "main", "summarize"]

PANELS = (("loss", "training loss"), ("accuracy", "test accuracy"), ("sent_mb", "MB sent (cumulative)"),
          ("step_ms", "step time (ms)"))
COLLECTIVE_PANEL = ("collective_ms", "collective time per step (ms)")
#: curve key -> (record field, line style, legend suffix); both curves go to the collective panel
COLLECTIVE_CURVES = {"collective_ms": ("collective_s", "-", "measured"),
                     "predicted_collective_ms": ("predicted_collective_s", "--", "predicted")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="commlib report", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Plot loss, accuracy, bytes sent and step time (and, where logged, "
                                            "measured vs predicted collective time) from JSON-lines logs.",
                                epilog="example:\n  commlib report fp32.jsonl topk.jsonl --out report.png")
    p.add_argument("logs", nargs="+", type=Path, metavar="LOG.jsonl", help="logs of commlib train --log-jsonl")
    p.add_argument("--out", type=Path, required=True, metavar="PLOT.png", help="where the figure goes")
    p.add_argument("--smooth", type=int, default=10, metavar="K", help="moving-average window for the loss (>= 1)")
    return p


def _series(records: list[dict[str, object]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of the records where ``key`` is a number."""
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    steps = np.array([p[0] for p in pairs], dtype=float)
    return steps, np.array([p[1] for p in pairs], dtype=float)


def curves(records: list[dict[str, object]], smooth: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The plotted curves of one log, by panel key or :data:`COLLECTIVE_CURVES` key (those without data left out)."""
    out = {}
    steps, loss = _series(records, "loss")
    if len(loss):
        width = min(smooth, len(loss))
        out["loss"] = (steps[width - 1:], np.convolve(loss, np.ones(width) / width, mode="valid"))
    for key, source, scale, cumulative in (("accuracy", "accuracy", 1.0, False), ("sent_mb", "sent_bytes", 1e-6, True),
                                           ("step_ms", "step_s", 1e3, False)):
        steps, values = _series(records, source)
        if len(values):
            out[key] = (steps, (np.cumsum(values) if cumulative else values) * scale)
    for key, (source, *_) in COLLECTIVE_CURVES.items():
        steps, values = _series(records, source)
        if values.any():
            out[key] = (steps, values * 1e3)
    return out


def summarize(label: str, records: list[dict[str, object]]) -> str:
    """One table line: steps, final loss and accuracy, total MB sent, median step time."""
    def last(key: str) -> str:
        values = _series(records, key)[1]
        return f"{values[-1]:.4f}" if len(values) else "-"

    sent = _series(records, "sent_bytes")[1]
    step_s = _series(records, "step_s")[1]
    return (f"{label:<24}{len(records):>7}{last('loss'):>10}{last('accuracy'):>10}"
            f"{f'{sent.sum() / 1e6:.2f}' if len(sent) else '-':>10}"
            f"{f'{np.median(step_s) * 1e3:.1f}' if len(step_s) else '-':>10}")


def main(argv: list[str] | None = None) -> int:
    """Run ``commlib report``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error(f"--smooth must be >= 1, got {args.smooth}")
    if not args.out.resolve().parent.is_dir():
        parser.error(f"--out: directory {args.out.resolve().parent} does not exist")
    logs = {}
    for path in args.logs:
        try:
            logs[path.stem if path.stem not in logs else str(path)] = read_jsonl(path)
        except ValueError as exc:
            parser.error(str(exc))
    from matplotlib.figure import Figure

    plotted = {label: curves(records, args.smooth) for label, records in logs.items()}
    panels = PANELS + ((COLLECTIVE_PANEL,) if any(set(c) & set(COLLECTIVE_CURVES) for c in plotted.values()) else ())
    fig = Figure(figsize=(12 if len(panels) == 4 else 18, 7.5), layout="constrained")
    axes = dict(zip((key for key, _ in panels), fig.subplots(2, 2 if len(panels) == 4 else 3).ravel()))
    for index, (label, log_curves) in enumerate(plotted.items()):
        for key, (steps, values) in log_curves.items():
            style = {"color": f"C{index % 10}", "marker": "o" if key == "accuracy" else None}
            if key in COLLECTIVE_CURVES:  # measured and predicted share the log's colour and panel
                _, linestyle, suffix = COLLECTIVE_CURVES[key]
                axes[COLLECTIVE_PANEL[0]].plot(steps, values, label=f"{label} ({suffix})", linestyle=linestyle, **style)
            else:
                axes[key].plot(steps, values, label=label, **style)
    if len(panels) == 5:
        fig.delaxes(fig.axes[-1])  # the sixth cell of the 2 × 3 grid stays empty
    for key, title in panels:
        ax = axes[key]
        ax.set(xlabel="step", title=title)
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data in these logs", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(args.out, dpi=110)
    print(f"{'log':<24}{'steps':>7}{'loss':>10}{'accuracy':>10}{'MB sent':>10}{'step ms':>10}")
    for label, records in logs.items():
        print(summarize(label, records))
    print(f"plot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
