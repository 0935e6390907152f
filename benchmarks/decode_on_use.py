"""CPU benchmark: exchanges whose results are decoded where they are consumed, against a new tensor then a pass.

What is measured
----------------
One process, ``torch.set_num_threads(--threads)`` (default 1, as each rank of
the netem benchmark), one DDP-like bucket: a flat float32 buffer holding
``--tensors`` matrices of ``--rows × --rows`` (default 6 × 2048², 25.2M
elements; ``--large``: 2 × 4096², whose 64 MB tensors glibc always maps afresh),
exchanged by ``GradientExchange`` with one virtual rank (``run_lockstep``; the
collectives are in-process copies), ``inplace=True`` (the bucket handed over,
as in the DDP hook). Each setting runs two ways, with the same bits (checked on
the last step):

* ``Sketch(ratio=20)``, no feedback: ``decoded on use`` is commlib's path (the
  transpose writes the mean into the handed-over bucket, ``out=``); ``new
  tensor`` runs the same code with a ``Sketch`` whose ``decode`` ignores
  ``out``: the mean lands in a new tensor and is copied into the bucket, as
  before ``out=``;
* ``Sketch(ratio=20, mode="projection")`` + EF14, ``QSGD(bits=4)`` + EF14 and
  + EF21: ``decoded on use`` hands the feedback :class:`~commlib.compress.LazyDelta`
  objects (the sketch's mean, decoded into the bucket; QSGD's mean, its rows
  checked without decoding, decoded into the bucket too, and its local ``C(u)``,
  decoded into ``e`` or ``hᵢ`` as ``u − C(u)`` or ``hᵢ + C(u)``); ``new tensor``
  gives the feedback dense deltas only (``sparse_deltas = False``): each is
  decoded into a new tensor, then added or copied, as before;
* ``QSGD 4-bit + EF14, vs new mean``: the same, against a QSGD that hands the
  feedback its local ``C(u)`` on use but its mean as a new tensor (the mean's
  share of the saving alone).

Steps are **interleaved**: round i runs step i of every path once, in an order
shuffled per round from ``(--seed, i)``; the bucket is refilled from the same
gradient before each step, outside the timed region. ``--warmup`` (2) untimed
rounds, then ``--steps`` (20) timed ones; the table shows median and best ms
and the ratio of the medians.

Writes ``benchmarks/results/decode_on_use.json`` (``--large``:
``decode_on_use_large.json``). Other work on the machine inflates all numbers;
the ratios are the robust part.

Usage::

    PYTHONPATH=. python benchmarks/decode_on_use.py [--large] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from commlib import ops
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import QSGD, Compressor, GatherCompressor, Sketch, TensorContext
from commlib.feedback import EF14, EF21, ErrorFeedback

RESULTS = Path(__file__).resolve().parent / "results"


class NewTensorSketch(Sketch):
    """A ``Sketch`` that decodes into a new tensor whatever ``out`` says (the path before ``out=``)."""

    def decode(self, total: Tensor, shape: torch.Size, ctx: TensorContext, out: Tensor | None = None) -> Tensor:
        return super().decode(total, shape, ctx)


class NewMeanQSGD(QSGD):
    """A ``QSGD`` whose exchange hands error feedback its local ``C(u)`` decoded on use but the mean as a new
    dense tensor (the path before the gathered rows were checked without decoding)."""

    def exchange_local(self, x: Tensor, ctx: TensorContext, sparse: bool = False):
        return (yield from GatherCompressor.exchange_local(self, x, ctx, sparse))


# setting -> (compressor for "decoded on use", compressor for "new tensor", feedback or None, whether the
# "new tensor" path's feedback still takes deltas decoded on use)
SETTINGS: dict[str, tuple[Callable[[], Compressor], Callable[[], Compressor], Callable[[], ErrorFeedback] | None,
                          bool]] = {
    "Sketch 1/20, no feedback": (lambda: Sketch(ratio=20.0), lambda: NewTensorSketch(ratio=20.0), None, False),
    "Sketch 1/20 projection + EF14": (lambda: Sketch(ratio=20.0, mode="projection"),
                                      lambda: Sketch(ratio=20.0, mode="projection"), EF14, False),
    "QSGD 4-bit + EF14": (lambda: QSGD(bits=4), lambda: QSGD(bits=4), EF14, False),
    "QSGD 4-bit + EF21": (lambda: QSGD(bits=4), lambda: QSGD(bits=4), EF21, False),
    "QSGD 4-bit + EF14, vs new mean": (lambda: QSGD(bits=4), lambda: NewMeanQSGD(bits=4), EF14, True),
}


def _path(setting: str, on_use: bool, gradient: Tensor, shape: tuple[int, int]) -> dict:
    new_compressor, old_compressor, feedback, old_on_use = SETTINGS[setting]
    method = None
    if feedback is not None:
        method = feedback()
        # False: dense deltas, decoded into new tensors, then added or copied
        method.sparse_deltas = on_use or old_on_use
    exchange = GradientExchange(new_compressor() if on_use else old_compressor(), 0, 1,
                                ExchangeConfig(seed=0, start_step=0, min_compression_rate=0.0), feedback=method)
    buffer = torch.empty_like(gradient)
    numel = shape[0] * shape[1]
    named = [(f"t{i}", buffer[i * numel:(i + 1) * numel].view(shape)) for i in range(gradient.numel() // numel)]
    return {"exchange": exchange, "buffer": buffer, "named": named, "times": []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--large", action="store_true", help="2 tensors of 4096 x 4096 instead of 6 of 2048 x 2048")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows, tensors = (4096, 2) if args.large else (2048, 6)
    shape = (rows, rows)
    torch.set_num_threads(args.threads)
    gradient = torch.randn(tensors * rows * rows, generator=torch.Generator().manual_seed(args.seed))
    paths = {(setting, on_use): _path(setting, on_use, gradient, shape) for setting in SETTINGS
             for on_use in (True, False)}
    load_before = os.getloadavg()[0]
    for step in range(args.warmup + args.steps):
        order = list(paths)
        random.Random(args.seed * 1_000_003 + step).shuffle(order)
        for key in order:
            path = paths[key]
            path["buffer"].copy_(gradient)
            start = time.perf_counter()
            outs, _ = run_lockstep([path["exchange"].protocol(path["named"], step, inplace=True)])[0]
            elapsed = time.perf_counter() - start
            if step >= args.warmup:
                path["times"].append(elapsed)
            path["result"] = torch.cat([o.reshape(-1) for o in outs])
    rows_out = []
    print(f"{tensors} x {rows}x{rows} float32, {args.threads} thread(s), median / best ms of {args.steps} steps")
    for setting in SETTINGS:
        new, old = paths[(setting, True)], paths[(setting, False)]
        if not torch.equal(new["result"].view(torch.int32), old["result"].view(torch.int32)):
            raise SystemExit(f"{setting}: the two paths differ: a bug")
        ratio = statistics.median(old["times"]) / statistics.median(new["times"])
        for label, path in (("decoded on use", new), ("new tensor", old)):
            rows_out.append({"setting": setting, "path": label,
                             "median_ms": round(1e3 * statistics.median(path["times"]), 2),
                             "best_ms": round(1e3 * min(path["times"]), 2)})
            print(f"  {setting:<32} {label:<16} {rows_out[-1]['median_ms']:8.1f} {rows_out[-1]['best_ms']:8.1f}")
        rows_out[-2]["speedup_vs_new_tensor"] = round(ratio, 2)
        print(f"  {'':<32} speed-up {ratio:.2f}x")
    report = {
        "benchmark": "decode_on_use",
        "config": {"tensors": tensors, "rows": rows, "threads": args.threads, "warmup": args.warmup,
                   "steps": args.steps, "seed": args.seed},
        "backend": ops.backend(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": os.getloadavg()[0],
        "unit": "milliseconds per bucket exchange",
        "rows": rows_out,
    }
    out = args.out or RESULTS / ("decode_on_use_large.json" if args.large else "decode_on_use.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
