"""CPU/gloo benchmark of DDP communication hooks: torch's built-ins side by side with commlib's.

What is measured
----------------
One run spawns ``--world`` (default 4) gloo worker processes on loopback, each with
``torch.set_num_threads(1)``. For every hook, every worker builds the same
communication-heavy MLP (``commlib.train.models.mlp``; default 1024 features, 3 hidden
layers of 1024, 10 classes: about 3.2M parameters) from the same seed, wraps it in its
own ``DistributedDataParallel`` (a hook can be registered only once), registers the
hook and trains with plain SGD on synthetic data drawn once from a seeded
``torch.Generator`` (a different stream per rank; every hook's model sees the same
batches). All the models (one per hook) live side by side: ~1.2 GB peak RSS per worker with all 12.

The measurement is **interleaved**: each worker first builds every hook's model and runs
its ``--warmup`` (3) untimed steps (DDP rebuilds its buckets after step 0; both
PowerSGDs and commlib's compressors start compressing at step 2), then runs
``--steps`` (15) measured rounds; round i times step ``warmup + i`` of every hook once,
in an order shuffled per round from ``(--seed, i)`` (the same on every rank, so no hook
always follows the same other hook or holds the same place in the round). Measuring
the hooks one after another instead made their ratios unreliable: on a loaded 2-core
machine step times drift by ±30% over a run, so hooks measured minutes apart saw
different machines (commlib Identity came out at 1.05x or 1.51x torch
``allreduce_hook`` depending on where in the run it was measured). Interleaved, every
hook samples the same stretch of time, and drift moves all of them alike.

* **step time**: forward + backward (which includes the hook's communication, DDP
  waits for its futures) + ``optimizer.step()``, timed with ``time.perf_counter`` on
  every rank after a ``dist.barrier()``. A step's time is the slowest rank's; the
  table shows the median over the ``--steps`` measured steps.
* **× vs allreduce**: that median over the median of torch's ``allreduce_hook``.
* **bytes/step**: payload bytes one rank hands to the collectives per step (not the
  ring's 2(n-1)/n wire traffic, and not bytes received).

  - torch ``allreduce_hook``: analytic, 4·numel; ``fp16_compress_hook``: 2·numel;
    ``noop_hook``: 0.
  - torch ``powerSGD_hook``: ``PowerSGDState.total_numel_after_compression`` counted
    over the measured steps, × 4 bytes: (n + m)·r elements per compressed matrix
    (P and Q) plus numel for the tensors it all-reduces uncompressed (biases). The
    analytic value is stored next to it in the JSON as a cross-check.
  - commlib hooks: ``CommState.stats`` (``sent_bytes``), taken as the difference of
    the running totals over the measured steps only (warm-up steps are dense).
* **ratio vs fp32**: 4·numel over bytes/step (commlib: ``dense_fp32_bytes / sent_bytes``).

Hooks: torch ``allreduce_hook``, ``fp16_compress_hook``, ``powerSGD_hook``
(``PowerSGDState`` rank 4, ``start_powerSGD_iter=2``) and ``debugging_hooks.noop_hook``
(no communication: the compute floor); commlib's ``ddp.hook`` with Identity, FP16, BF16,
TopK 1%, RandK 1%, QSGD 4-bit, Sign and PowerSGD rank 4 (``start_step=2``). All use
DDP's default buckets except torch's ``powerSGD_hook``, which gets
``bucket_cap_mb=1000`` (one bucket): with several buckets in flight it issues its
second all-reduce from a future callback in a rank-dependent order and gloo aborts
with a size mismatch (torch 2.13).

Never hangs: ``init_process_group`` and every collective have a timeout
(``--collective-timeout``), the parent waits at most ``--timeout`` seconds in total
and kills the workers when that runs out or a worker dies without reporting.

Usage::

    PYTHONPATH=. python benchmarks/hooks_cpu.py            # full run (< ~4 min on 2 cores)
    PYTHONPATH=. python benchmarks/hooks_cpu.py --quick    # smoke run

Writes ``benchmarks/results/hooks_cpu.json`` (config, machine, rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue as queue_mod
import random
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

RESULTS = Path(__file__).resolve().parent / "results" / "hooks_cpu.json"
POWERSGD_BUCKET_CAP_MB = 1000.0
DEFAULT_BUCKET_CAP_MB = 25.0  # DDP's default

# name -> (family, commlib class name or torch hook name, constructor kwargs)
HOOKS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "torch allreduce_hook": ("torch", "allreduce", {}),
    "torch fp16_compress_hook": ("torch", "fp16", {}),
    "torch powerSGD_hook r4 (1 bucket)": ("torch", "powersgd", {"rank": 4}),
    "torch noop_hook (floor)": ("torch", "noop", {}),
    "commlib Identity": ("commlib", "Identity", {}),
    "commlib FP16": ("commlib", "FP16", {}),
    "commlib BF16": ("commlib", "BF16", {}),
    "commlib TopK 1%": ("commlib", "TopK", {"density": 0.01}),
    "commlib RandK 1%": ("commlib", "RandK", {"density": 0.01}),
    "commlib QSGD 4-bit": ("commlib", "QSGD", {"bits": 4}),
    "commlib Sign": ("commlib", "Sign", {}),
    "commlib PowerSGD r4": ("commlib", "PowerSGD", {"rank": 4}),
}
@dataclass(frozen=True)
class Config:
    features: int = 1024
    classes: int = 10
    hidden: int = 1024
    depth: int = 3
    world: int = 4
    batch: int = 32
    steps: int = 15
    warmup: int = 3
    seed: int = 0
    lr: float = 0.01
    start_step: int = 2
    collective_timeout: float = 60.0


# ---------------------------------------------------------------------------- worker side


def _batches(cfg: Config, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank)
    n = cfg.warmup + cfg.steps
    x = torch.randn(n, cfg.batch, cfg.features, generator=gen)
    y = torch.randint(0, cfg.classes, (n, cfg.batch), generator=gen)
    return list(zip(x.unbind(0), y.unbind(0), strict=True))


def _num_buckets(model: DDP) -> int | None:
    """Buckets per step after DDP's rebuild (private logging data; None if unavailable)."""
    try:
        data = model._get_ddp_logging_data()
        sizes = data.get("rebuilt_bucket_sizes") or data.get("bucket_sizes")
        return len(str(sizes).split(",")) if sizes else None
    except Exception:  # noqa: BLE001
        return None


def _powersgd_analytic_bytes(model: nn.Module, rank: int, min_rate: float = 2.0) -> int:
    """(n+m)·r·4 per matrix worth compressing (torch's ``_should_compress``), 4·numel for the rest."""
    total = 0
    for p in model.parameters():
        n, m = p.shape[0], p.numel() // p.shape[0]
        r = min(n, m, rank)
        compressed = (n + m) * r
        total += 4 * (compressed if compressed * min_rate < n * m else p.numel())
    return total


def _setup(name: str, cfg: Config) -> tuple[nn.Module, DDP, Callable[[], dict[str, float]], dict[str, Any]]:
    """Fresh model + DDP + hook; returns a function reading the hook's cumulative counters."""
    from commlib.train.models import mlp

    family, what, kwargs = HOOKS[name]
    model = mlp(cfg.features, cfg.classes, cfg.hidden, cfg.depth, cfg.seed)
    numel = sum(p.numel() for p in model.parameters())
    info: dict[str, Any] = {"bytes_method": "", "bucket_cap_mb": DEFAULT_BUCKET_CAP_MB}
    if family == "torch":
        from torch.distributed.algorithms.ddp_comm_hooks import debugging_hooks, default_hooks, powerSGD_hook

        if what == "powersgd":
            info["bucket_cap_mb"] = POWERSGD_BUCKET_CAP_MB
            ddp_model = DDP(model, bucket_cap_mb=POWERSGD_BUCKET_CAP_MB)
            psgd = powerSGD_hook.PowerSGDState(
                process_group=None,
                matrix_approximation_rank=kwargs["rank"],
                start_powerSGD_iter=2,
                random_seed=cfg.seed,
            )
            ddp_model.register_comm_hook(psgd, powerSGD_hook.powerSGD_hook)
            info["bytes_method"] = "PowerSGDState.total_numel_after_compression x 4 (measured steps)"
            info["analytic_bytes_per_step"] = _powersgd_analytic_bytes(model, kwargs["rank"])
            return model, ddp_model, lambda: {"sent_bytes": 4.0 * psgd.total_numel_after_compression}, info
        ddp_model = DDP(model)
        hook, per_elem = {
            "allreduce": (default_hooks.allreduce_hook, 4),
            "fp16": (default_hooks.fp16_compress_hook, 2),
            "noop": (debugging_hooks.noop_hook, 0),
        }[what]
        ddp_model.register_comm_hook(None, hook)
        info["bytes_method"] = f"analytic: {per_elem} x numel"
        info["analytic_bytes_per_step"] = per_elem * numel
        return model, ddp_model, lambda: {}, info
    from commlib import compress, ddp

    cls = getattr(compress, what)
    ddp_model = DDP(model)
    state = ddp.CommState(ddp_model, compressor=cls(**kwargs), seed=cfg.seed, start_step=cfg.start_step)
    ddp_model.register_comm_hook(state, ddp.hook)
    info["bytes_method"] = "commlib CommState.stats totals (measured steps)"

    def counters() -> dict[str, float]:
        total = state.stats.as_dict()["total"]
        keys = ("sent_bytes", "received_bytes", "dense_fp32_bytes", "compute_s", "comm_s", "buckets", "steps")
        return {k: float(total[k]) for k in keys}  # type: ignore[index]

    return model, ddp_model, counters, info


@dataclass
class _Run:
    """One hook's model, optimiser and measurements on this rank."""

    name: str
    model: nn.Module
    ddp_model: DDP
    opt: torch.optim.Optimizer
    counters: Callable[[], dict[str, float]]
    info: dict[str, Any]
    times: list[float] = field(default_factory=list)
    before: dict[str, float] = field(default_factory=dict)
    final_loss: float = float("nan")
    setup_s: float = 0.0


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> float:
    """One barrier-aligned training step of ``run``'s model; returns its duration on this rank."""
    dist.barrier()
    t0 = time.perf_counter()
    run.opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(run.ddp_model(x), y)
    loss.backward()
    run.opt.step()
    dt = time.perf_counter() - t0
    run.final_loss = float(loss.detach())
    return dt


def _prepare(name: str, cfg: Config, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> _Run:
    """Build ``name``'s model + DDP + hook and run its untimed warm-up steps."""
    t0 = time.perf_counter()
    model, ddp_model, counters, info = _setup(name, cfg)
    run = _Run(name, model, ddp_model, torch.optim.SGD(model.parameters(), lr=cfg.lr), counters, info)
    for x, y in batches[: cfg.warmup]:
        _step(run, x, y)
    run.setup_s = time.perf_counter() - t0
    return run


def _round_order(runs: list[_Run], cfg: Config, i: int) -> list[_Run]:
    """Hook order of measured round ``i``: a shuffle seeded by (seed, i), hence the same on every rank."""
    order = list(runs)
    random.Random(cfg.seed * 1_000_003 + i).shuffle(order)
    return order


def _result(run: _Run, cfg: Config) -> dict[str, Any]:
    after = run.counters()
    delta = {k: (after[k] - run.before.get(k, 0.0)) / cfg.steps for k in after}
    return {"name": run.name, "times": run.times, "per_step": delta, "info": run.info,
            "buckets": _num_buckets(run.ddp_model), "final_loss": run.final_loss, "setup_s": run.setup_s}


def _agree_failed(flags: list[bool]) -> list[bool]:
    """Element-wise OR of ``flags`` over the ranks (raises, ending the worker, if the group is broken)."""
    t = torch.tensor([1.0 if f else 0.0 for f in flags])
    dist.all_reduce(t)
    return [bool(v) for v in t.tolist()]


def _error_row(name: str, exc: BaseException | None = None, why: str = "") -> dict[str, Any]:
    if exc is None:
        return {"name": name, "error": why}
    return {"name": name, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def _peak_rss_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    except Exception:  # noqa: BLE001
        return float("nan")


def _worker(rank: int, cfg: Config, port: int, names: list[str], out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(cfg.world))
    torch.set_num_threads(1)
    errored: dict[str, dict[str, Any]] = {}  # name -> error row
    runs: list[_Run] = []  # hooks still being measured
    done: list[dict[str, Any]] = []
    rounds_done = 0

    def collect() -> list[dict[str, Any]]:
        """Rows in ``names`` order: finished hooks, failed ones, and hooks cut short by a worker error."""
        by_name = {r["name"]: r for r in done} | errored
        for run in runs:
            by_name.setdefault(run.name, _error_row(
                run.name, why=f"worker stopped after {rounds_done} of {cfg.steps} measured rounds"))
        return [by_name[n] for n in names if n in by_name]

    try:
        dist.init_process_group(
            "gloo", rank=rank, world_size=cfg.world, timeout=timedelta(seconds=cfg.collective_timeout)
        )
        batches = _batches(cfg, rank)
        t_start = time.perf_counter()
        # 1. one model per hook, each warmed up; the ranks agree after each whether it can be measured
        for name in names:
            run: _Run | None = None
            try:
                run = _prepare(name, cfg, batches)
            except Exception as exc:  # noqa: BLE001 - recorded, then the ranks agree whether to go on
                errored[name] = _error_row(name, exc)
            if _agree_failed([run is None])[0]:
                errored.setdefault(name, _error_row(name, why="another rank failed on this hook"))
                run = None
            if run is not None:
                runs.append(run)
            if rank == 0:
                status = errored[name]["error"] if name in errored else f"built + {cfg.warmup} warm-up steps"
                print(f"  [{time.perf_counter() - t_start:5.1f}s] {name}: {status}", flush=True)
        if rank == 0:
            print(f"  rank 0 peak RSS {_peak_rss_mb():.0f} MB with {len(runs)} models", flush=True)
        # 2. measured steps, interleaved: round i runs step (warmup + i) of every hook, in a per-round order
        for i in range(cfg.steps):
            if not runs:
                break
            x, y = batches[cfg.warmup + i]
            failed: dict[str, bool] = {}
            for run in _round_order(runs, cfg, i):
                try:
                    if i == 0:
                        run.before = run.counters()
                    run.times.append(_step(run, x, y))
                    failed[run.name] = False
                except Exception as exc:  # noqa: BLE001 - recorded, then the ranks agree below
                    errored[run.name] = _error_row(run.name, exc)
                    failed[run.name] = True
            agreed = _agree_failed([failed[r.name] for r in runs])
            for run, bad in zip(list(runs), agreed, strict=True):
                if bad:
                    errored.setdefault(run.name, _error_row(run.name, why="another rank failed on this hook"))
                    runs.remove(run)
            rounds_done = i + 1
            if rank == 0 and ((i + 1) % 5 == 0 or i + 1 == cfg.steps):
                print(f"  [{time.perf_counter() - t_start:5.1f}s] measured round {i + 1}/{cfg.steps} "
                      f"({len(runs)} hooks)", flush=True)
        # 3. counters after the last measured step of each hook
        for run in list(runs):
            done.append(_result(run, cfg))
            runs.remove(run)
        if rank == 0:
            for row in collect():
                med = statistics.median(row["times"]) * 1e3 if "times" in row else float("nan")
                status = row.get("error", f"median {med:.1f} ms (rank 0)")
                print(f"  {row['name']}: {status}", flush=True)
            print(f"  rank 0 peak RSS {_peak_rss_mb():.0f} MB", flush=True)
        out.put((rank, "ok", collect()))
    except BaseException:  # noqa: BLE001 - reported to the parent with what was measured so far
        out.put((rank, "error", {"partial": collect(), "traceback": traceback.format_exc()}))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------- parent side


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: Config, names: list[str], timeout: float) -> tuple[dict[int, list[dict[str, Any]]], dict[int, str]]:
    """Run ``_worker`` on ``cfg.world`` spawned processes; kill them all if they do not report within ``timeout``."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, cfg, port, names, out), daemon=True) for r in range(cfg.world)]
    for p in procs:
        p.start()
    results: dict[int, list[dict[str, Any]]] = {}
    errors: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(errors) < cfg.world:
            if time.monotonic() > deadline:
                errors[-1] = f"timed out after {timeout:.0f}s; killed the workers"
                break
            try:
                rank, status, payload = out.get(timeout=1.0)
            except queue_mod.Empty:
                reported = set(results) | set(errors)
                dead = [r for r, p in enumerate(procs) if r not in reported and p.exitcode not in (None, 0)]
                if dead:
                    time.sleep(2.0)  # a message may still be in flight
                    if out.empty():
                        codes = [procs[r].exitcode for r in dead]
                        errors[-1] = f"ranks {dead} died without reporting (exit codes {codes})"
                        break
                continue
            if status == "ok":
                results[rank] = payload
            else:
                results[rank] = payload["partial"]
                errors[rank] = payload["traceback"]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return results, errors


def summarise(cfg: Config, names: list[str], results: dict[int, list[dict[str, Any]]], numel: int) -> list[dict]:
    """One row per hook: per-step max over ranks, median over steps; bytes averaged over ranks."""
    rows = []
    for name in names:
        per_rank = [r for rank in sorted(results) for r in results[rank] if r["name"] == name]
        errs = [r["error"] for r in per_rank if "error" in r]
        row: dict[str, Any] = {"hook": name, "ranks_reporting": len(per_rank)}
        if not per_rank or errs or len(per_rank) < cfg.world:
            row["error"] = errs[0] if errs else "no result (workers stopped before this hook finished)"
            rows.append(row)
            continue
        step_max = [max(ts) for ts in zip(*(r["times"] for r in per_rank), strict=True)]
        info = per_rank[0]["info"]
        family = HOOKS[name][0]
        if family == "commlib":
            sent = statistics.fmean(r["per_step"]["sent_bytes"] for r in per_rank)
            dense = statistics.fmean(r["per_step"]["dense_fp32_bytes"] for r in per_rank)
            row.update(
                received_bytes=statistics.fmean(r["per_step"]["received_bytes"] for r in per_rank),
                hook_compute_ms=1e3 * statistics.fmean(r["per_step"]["compute_s"] for r in per_rank),
                hook_comm_ms=1e3 * statistics.fmean(r["per_step"]["comm_s"] for r in per_rank),
                buckets=per_rank[0]["per_step"]["buckets"],
            )
        else:
            sent = (
                statistics.fmean(r["per_step"]["sent_bytes"] for r in per_rank)
                if "sent_bytes" in per_rank[0]["per_step"] else float(info["analytic_bytes_per_step"])
            )
            dense = 4.0 * numel
            row["buckets"] = per_rank[0]["buckets"]
            if "analytic_bytes_per_step" in info:
                row["analytic_bytes_per_step"] = info["analytic_bytes_per_step"]
        row.update(
            step_ms=1e3 * statistics.median(step_max),
            step_ms_rank0=1e3 * statistics.median(per_rank[0]["times"]),
            step_ms_all=[1e3 * t for t in step_max],
            sent_bytes=sent,
            ratio_vs_fp32=dense / sent if sent else float("inf"),
            bytes_method=info["bytes_method"],
            bucket_cap_mb=info["bucket_cap_mb"],
            final_loss_rank0=per_rank[0]["final_loss"],
        )
        rows.append(row)
    base = next((r["step_ms"] for r in rows if r["hook"] == "torch allreduce_hook" and "step_ms" in r), None)
    for r in rows:
        if "step_ms" in r and base:
            r["x_vs_allreduce"] = r["step_ms"] / base
    return rows


def _fmt_bytes(b: float) -> str:
    return "0" if b == 0 else f"{b / 1e6:.3f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'hook':36} {'step ms':>9} {'x vs AR':>8} {'bytes/step':>12} {'vs fp32':>8} {'buckets':>7} "
        f"{'hook cpu ms':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['hook']:36} FAILED: {r['error'][:200]}")
            continue
        ratio = "inf" if r["ratio_vs_fp32"] == float("inf") else f"{r['ratio_vs_fp32']:.1f}x"
        cpu = f"{r['hook_compute_ms']:.1f}" if "hook_compute_ms" in r else "-"
        buckets = "?" if r.get("buckets") is None else f"{r['buckets']:g}"
        print(
            f"{r['hook']:36} {r['step_ms']:9.1f} {r.get('x_vs_allreduce', float('nan')):7.2f}x "
            f"{_fmt_bytes(r['sent_bytes']):>12} {ratio:>8} {buckets:>7} {cpu:>11}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=None, help="hidden width (default 1024; --quick: 512)")
    ap.add_argument("--depth", type=int, default=None, help="hidden layers (default 3; --quick: 2)")
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="measured steps (default 15; --quick: 5)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 3 so PowerSGD is compressing)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small model, 5 measured steps (a smoke run)")
    ap.add_argument("--only", nargs="*", default=None, help="substrings of hook names to run (default: all)")
    ap.add_argument("--timeout", type=float, default=900.0, help="parent's total wait before killing the workers")
    ap.add_argument("--collective-timeout", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    cfg = Config(
        features=args.features,
        hidden=args.hidden or (512 if args.quick else 1024),
        depth=args.depth or (2 if args.quick else 3),
        world=args.world,
        batch=args.batch,
        steps=args.steps or (5 if args.quick else 15),
        warmup=args.warmup,
        seed=args.seed,
        collective_timeout=args.collective_timeout,
    )
    if cfg.warmup < 3:
        print(f"note: --warmup {cfg.warmup} < 3 times steps before PowerSGD / commlib start compressing")

    names = [n for n in HOOKS if not args.only or any(s.lower() in n.lower() for s in args.only)]

    from commlib import ops
    from commlib.train.models import mlp

    numel = sum(p.numel() for p in mlp(cfg.features, cfg.classes, cfg.hidden, cfg.depth, cfg.seed).parameters())
    machine = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "commlib_ops_backend": ops.backend(),
        "backend": "gloo (loopback)",
        "threads_per_rank": 1,
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if machine["loadavg_at_start"] and machine["loadavg_at_start"][0] > (os.cpu_count() or 1):
        print(f"warning: 1-min load average {machine['loadavg_at_start'][0]:.1f} > {os.cpu_count()} cores: "
              "other processes compete with the workers and inflate the step times")
    print(
        f"{cfg.world} gloo ranks x 1 thread on {machine['cpu_count']} cores; MLP {cfg.features}-"
        f"{'x'.join([str(cfg.hidden)] * cfg.depth)}-{cfg.classes} = {numel / 1e6:.2f}M params "
        f"({4 * numel / 1e6:.1f} MB fp32); batch {cfg.batch}/rank; {cfg.warmup} warm-up + {cfg.steps} timed steps; "
        f"torch {torch.__version__}, commlib ops backend {machine['commlib_ops_backend']!r}"
    )
    print(
        f"torch powerSGD_hook runs with bucket_cap_mb={POWERSGD_BUCKET_CAP_MB:g} (one bucket: with several buckets "
        "it aborts on gloo in torch 2.13); every other hook uses DDP's default buckets."
    )
    t0 = time.perf_counter()
    results, errors = launch(cfg, names, args.timeout)
    wall = time.perf_counter() - t0
    machine["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    for rank, tb in sorted(errors.items()):
        print(f"--- {'parent' if rank < 0 else f'rank {rank}'} error ---\n{tb}", file=sys.stderr)
    rows = summarise(cfg, names, results, numel)
    print()
    print_table(rows)
    print(
        "\nstep ms: median over timed steps of the slowest rank's forward+backward+SGD step; x vs AR: over torch "
        "allreduce_hook; bytes/step: payload one rank hands to collectives (torch allreduce/fp16 analytic 4/2 x numel, "
        "torch powerSGD from PowerSGDState.total_numel_after_compression x 4, commlib from CommState.stats); "
        "hook cpu ms: commlib stats compute_s per step."
    )
    print(f"total wall time {wall:.1f}s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": {**asdict(cfg), "params": numel, "quick": args.quick, "default_bucket_cap_mb": DEFAULT_BUCKET_CAP_MB,
                   "powersgd_bucket_cap_mb": POWERSGD_BUCKET_CAP_MB},
        "machine": machine,
        "wall_s": wall,
        "errors": {str(k): v for k, v in errors.items()},
        "rows": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 1 if errors or any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
