"""CPU benchmark: the per-step compute cost error feedback adds on top of plain TopK.

What is measured
----------------
One process, ``torch.set_num_threads(2)``, one gradient tensor of shape
``(d // 5000, 5000)`` in fp32 (default d = 25M, 100 MB; ``--quick``: d = 1M) and
TopK at density 1%. Every method is a ``GradientExchange(TopK(0.01), rank=0,
world_size=1, ExchangeConfig(start_step=0), feedback)`` driven through
``run_lockstep`` with a single virtual worker, so the collectives are in-process
copies of a one-rank "sum" and the time is the exchange's compute: the
finiteness check, the top-k selection, encode/decode and, with feedback, the
``message`` / ``commit`` arithmetic on the state buffers. Communication is not
measured.

Methods, side by side in one run:

* ``memcpy``: ``torch.empty_like(g).copy_(g)``, one read and one write of the
  gradient: the floor any per-element pass costs.
* ``topk``: plain TopK exchange (no feedback object).
* ``topk+ef14``, ``topk+ef21``, ``topk+econtrol`` (``EControl(eta=0.005)``).
* ``topk+econtrol (torch ops)``: EControl as written before its kernels, for the
  side-by-side ratio: message and commit in separate torch ops (two passes each,
  ``g − hᵢ`` in the work buffer), the ranks' mean made dense (a zero fill and a
  scatter per rank) and added to ``h`` by a dense pass. Same arithmetic but the
  message's rounding (``add_(e, alpha=η)`` fuses the multiply-add in torch's
  vector loop; the kernel rounds ``η·e`` first).

``--world n`` (default 1) runs ``n`` virtual ranks in lockstep in the one
process, each with its own gradient; a step's time is divided by ``n`` (ms per
rank), so the decode of ``n`` ranks' messages is in it.

Each method runs ``--warmup`` (1) untimed step (step 0, which also allocates
the feedback state), then ``--steps`` (3) timed steps. The measurement is
**interleaved**: round i times step ``warmup + i`` of every method once, in an
order shuffled per round from ``(--seed, i)``, so drift on a loaded machine moves
all methods alike. Every method sees the same gradient at a given step: a
random normal tensor drawn from a ``torch.Generator`` seeded with
``(--seed, step)``, generated before the round, outside the timed region.
A step is timed with ``time.perf_counter`` around the whole
``run_lockstep([exchange.protocol([("w", g)], step)])`` call.

Table columns: median ms over the timed steps (best also in the JSON),
``x topk`` (median over plain TopK's median), ``x memcpy`` (median over the
memcpy median), and ``state MB`` (``feedback.state_bytes() / 1e6`` after the
run: the extra memory the method keeps per worker).

Writes ``benchmarks/results/ef_overhead.json`` (config, torch version,
``commlib.ops.backend()``, ``os.getloadavg()`` before and after, rows). Other
work on the machine (the load average) inflates all numbers; the ratios are
the robust part.

Usage::

    PYTHONPATH=. python benchmarks/ef_overhead.py            # d = 25M (~1-2 min on 2 cores)
    PYTHONPATH=. python benchmarks/ef_overhead.py --quick    # d = 1M
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from commlib import ops
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import SparseDelta, TopK
from commlib.feedback import EF14, EF21, EControl, ErrorFeedback

RESULTS = Path(__file__).resolve().parent / "results" / "ef_overhead.json"  # --world n > 1: ..._world{n}.json
COLS = 5000


def _shape(d: int) -> tuple[int, int]:
    """``(d // 5000, 5000)``; d must be a positive multiple of 5000 (25M is 5000 x 5000)."""
    if d < COLS or d % COLS:
        raise SystemExit(f"--d must be a positive multiple of {COLS}, got {d}")
    return d // COLS, COLS


class EControlTorchOps(EControl):
    """EControl before its kernels: torch ops, two passes each for message and commit, the mean made dense."""

    def _message(self, s: dict[str, torch.Tensor], g: torch.Tensor) -> torch.Tensor:
        return torch.sub(g, s["h_local"], out=s["scratch"]).add_(s["e"], alpha=self.eta)

    def _commit(self, s: dict[str, torch.Tensor], g: torch.Tensor, dl, dm) -> torch.Tensor:
        d = torch.sub(g, s["h_local"], out=s["scratch"])
        dl.add_to_(d, alpha=-1.0)
        s["e"].add_(d)
        dl.add_to_(s["h_local"])
        s["h"].add_(dm.to_dense() if isinstance(dm, SparseDelta) else dm)
        return s["h"]


def _gradients(shape: tuple[int, int], seed: int, step: int, world: int) -> list[torch.Tensor]:
    gens = [torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + r) for r in range(world)]
    return [torch.randn(shape, generator=gen, dtype=torch.float32) for gen in gens]


def _exchange_step(density: float, feedback: ErrorFeedback | None, world: int) -> tuple[Callable, ErrorFeedback | None]:
    ranks = [GradientExchange(TopK(density=density), r, world, ExchangeConfig(start_step=0),
                              copy.deepcopy(feedback)) for r in range(world)]

    def step(gs: list[torch.Tensor], t: int) -> None:
        outs = run_lockstep([ex.protocol([("w", g)], t) for ex, g in zip(ranks, gs)])
        del outs

    return step, ranks[0].feedback


def _memcpy_step(gs: list[torch.Tensor], t: int) -> None:
    for g in gs:
        torch.empty_like(g).copy_(g)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=25_000_000, help="gradient elements (multiple of 5000)")
    ap.add_argument("--quick", action="store_true", help="d = 1M")
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--world", type=int, default=1, help="virtual ranks in lockstep (times are per rank)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    d = 1_000_000 if args.quick else args.d
    shape = _shape(d)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    methods: dict[str, tuple[Callable, ErrorFeedback | None]] = {
        "memcpy": (_memcpy_step, None),
        "topk": _exchange_step(args.density, None, args.world),
        "topk+ef14": _exchange_step(args.density, EF14(), args.world),
        "topk+ef21": _exchange_step(args.density, EF21(), args.world),
        "topk+econtrol": _exchange_step(args.density, EControl(eta=0.005), args.world),
        "topk+econtrol (torch ops)": _exchange_step(args.density, EControlTorchOps(eta=0.005), args.world),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    t_start = time.perf_counter()
    for step in range(args.warmup + args.steps):
        g = _gradients(shape, args.seed, step, args.world)
        order = list(methods)
        random.Random(args.seed * 1_000_003 + step).shuffle(order)
        for name in order:
            fn, _ = methods[name]
            t0 = time.perf_counter()
            fn(g, step)
            dt = (time.perf_counter() - t0) / args.world
            if step >= args.warmup:
                times[name].append(dt)
        del g
    total_s = time.perf_counter() - t_start
    load_after = os.getloadavg()

    base_topk = statistics.median(times["topk"])
    base_copy = statistics.median(times["memcpy"])
    rows = []
    for name, (_, fb) in methods.items():
        med = statistics.median(times[name])
        rows.append({
            "method": name,
            "feedback": None if fb is None else fb.config(),
            "median_ms": 1e3 * med,
            "best_ms": 1e3 * min(times[name]),
            "times_ms": [1e3 * t for t in times[name]],
            "x_topk": med / base_topk,
            "x_memcpy": med / base_copy,
            "state_mb": 0.0 if fb is None else fb.state_bytes() / 1e6,
        })

    print(f"d = {d:,} {shape} fp32, TopK density {args.density}, world {args.world} (ms per rank), "
          f"{args.threads} threads, "
          f"backend {ops.backend()}, torch {torch.__version__}")
    print(f"warmup {args.warmup}, {args.steps} timed steps (interleaved); loadavg before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}; total {total_s:.1f} s")
    header = f"{'method':<26} {'median ms':>10} {'best ms':>9} {'x topk':>7} {'x memcpy':>9} {'state MB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['method']:<26} {r['median_ms']:>10.1f} {r['best_ms']:>9.1f} {r['x_topk']:>7.2f} "
              f"{r['x_memcpy']:>9.1f} {r['state_mb']:>9.1f}")

    result = {
        "config": {"d": d, "shape": list(shape), "dtype": "float32", "density": args.density,
                   "world_size": args.world, "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
                   "seed": args.seed, "quick": args.quick, "interleaved": True},
        "torch": torch.__version__,
        "backend": ops.backend(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
        "total_s": total_s,
        "rows": rows,
    }
    if args.out == RESULTS and args.world > 1:
        args.out = RESULTS.with_name(f"ef_overhead_world{args.world}.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
