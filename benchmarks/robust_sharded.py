"""Peak memory and time of the robust hook's aggregation: gathered (every rank holds n × d) vs sharded (O(d)).

Setup
-----
``--world`` gloo processes (default 4) on this machine, one intra-op thread each.
Every rank draws its d-dimensional fp32 gradient (d = 10⁷; ``--quick``: 10⁶)
from a seeded generator and runs one aggregation protocol of
:mod:`commlib.ddp.robust` through the torch.distributed driver:

* ``gathered`` — :func:`~commlib.ddp.robust.robust_protocol`: all-gather of the
  n submissions, then the rule on the n × d matrix;
* ``sharded`` — :func:`~commlib.ddp.robust.sharded_protocol`: all-to-all of
  d/n-slices, all-reduce of the n × n partial Gram matrices and the faulty
  flags, the rule on the n × d/n slice, all-gather of the output slices.

Rules: ``TrimmedMean(f=1)`` (coordinate-wise) and ``FlagAggregator(m=2)`` (Gram).
Each (rule, mode) cell runs in a fresh process group, so that the peak resident
set of a rank is the protocol's: peak = ``ru_maxrss`` after the call minus the
RSS just before it (``/proc/self/statm``), after a small warm-up call; the input
vector is not counted. Reported per cell: the largest peak over the ranks and
the slowest rank's wall time of the call. Cells run interleaved, ``--repeats``
times (default 3; medians reported), and the table gives gathered / sharded
ratios measured side by side.

Written to ``benchmarks/results/robust_sharded[_quick].json``. Run:
``PYTHONPATH=. python benchmarks/robust_sharded.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RESULTS = Path(__file__).resolve().parent / "results"
RULES = ("trimmed_mean", "flag")
MODES = ("gathered", "sharded")


def _rule(name: str):
    from commlib import robust

    return robust.TrimmedMean(f=1) if name == "trimmed_mean" else robust.FlagAggregator(m=2)


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rank(rank: int, world: int, port: int, rule: str, mode: str, d: int, queue) -> None:
    """One rank: warm up on a small vector, then measure one aggregation of the d-vector."""
    from commlib.comm import torch_driver
    from commlib.ddp.robust import RobustState, robust_protocol, sharded_protocol

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    protocol = sharded_protocol if mode == "sharded" else robust_protocol
    state = RobustState(torch.nn.Linear(2, 2), _rule(rule), sharded=mode == "sharded")
    torch_driver.run(protocol(state, torch.randn(1000), 0))
    flat = torch.randn(d, generator=torch.Generator().manual_seed(rank))
    dist.barrier()
    rss_before = _rss()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    out = torch_driver.run(protocol(state, flat, 1))
    seconds = time.perf_counter() - t0
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put({"rank": rank, "seconds": seconds, "peak_extra_bytes": max(peak_after - rss_before, 0),
               "floor_bytes": max(peak_before - rss_before, 0), "out_sum": float(out.double().sum())})
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cell(rule: str, mode: str, d: int, world: int) -> dict:
    """Run one (rule, mode) aggregation on ``world`` fresh ranks; the worst rank's peak and time."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, rule, mode, d, queue)) for r in range(world)]
    for p in procs:
        p.start()
    rows = [queue.get(timeout=600) for _ in range(world)]
    for p in procs:
        p.join(timeout=60)
    return {"rule": rule, "mode": mode, "d": d, "world": world,
            "seconds": max(r["seconds"] for r in rows),
            "peak_extra_bytes": max(r["peak_extra_bytes"] for r in rows),
            "floor_bytes": max(r["floor_bytes"] for r in rows),
            "out_sum": rows[0]["out_sum"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 1e6, one repeat")
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    d = 10**6 if args.quick else 10**7
    repeats = 1 if args.quick else args.repeats
    runs = []
    for rep in range(repeats):
        for rule in RULES:
            for mode in MODES:
                r = cell(rule, mode, d, args.world)
                r["repeat"] = rep
                runs.append(r)
                print(f"rep {rep} {rule:12s} {mode:8s}: {r['seconds'] * 1e3:8.1f} ms, "
                      f"peak +{r['peak_extra_bytes'] / 2**20:7.1f} MiB (floor {r['floor_bytes'] / 2**20:.0f})",
                      flush=True)
    summary = []
    vector_mib = 4 * d / 2**20
    print(f"\nn = {args.world}, d = {d:.0e} (one fp32 vector = {vector_mib:.1f} MiB); medians over {repeats} repeat(s)")
    print("| rule | gathered MiB | sharded MiB | memory ratio | gathered ms | sharded ms | time ratio |")
    print("|---|---|---|---|---|---|---|")
    for rule in RULES:
        med = {mode: {key: statistics.median(r[key] for r in runs if r["rule"] == rule and r["mode"] == mode)
                      for key in ("peak_extra_bytes", "seconds")} for mode in MODES}
        row = {"rule": rule, **{f"{mode}_{key}": med[mode][key] for mode in MODES for key in med[mode]},
               "memory_ratio": med["gathered"]["peak_extra_bytes"] / max(med["sharded"]["peak_extra_bytes"], 1),
               "time_ratio": med["gathered"]["seconds"] / med["sharded"]["seconds"]}
        summary.append(row)
        print(f"| {rule} | {med['gathered']['peak_extra_bytes'] / 2**20:.0f} | "
              f"{med['sharded']['peak_extra_bytes'] / 2**20:.0f} | {row['memory_ratio']:.2f}× | "
              f"{med['gathered']['seconds'] * 1e3:.0f} | {med['sharded']['seconds'] * 1e3:.0f} | "
              f"{row['time_ratio']:.2f}× |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("robust_sharded_quick.json" if args.quick else "robust_sharded.json")
    out.write_text(json.dumps({"world": args.world, "d": d, "repeats": repeats, "runs": runs, "summary": summary,
                               "memory": "per rank: ru_maxrss after the call minus /proc/self/statm RSS before it "
                                         "(input vector excluded); worst rank"}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
