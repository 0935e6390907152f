"""One rank of the network-emulated DDP benchmark (run by ``netem_driver.py`` inside the rank's namespace).

Rendezvous is torchrun's ``env://``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
(rank 0's address on the bridge) and ``MASTER_PORT`` come from the
environment; ``GLOO_SOCKET_IFNAME`` pins gloo to the namespace's veth and
``NETEM_IFACE`` names the link whose counters are read ("" on loopback: no
counters there, other processes share ``lo``).

Steps, each rank, ``torch.set_num_threads(1)``:

1. ``calibrate`` L-GreCo's :class:`~commlib.adaptive.TimeCost` on this
   (shaped) group (its codec table timed with EControl around each option, as
   L-GreCo trains), and measure each commlib hook's local cost per element
   (its whole exchange, error feedback included, on a world of one; the
   decode of the other ranks' payloads from ``codec_seconds``), max-reduced
   over ranks so every rank decides alike;
2. per hook, the same seeded MLP, wrapped in its own DDP
   (``gradient_as_bucket_view=True``; torch's ``powerSGD_hook`` gets one
   bucket, ``bucket_cap_mb=1000``: with several buckets it aborts on gloo);
   commlib hooks whose :func:`~commlib.adaptive.payoff.compression_payoff`
   says compression does not pay on this link are built dense
   (``Identity``); L-GreCo (top-k grid under EControl, ``native_dense``: a
   bucket it sends all fp32 is one native all-reduce) gets the calibrated
   TimeCost and decides per layer, ``fp32`` among its options, once, at the
   end of the warm-up (its first re-solve; the next is pushed out of the run);
3. hooks are measured in groups (``cfg["groups"]``; each group holds the
   reference hooks again, so ratios are always taken side by side; one
   group's models are freed before the next is built: all nine 25M-parameter
   models at once took 4 GB per rank, and the OOM killer took a rank);
   ``warmup`` untimed steps per hook, then ``steps`` timed rounds: each round
   runs one step of every hook in an order shuffled from (seed, round), the
   same on every rank; a step is ``barrier → forward/backward/SGD`` (timed) →
   ``barrier``, and the link's tx/rx byte counters are read right after the
   two barriers (the second one guarantees the step's last bytes left);
4. the loss of each model on a fixed evaluation set after all its steps, and
   the hook's byte counts (commlib ``CommState.stats``; torch's PowerSGD
   ``total_numel_after_compression``) over the timed steps, written as JSON.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

POWERSGD_BUCKET_CAP_MB = 1000.0
LGRECO_DEFAULT = "topk:0.01"  # L-GreCo's grid: top-k densities 0.25%..4% and fp32, under EControl

# name -> (family, kind, kwargs)
HOOKS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "torch noop_hook (floor)": ("torch", "noop", {}),
    "torch allreduce_hook": ("torch", "allreduce", {}),
    "torch fp16_compress_hook": ("torch", "fp16", {}),
    "torch powerSGD_hook r4 (1 bucket)": ("torch", "powersgd", {"rank": 4}),
    "commlib TopK 1% + EControl": ("commlib", "topk", {}),
    "commlib QSGD 4-bit + EF14": ("commlib", "qsgd", {}),
    "commlib PowerSGD r4": ("commlib", "powersgd", {}),
    "commlib PowerSGD r4 + EF": ("commlib", "powersgd_ef", {}),
    # diagnostics (driver --diagnose-powersgd): every ordered all-reduce as one all-gather; or one DDP bucket
    "commlib PowerSGD r4 + EF, gather path only": ("commlib", "powersgd_ef", {"split_min_bytes": 1 << 40}),
    "commlib PowerSGD r4 + EF, 1 bucket": ("commlib", "powersgd_ef", {"bucket_cap_mb": POWERSGD_BUCKET_CAP_MB}),
    "commlib Sketch srht 1/20 + EF14": ("commlib", "sketch", {}),
    "commlib L-GreCo (TopK grid + EControl, TimeCost)": ("commlib", "lgreco", {}),
}


def _compressor_and_feedback(kind: str) -> tuple[Any, Any]:
    from commlib import compress, feedback

    return {
        "topk": (compress.TopK(density=0.01), feedback.EControl(eta=0.005)),
        "qsgd": (compress.QSGD(bits=4), feedback.EF14()),
        "powersgd": (compress.PowerSGD(rank=4), None),
        "powersgd_ef": (compress.PowerSGD(rank=4, error_feedback=True), None),  # its own EF, as torch's hook
        "sketch": (compress.Sketch(ratio=20.0, mode="projection"), feedback.EF14()),
    }[kind]


@dataclass
class _Run:
    name: str
    ddp_model: DDP
    opt: torch.optim.Optimizer
    counters: Callable[[], dict[str, float]]
    info: dict[str, Any]
    times: list[float] = field(default_factory=list)
    tx: list[int] = field(default_factory=list)
    rx: list[int] = field(default_factory=list)
    before: dict[str, float] = field(default_factory=dict)


def _counters_reader(iface: str) -> Callable[[], tuple[int, int]]:
    if not iface:
        return lambda: (0, 0)
    base = Path("/sys/class/net") / iface / "statistics"
    return lambda: (int((base / "tx_bytes").read_text()), int((base / "rx_bytes").read_text()))


def _data(cfg: dict[str, Any], rank: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, ...]]:
    """Gaussian classes ``x = (μ_y + σ·ε)/√(1+σ²)`` (σ = ``noise``): per-rank batches, one shared evaluation set."""
    means = torch.randn(cfg["classes"], cfg["features"], generator=torch.Generator().manual_seed(cfg["seed"] + 7))

    def draw(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, cfg["classes"], (n,), generator=gen)
        x = means[y] + cfg["noise"] * torch.randn(n, cfg["features"], generator=gen)
        return x / (1 + cfg["noise"] ** 2) ** 0.5, y

    gen = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + rank + 1)
    batches = [draw(gen, cfg["batch"]) for _ in range(cfg["warmup"] + cfg["steps"])]
    return batches, draw(torch.Generator().manual_seed(cfg["seed"] + 99), cfg["eval_size"])


def _model(cfg: dict[str, Any]) -> nn.Module:
    """commlib's seeded MLP with He-uniform hidden layers (bound √(6/fan_in)): a deep ReLU stack that learns."""
    from commlib.train.models import mlp

    model = mlp(cfg["features"], cfg["classes"], cfg["hidden"], cfg["depth"], cfg["seed"])
    with torch.no_grad():
        for layer in list(model)[:-1]:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(6**0.5)
    return model


def _max_over_ranks(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _local_exchange_seconds(kind: str, shape: tuple[int, ...], repeats: int = 2) -> float:
    """Seconds per element of one tensor's whole exchange on a world of one: feedback + encode + one decode.

    This is the codec time the hook really pays (error feedback's buffer updates included), without the wire.
    """
    from commlib.comm.exchange import ExchangeConfig, GradientExchange
    from commlib.comm.local import run_lockstep

    comp, fb = _compressor_and_feedback(kind)
    exchange = GradientExchange(comp, 0, 1, ExchangeConfig(start_step=0, min_numel=1), fb)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    best = float("inf")
    for step in range(repeats + 1):
        named = [("w", x.clone())]
        start = time.perf_counter()
        run_lockstep([exchange.protocol(named, step)])
        if step:  # the first step allocates the feedback buffers
            best = min(best, time.perf_counter() - start)
    return best / x.numel()


def _calibrate(cfg: dict[str, Any], shapes: list[tuple[int, ...]]) -> tuple[Any, dict[str, Any]]:
    """TimeCost on this group (with L-GreCo's codec table) and each commlib compressor's payoff verdict."""
    from commlib.adaptive import calibrate, default_grid, measure_codec_times
    from commlib.adaptive.payoff import codec_seconds, compression_payoff

    t0 = time.perf_counter()
    sizes = tuple(cfg["calibrate_sizes"])
    # casts get no codec time: their local reduction is part of the calibrated all-reduce time
    options = [o for o in default_grid(LGRECO_DEFAULT) if not o.is_cast]
    timing_shape = max((s for s in shapes if len(s) == 2), key=lambda s: s[0] * s[1])
    from commlib import feedback

    # L-GreCo runs under EControl: its message/commit passes are part of each compressed option's local work
    codec = measure_codec_times(options, shape=timing_shape, repeats=2, feedback=feedback.EControl(eta=0.005),
                                native_dense=True)  # L-GreCo's exchange runs with native_dense
    keys = sorted(codec)
    flat = _max_over_ranks([v for k in keys for v in codec[k]])
    codec = {k: (flat[2 * i], flat[2 * i + 1]) for i, k in enumerate(keys)}
    cost = calibrate(sizes=sizes, repeats=cfg["calibrate_repeats"], codec=codec)
    verdicts: dict[str, Any] = {}
    for kind in ("topk", "qsgd", "powersgd", "powersgd_ef", "sketch"):
        comp, _ = _compressor_and_feedback(kind)
        _, dec = codec_seconds(comp, timing_shape, repeats=2)
        local = _local_exchange_seconds(kind, timing_shape)
        enc, dec = _max_over_ranks([max(local - dec, 0.0), dec])
        pay = compression_payoff(comp, shapes, cost, dist.get_world_size(), (enc, dec))
        verdicts[kind] = {"pays": pay.pays, "dense_s": pay.dense_s, "compressed_s": pay.compressed_s,
                          "codec_s_per_elem": [enc, dec]}
    info = {"seconds": time.perf_counter() - t0, "latency": cost.latency,
            "seconds_per_byte": cost.seconds_per_byte, "payoff": verdicts}
    return cost, info


def _setup(name: str, cfg: dict[str, Any], cost: Any, calib: dict[str, Any]) -> _Run:
    family, kind, kwargs = HOOKS[name]
    model = _model(cfg)
    info: dict[str, Any] = {"bucket_cap_mb": 25.0}
    if family == "torch":
        from torch.distributed.algorithms.ddp_comm_hooks import debugging_hooks, default_hooks, powerSGD_hook

        if kind == "powersgd":
            info["bucket_cap_mb"] = POWERSGD_BUCKET_CAP_MB
            ddp_model = DDP(model, bucket_cap_mb=POWERSGD_BUCKET_CAP_MB, gradient_as_bucket_view=True)
            psgd = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=kwargs["rank"],
                                               start_powerSGD_iter=cfg["torch_powersgd_start"], random_seed=cfg["seed"])
            ddp_model.register_comm_hook(psgd, powerSGD_hook.powerSGD_hook)
            counters = lambda: {"payload_bytes": 4.0 * psgd.total_numel_after_compression}  # noqa: E731
        else:
            ddp_model = DDP(model, gradient_as_bucket_view=True)
            hook = {"allreduce": default_hooks.allreduce_hook, "fp16": default_hooks.fp16_compress_hook,
                    "noop": debugging_hooks.noop_hook}[kind]
            ddp_model.register_comm_hook(None, hook)
            counters = lambda: {}  # noqa: E731
    else:
        from commlib import adaptive, compress, ddp, feedback

        info["bucket_cap_mb"] = kwargs.get("bucket_cap_mb", cfg["commlib_bucket_mb"])
        info["split_min_bytes"] = kwargs.get("split_min_bytes")
        ddp_model = DDP(model, bucket_cap_mb=info["bucket_cap_mb"], gradient_as_bucket_view=True)
        if kind == "lgreco":
            # Solve once at τ = period (in the warm-up), then hold that decision (``once=True``). (The paper
            # re-solves every few hundred steps; re-solving every 3 would time the solver, not the hook.)
            lgreco_cost = copy.deepcopy(cost)
            lgreco_cost.native_dense = True  # fp32 priced as the native all-reduce its exchange then uses
            policy = adaptive.LGreCo(period=cfg["lgreco_period"], window=cfg["lgreco_window"],
                                     default_option=LGRECO_DEFAULT, cost_model=lgreco_cost,
                                     world_size=dist.get_world_size(), once=True)
            # native_dense: a bucket whose layers L-GreCo all sends fp32 is one in-place native all-reduce
            state = ddp.CommState(ddp_model, feedback=feedback.EControl(eta=0.005), policy=policy, seed=cfg["seed"],
                                  start_step=cfg["start_step"],
                                  feedback_warm_start=cfg.get("feedback_warm_start", False), native_dense=True)
        else:
            comp, fb = _compressor_and_feedback(kind)
            pays = calib["payoff"][kind]["pays"] or not cfg["payoff_rule"]
            info["runs_dense_by_payoff_rule"] = not pays
            if not pays:
                comp, fb = compress.Identity(), None
            state = ddp.CommState(ddp_model, compressor=comp, feedback=fb, seed=cfg["seed"],
                                  start_step=cfg["start_step"],
                                  feedback_warm_start=cfg.get("feedback_warm_start", False))
        ddp_model.register_comm_hook(state, ddp.hook)

        def counters() -> dict[str, float]:
            total = state.stats.as_dict()["total"]
            keys = ("sent_bytes", "received_bytes", "dense_fp32_bytes", "compute_s", "comm_s", "steps", "buckets")
            return {k: float(total[k]) for k in keys}

        info["policy"] = lambda: state.policy.option_counts() if state.policy is not None else None
    return _Run(name, ddp_model, torch.optim.SGD(model.parameters(), lr=cfg["lr"]), counters, info)


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor, read: Callable[[], tuple[int, int]]) -> None:
    """One timed step; a hook with ``split_min_bytes`` runs it with the driver's split threshold set so."""
    from commlib.comm import torch_driver

    default_split = torch_driver.SPLIT_MIN_BYTES
    torch_driver.SPLIT_MIN_BYTES = run.info.get("split_min_bytes") or default_split
    try:
        _timed_step(run, x, y, read)
    finally:
        torch_driver.SPLIT_MIN_BYTES = default_split


def _timed_step(run: _Run, x: torch.Tensor, y: torch.Tensor, read: Callable[[], tuple[int, int]]) -> None:
    dist.barrier()
    tx0, rx0 = read()
    t0 = time.perf_counter()
    run.opt.zero_grad(set_to_none=False)
    F.cross_entropy(run.ddp_model(x), y).backward()
    run.opt.step()
    run.times.append(time.perf_counter() - t0)
    dist.barrier()
    tx1, rx1 = read()
    run.tx.append(tx1 - tx0)
    run.rx.append(rx1 - rx0)


def _measure_group(names: list[str], cfg: dict[str, Any], cost: Any, calib: dict[str, Any],
                   batches: list[tuple[torch.Tensor, torch.Tensor]], x_eval: torch.Tensor, y_eval: torch.Tensor,
                   read: Callable[[], tuple[int, int]], log: Callable[[str], None]) -> dict[str, Any]:
    """Steps 2–4 of the module docstring for the hooks ``names``, side by side; their results by name."""
    runs = []
    for name in names:
        run = _setup(name, cfg, cost, calib)
        for x, y in batches[: cfg["warmup"]]:
            _step(run, x, y, read)
        run.times.clear()
        run.tx.clear()
        run.rx.clear()
        run.before = run.counters()
        runs.append(run)
        log(f"{name}: built + {cfg['warmup']} warm-up steps")
    for i in range(cfg["steps"]):
        order = list(runs)
        random.Random(cfg["seed"] * 1_000_003 + i).shuffle(order)
        x, y = batches[cfg["warmup"] + i]
        for run in order:
            _step(run, x, y, read)
        log(f"round {i + 1}/{cfg['steps']}")
    out = {}
    for run in runs:
        after = run.counters()
        with torch.no_grad():
            loss = float(F.cross_entropy(run.ddp_model.module(x_eval), y_eval))
        policy = run.info.pop("policy", None)
        out[run.name] = {
            "times": run.times, "tx": run.tx, "rx": run.rx, "eval_loss": loss,
            "per_step": {k: (after[k] - run.before.get(k, 0.0)) / cfg["steps"] for k in after},
            "info": {**run.info, "policy_option_counts": policy() if policy else None},
        }
    return out


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    read = _counters_reader(os.environ.get("NETEM_IFACE", ""))
    result: dict[str, Any] = {"rank": rank, "groups": [], "log": []}

    def log(msg: str) -> None:
        result["log"].append(f"[{time.perf_counter() - t_start:6.1f}s] {msg}")
        if rank == 0:
            print(f"    rank0 {result['log'][-1]}", flush=True)

    t_start = time.perf_counter()
    try:
        dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=cfg["collective_timeout"]))
        batches, (x_eval, y_eval) = _data(cfg, rank)
        shapes = [tuple(p.shape) for p in _model(cfg).parameters()]
        cost, calib = _calibrate(cfg, shapes)
        result["calibration"] = calib
        log(f"calibrated in {calib['seconds']:.1f}s: payoff "
            + ", ".join(f"{k}={'pays' if v['pays'] else 'dense'}" for k, v in calib["payoff"].items()))
        for group, names in enumerate(cfg["groups"]):
            result["groups"].append(_measure_group(names, cfg, cost, calib, batches, x_eval, y_eval, read, log))
            log(f"group {group + 1}/{len(cfg['groups'])} done")
            gc.collect()  # the group's models go before the next group's are built
        import resource

        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except BaseException:  # noqa: BLE001 - reported to the driver with what was measured
        result["error"] = traceback.format_exc()
    finally:
        out.write_text(json.dumps(result, default=str))
        if dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(1 if "error" in result else 0)


if __name__ == "__main__":
    main()
