"""CPU benchmark: a sketched exchange that decodes its mean into the DDP bucket, against a new tensor then a copy.

What is measured
----------------
One process, ``torch.set_num_threads(--threads)`` (default 1, as each rank of
the netem benchmark), one DDP-like bucket: a flat float32 buffer holding
``--tensors`` matrices of ``--rows × --rows`` (default 6 × 2048², 25.2M
elements; ``--large``: 2 × 4096², whose 64 MB tensors glibc always maps afresh),
exchanged by ``GradientExchange(Sketch(ratio=20, mode=…))`` with one virtual
rank (``run_lockstep``; the collectives are in-process copies), ``inplace=True``
(the bucket handed over, as in the DDP hook). Per configuration:

* ``no feedback`` (``Sketch(mode="unbiased")``): ``decode into the bucket`` is
  commlib's path (the transpose writes the mean into the handed-over tensor);
  ``new tensor + copy`` runs the same code with a ``Sketch`` whose ``decode``
  ignores ``out``, so the mean lands in a new tensor and is copied into the
  bucket, as it was before ``out=``;
* ``EF14`` (``mode="projection"``): ``decode into the bucket`` passes the mean
  to the feedback as a :class:`~commlib.compress.LazyMean` that EF14 decodes
  into the bucket; ``new tensor + copy`` gives the feedback dense deltas only
  (``sparse_deltas = False``), so the mean is decoded into a new tensor and
  copied by the commit, as before.

Both paths give the same bits (checked on the last step). Steps are
**interleaved**: round i runs step i of every path once, in an order shuffled
per round from ``(--seed, i)``; the bucket is refilled from the same gradient
before each step, outside the timed region. ``--warmup`` (2) untimed rounds,
then ``--steps`` (20) timed ones; the table shows median and best ms and the
ratio of the medians.

Writes ``benchmarks/results/sketch_decode.json`` (``--large``:
``sketch_decode_large.json``). Other work on the machine inflates all numbers;
the ratios are the robust part.

Usage::

    PYTHONPATH=. python benchmarks/sketch_decode.py [--large] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from commlib import ops
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import Sketch, TensorContext
from commlib.feedback import EF14

RESULTS = Path(__file__).resolve().parent / "results"


class NewTensorSketch(Sketch):
    """A ``Sketch`` that decodes into a new tensor whatever ``out`` says (the path before ``out=``)."""

    def decode(self, total: Tensor, shape: torch.Size, ctx: TensorContext, out: Tensor | None = None) -> Tensor:
        return super().decode(total, shape, ctx)


def _path(feedback: bool, into_bucket: bool, bucket: Tensor, shape: tuple[int, int]) -> dict:
    mode = "projection" if feedback else "unbiased"
    sketch = (Sketch if into_bucket or feedback else NewTensorSketch)(ratio=20.0, mode=mode)
    method = None
    if feedback:
        method = EF14()
        method.sparse_deltas = into_bucket  # False: the exchange hands EF14 a dense mean, which its commit copies
    exchange = GradientExchange(sketch, 0, 1, ExchangeConfig(seed=0, start_step=0, min_compression_rate=0.0),
                                feedback=method)
    buffer = torch.empty_like(bucket)
    numel = shape[0] * shape[1]
    named = [(f"t{i}", buffer[i * numel:(i + 1) * numel].view(shape)) for i in range(bucket.numel() // numel)]
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
    names = [(feedback, into) for feedback in (False, True) for into in (True, False)]
    paths = {key: _path(*key, gradient, shape) for key in names}
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
    print(f"{tensors} x {rows}x{rows} float32, {args.threads} thread(s), median / best of {args.steps} steps")
    for feedback in (False, True):
        new, old = paths[(feedback, True)], paths[(feedback, False)]
        if not torch.equal(new["result"].view(torch.int32), old["result"].view(torch.int32)):
            raise SystemExit("the two decode paths differ: a bug")
        ratio = statistics.median(old["times"]) / statistics.median(new["times"])
        for label, path in (("decode into the bucket", new), ("new tensor + copy", old)):
            row = {"feedback": "EF14" if feedback else "none", "path": label,
                   "median_ms": round(1e3 * statistics.median(path["times"]), 2),
                   "best_ms": round(1e3 * min(path["times"]), 2)}
            rows_out.append(row)
            print(f"  {row['feedback']:>4}  {label:<24} {row['median_ms']:8.1f} {row['best_ms']:8.1f}")
        rows_out[-2]["speedup_vs_new_tensor"] = round(ratio, 2)
        print(f"  {'':>4}  speed-up {ratio:.2f}x")
    report = {
        "benchmark": "sketch_decode",
        "config": {"tensors": tensors, "rows": rows, "ratio": 20.0, "threads": args.threads,
                   "warmup": args.warmup, "steps": args.steps, "seed": args.seed},
        "backend": ops.backend(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": os.getloadavg()[0],
        "unit": "milliseconds per bucket exchange",
        "rows": rows_out,
    }
    out = args.out or RESULTS / ("sketch_decode_large.json" if args.large else "sketch_decode.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
