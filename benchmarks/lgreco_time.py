"""Predicted vs measured exchange time of per-layer option sets on a real loopback gloo group.

Steps, on ``--world`` gloo processes on this machine (one intra-op thread each):

1. calibrate a :class:`~commlib.adaptive.TimeCost` on the group (:func:`~commlib.adaptive.calibrate`:
   all-reduce, all-gather and all-to-all at 4 KB … 4 MB, medians, max over ranks, least-squares
   fit) and time every option's local work (:func:`~commlib.adaptive.measure_codec_times`, every
   rank at once so the times carry the contention of ranks sharing cores, max over ranks);
2. for each option set (uniform fp32, top-k 0.1, QSGD 4 bits, PowerSGD rank 4, and a mixed set
   as L-GreCo would choose), build a ``GradientExchange`` whose policy holds that decision and
   time one bucket (four matrices of an MLP, 0.59 M elements, plus biases) end to end with the
   torch driver: a barrier, then the exchange; the median of ``--repeats`` runs, max over ranks;
3. predict the same with :func:`~commlib.adaptive.cost.exchange_seconds` (one latency per fused
   collective, payload bytes as sent, the driver's split of large ordered all-reduces, codec times).

The same comparison on shaped links (netem), with L-GreCo's own choice and in-run re-calibration:
``benchmarks/netem/lgreco_time_netem.py``.

Writes ``benchmarks/results/lgreco_time{_quick}.json`` and ``.md`` with predicted/measured per set.
Run: ``PYTHONPATH=. python benchmarks/lgreco_time.py [--quick]``. Timings on a shared machine are
noisy: the table states the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from commlib.adaptive import LGreCo, Option, calibrate, measure_codec_times
from commlib.adaptive.cost import exchange_seconds
from commlib.comm import torch_driver
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.compress import Identity

RESULTS = Path(__file__).parent / "results"
SHAPES = {"w1": (512, 256), "w2": (512, 512), "w3": (256, 512), "w4": (10, 256)}
BIASES = 512 + 512 + 256 + 10
OPTIONS = ["fp32", "topk:0.1", "qsgd:4x128", "powersgd:4", "topk:0.05", "topk:0.2"]
SETS = {
    "fp32": ["fp32"] * 4,
    "topk:0.1": ["topk:0.1"] * 4,
    "qsgd:4x128": ["qsgd:4x128"] * 4,
    "powersgd:4": ["powersgd:4"] * 4,
    "mixed (L-GreCo-like)": ["topk:0.2", "topk:0.05", "topk:0.1", "fp32"],
    "mixed families": ["powersgd:4", "topk:0.05", "qsgd:4x128", "fp32"],
}


def _measure(exchange: GradientExchange, named: list[tuple[str, torch.Tensor]], repeats: int) -> float:
    """Median seconds of one bucket exchange (after one untimed run), max over ranks."""
    runs = []
    for i in range(repeats + 1):
        dist.barrier()
        start = time.perf_counter()
        torch_driver.run(exchange.protocol(named, step=i))
        if i:
            runs.append(time.perf_counter() - start)
    worst = torch.tensor([statistics.median(runs)], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def _worker(rank: int, world: int, port: int, repeats: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    try:
        options = [Option.parse(o) for o in OPTIONS]
        codec = measure_codec_times(options, shape=(512, 512), group=dist.group.WORLD)
        model = calibrate(sizes=(1 << 12, 1 << 16, 1 << 20, 1 << 22), repeats=repeats, codec=codec)
        gen = torch.Generator().manual_seed(rank)
        named = [(n, torch.randn(s, generator=gen)) for n, s in SHAPES.items()]
        named += [(f"b{i}", torch.randn(n, generator=gen)) for i, n in enumerate((512, 512, 256, 10))]
        rows = []
        for label, choice in SETS.items():
            policy = LGreCo(period=1, window=1, options=OPTIONS, default_option="topk:0.1", once=True)
            exchange = GradientExchange(Identity(), rank, world, ExchangeConfig(start_step=0), policy=policy)
            exchange.register({n: t.shape for n, t in named})
            policy.decide(1)  # the once-due re-solve, without statistics: skipped, and held from now on
            policy.load_decision(torch.tensor([OPTIONS.index(o) for o in choice]))
            measured = _measure(exchange, named, repeats)
            layers = [(SHAPES[n], Option.parse(o)) for n, o in zip(SHAPES, choice)]
            predicted = exchange_seconds(model, layers, world, dense_numel=BIASES)
            rows.append({"set": label, "choice": choice, "predicted_ms": 1e3 * predicted,
                         "measured_ms": 1e3 * measured, "ratio": predicted / measured})
        if rank == 0:
            queue.put({"model": model.state_dict(), "rows": rows})
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 processes, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.world, args.repeats = 2, 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    load_start = os.getloadavg()[0]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, args.world, port, args.repeats, queue)) for r in range(args.world)]
    for p in procs:
        p.start()
    result = queue.get(timeout=900)
    for p in procs:
        p.join(timeout=60)
    load_end = os.getloadavg()[0]
    name = "lgreco_time_quick" if args.quick else "lgreco_time"
    lines = [f"{args.world} gloo processes on loopback, median of {args.repeats}, max over ranks; load average "
             f"{load_start:.1f} at the start, {load_end:.1f} at the end", "",
             "| option set | per-layer options | predicted ms | measured ms | predicted / measured |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['set']} | {', '.join(r['choice'])} | {r['predicted_ms']:.2f} | {r['measured_ms']:.2f} | "
                     f"{r['ratio']:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"args": vars(args), "load": [load_start, load_end],
                                                      **result}, indent=1))
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
