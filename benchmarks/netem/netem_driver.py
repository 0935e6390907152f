"""Network-emulated DDP benchmark: every hook × every link rate, real gloo training across namespaces.

For each link rate (default 100 Mbit/s, 1 Gbit/s, 10 Gbit/s and unshaped) the
driver builds the emulated network of :mod:`netem_harness` (one namespace per
worker, veths to a bridge namespace, ``tbf`` on both ends of every link),
starts ``--world`` workers (``netem_worker.py``) with ``ip netns exec``,
torchrun-style ``env://`` rendezvous at rank 0's bridge address, waits at most
``--timeout`` seconds (then kills them), and tears the network down in a
``finally``. Without root it says so and runs once, unshaped, on loopback
(no interface counters there).

Per hook and rate it reports (medians over the timed steps of the slowest
rank's step; bytes averaged over ranks and steps):

* step time, and its ratio to torch ``allreduce_hook``, to ``noop_hook`` (the
  no-communication floor) and to torch ``powerSGD_hook``;
* the evaluation loss after ``warmup + steps`` steps, and its relative gap to
  ``allreduce_hook``'s;
* bytes per step: the link's tx counter, against the hook's own account of
  its wire bytes (commlib: ``CommState.stats.received_bytes``, the ring model
  ``2(n−1)/n·P`` for all-reduce and ``(n−1)·P`` for all-gather; a rank sends
  what it receives; torch: the same ring model over the payload), and their
  agreement in percent (headers and TCP ACKs make the counter larger).

Writes ``benchmarks/results/netem.json`` (``netem_quick.json`` with
``--quick``), a PNG of step time vs link rate per hook and the tables as
markdown, after every rate (a run cut short keeps the rates it finished).

Usage (root)::

    .venv/bin/python benchmarks/netem/netem_driver.py --quick
    .venv/bin/python benchmarks/netem/netem_driver.py --rates 1000,10000
    .venv/bin/python benchmarks/netem/netem_driver.py --rates 1000 --only noop allreduce_hook powersgd
    .venv/bin/python benchmarks/netem/netem_driver.py --rates 1000 --diagnose-powersgd --no-payoff-rule
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from netem_harness import LinkShape, Network, can_emulate, emulated_network, start_ranks, wait_or_kill  # noqa: E402
from netem_worker import HOOKS  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
WORKER = Path(__file__).resolve().parent / "netem_worker.py"
AR, NOOP, TORCH_PSGD = "torch allreduce_hook", "torch noop_hook (floor)", "torch powerSGD_hook r4 (1 bucket)"


# Hooks measured side by side, group after group (all nine 25M-parameter models at once need 4 GB per rank);
# every group repeats the references, so each ratio is taken within one group.
REFERENCES = [NOOP, AR, TORCH_PSGD]
GROUPS = [
    ["commlib TopK 1% + EControl", "commlib QSGD 4-bit + EF14", "commlib PowerSGD r4", "commlib PowerSGD r4 + EF"],
    ["torch fp16_compress_hook", "commlib Sketch srht 1/20 + EF14", "commlib L-GreCo (TopK grid + EControl, TimeCost)"],
]


# --diagnose-powersgd: where commlib PowerSGD's time goes (split vs gather path of the ordered all-reduce, buckets)
POWERSGD_DIAGNOSTICS = [[NOOP, TORCH_PSGD, "commlib PowerSGD r4 + EF", "commlib PowerSGD r4 + EF, gather path only",
                         "commlib PowerSGD r4 + EF, 1 bucket"]]


def _groups(only: list[str] | None) -> list[list[str]]:
    """The hook groups, each with the references first, keeping hooks matching ``only`` (substrings)."""
    def keep(name: str) -> bool:
        return not only or any(s.lower() in name.lower() for s in only)

    groups = [[n for n in REFERENCES + g if keep(n)] for g in GROUPS]
    return [g for g in groups if any(n not in REFERENCES for n in g)] or [g for g in groups[:1] if g]


def _parse_rates(text: str) -> list[float | None]:
    rates: list[float | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("unshaped", "none", "0"):
            rates.append(None)
            continue
        try:
            rates.append(float(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a rate is Mbit/s or 'unshaped', got {part!r}") from None
    return rates


def launch(cfg: dict[str, Any], net: Network | None, timeout: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Start the workers (inside ``net``'s namespaces, or on loopback), wait, kill on timeout; their results."""
    world = cfg["world"]
    tmp = Path(tempfile.mkdtemp(prefix="netem-"))
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    procs = start_ranks(world, net, lambda rank: [str(WORKER), str(tmp / "cfg.json"), str(tmp / f"rank{rank}.json")],
                        # fewer glibc arenas: less fragmentation with many 100 MB models
                        extra_env={"MALLOC_ARENA_MAX": "2"})
    errors = wait_or_kill(procs, timeout)
    results = []
    for rank in range(world):
        path = tmp / f"rank{rank}.json"
        if not path.exists():
            errors.append(f"rank {rank} wrote no result (exit code {procs[rank].returncode})")
            continue
        res = json.loads(path.read_text())
        if "error" in res:
            errors.append(f"rank {rank}: {res['error']}")
        results.append(res)
    return results, errors


def _expected_wire(name: str, per_step: dict[str, float], numel: int, world: int) -> tuple[float, str]:
    """Bytes one rank should put on the link per step by the hook's own account (ring model)."""
    ring = 2 * (world - 1) / world
    kind = HOOKS[name][1]
    if HOOKS[name][0] == "commlib":
        return per_step["received_bytes"], "commlib CommState.stats received_bytes (ring model)"
    if kind == "powersgd":
        return ring * per_step["payload_bytes"], "2(n-1)/n x 4 x PowerSGDState.total_numel_after_compression"
    per_elem = {"allreduce": 4, "fp16": 2, "noop": 0}[kind]
    return ring * per_elem * numel, f"2(n-1)/n x {per_elem} x numel"


def summarise(cfg: dict[str, Any], results: list[dict[str, Any]], numel: int, counters: bool) -> list[dict[str, Any]]:
    """One row per hook and group (ratios within the group); interface columns None without counters."""
    rows = []
    for group, names in enumerate(cfg["groups"]):
        per_rank = [r["groups"][group] for r in results if len(r.get("groups", [])) > group]
        group_rows = _summarise_group(cfg, names, per_rank, numel, counters)
        rows += [{**row, "group": group} for row in group_rows]
    return rows


def _summarise_group(cfg: dict[str, Any], names: list[str], results: list[dict[str, Any]], numel: int,
                     counters: bool) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        per_rank = [r[name] for r in results if name in r]
        if len(per_rank) < cfg["world"]:
            rows.append({"hook": name, "error": "not every rank reported this hook"})
            continue
        step_max = [max(ts) for ts in zip(*(r["times"] for r in per_rank), strict=True)]
        tx = statistics.fmean(statistics.fmean(r["tx"]) for r in per_rank) if counters else None
        rx = statistics.fmean(statistics.fmean(r["rx"]) for r in per_rank) if counters else None
        per_step = {k: statistics.fmean(r["per_step"][k] for r in per_rank) for k in per_rank[0]["per_step"]}
        expected, method = _expected_wire(name, per_step, numel, cfg["world"])
        row = {
            "hook": name,
            "step_s": statistics.median(step_max),
            "step_s_all": step_max,
            "eval_loss": per_rank[0]["eval_loss"],
            "eval_loss_ranks_agree": len({r["eval_loss"] for r in per_rank}) == 1,
            "iface_tx_bytes": tx,
            "iface_rx_bytes": rx,
            "hook_wire_bytes": expected,
            "hook_wire_method": method,
            "payload_sent_bytes": per_step.get("sent_bytes"),
            "iface_vs_hook_pct": 100 * (tx / expected - 1) if tx is not None and expected > 0 else None,
            "info": per_rank[0]["info"],
            "hook_per_step": per_step,
        }
        rows.append(row)
    by = {r["hook"]: r for r in rows if "step_s" in r}
    for r in rows:
        if "step_s" not in r:
            continue
        for key, ref in (("x_vs_allreduce", AR), ("x_vs_noop", NOOP), ("x_vs_torch_powersgd", TORCH_PSGD)):
            r[key] = r["step_s"] / by[ref]["step_s"] if ref in by else None
        r["loss_gap_vs_allreduce_pct"] = (100 * (r["eval_loss"] / by[AR]["eval_loss"] - 1)) if AR in by else None
    return rows


def _mostly_fp32(row: dict[str, Any]) -> bool:
    """L-GreCo chose ``fp32`` for most of its layers (its time model says compression does not pay)."""
    counts = row["info"].get("policy_option_counts") or {}
    return bool(counts) and counts.get("fp32", 0) > sum(counts.values()) / 2


def check_targets(label: str, rows: list[dict[str, Any]], rate: float | None) -> dict[str, Any]:
    """The issue's targets for this rate (1 Gbit/s: the best commlib hook; 10 Gbit/s: dense fallbacks)."""
    ok_rows = [r for r in rows if "step_s" in r]
    commlib = [r for r in ok_rows if r["hook"].startswith("commlib")]
    out: dict[str, Any] = {"rate": label}
    if rate == 1000 and commlib:
        good = [r for r in commlib if r["loss_gap_vs_allreduce_pct"] is not None
                and abs(r["loss_gap_vs_allreduce_pct"]) <= 2.0]
        best = min(good or commlib, key=lambda r: r["step_s"])
        out["best_commlib_hook"] = best["hook"]
        out["loss_within_2pct"] = bool(good)
        out["step_le_third_of_allreduce"] = best["x_vs_allreduce"] is not None and best["x_vs_allreduce"] <= 1 / 3
        out["step_le_torch_powersgd"] = best["x_vs_torch_powersgd"] is not None and best["x_vs_torch_powersgd"] <= 1
        out["step_within_1.5x_noop"] = best["x_vs_noop"] is not None and best["x_vs_noop"] <= 1.5
    if rate == 10000:
        dense = [r for r in commlib if r["info"].get("runs_dense_by_payoff_rule") or _mostly_fp32(r)]
        out["dense_by_cost_model"] = [r["hook"] for r in dense]
        out["dense_within_5pct_of_allreduce"] = {r["hook"]: r["x_vs_allreduce"] <= 1.05 for r in dense
                                                 if r["x_vs_allreduce"] is not None}
    return out


def _label(row: dict[str, Any]) -> str:
    """``[group] hook``: the group whose references the row's ratios use."""
    return f"[{row.get('group', 0) + 1}] {row['hook']}"


def print_table(label: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n== {label} ==")
    head = (f"{'hook':44} {'step s':>7} {'xAR':>6} {'xnoop':>6} {'xtPSGD':>6} {'loss':>7} {'dloss%':>7} "
            f"{'iface MB':>9} {'hook MB':>9} {'agree%':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{_label(r)[:44]:44} FAILED: {r['error'][:120]}")
            continue
        agree = "-" if r["iface_vs_hook_pct"] is None else f"{r['iface_vs_hook_pct']:+.1f}"

        def f(v: float | None, spec: str = ".2f") -> str:
            return "-" if v is None else format(v, spec)

        print(f"{_label(r)[:44]:44} {r['step_s']:7.3f} {f(r['x_vs_allreduce']):>6} {f(r['x_vs_noop']):>6} "
              f"{f(r['x_vs_torch_powersgd']):>6} {r['eval_loss']:7.4f} {f(r['loss_gap_vs_allreduce_pct'], '+.2f'):>7} "
              f"{f(r['iface_tx_bytes'] and r['iface_tx_bytes'] / 1e6, '.3f'):>9} {r['hook_wire_bytes'] / 1e6:9.3f} "
              f"{agree:>7}")


def markdown(runs: list[dict[str, Any]]) -> str:
    """The results as one markdown table per link rate (for docs/netem.md)."""
    lines = []
    for run in runs:
        lines += [f"**{run['label']}** ({run['steps']} timed steps)", "",
                  "| hook | step s | × allreduce | × noop | × torch PowerSGD | eval loss | Δ loss vs allreduce "
                  "| iface tx MB/step | hook wire MB/step | iface vs hook |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            if "error" in r:
                lines.append(f"| {_label(r)} | failed: {r['error'][:80]} |||||||||")
                continue

            def f(v: float | None, spec: str = ".2f") -> str:
                return "–" if v is None else format(v, spec)

            def pct(v: float | None, spec: str) -> str:
                return "–" if v is None else format(v, spec) + "%"

            dense = " (dense: cost model)" if r["info"].get("runs_dense_by_payoff_rule") else ""
            lines.append(
                f"| {_label(r)}{dense} | {r['step_s']:.3f} | {f(r['x_vs_allreduce'])} | {f(r['x_vs_noop'])} | "
                f"{f(r['x_vs_torch_powersgd'])} | {r['eval_loss']:.4f} | "
                f"{pct(r['loss_gap_vs_allreduce_pct'], '+.2f')} | "
                f"{f(r['iface_tx_bytes'] and r['iface_tx_bytes'] / 1e6, '.2f')} | {r['hook_wire_bytes'] / 1e6:.2f} | "
                f"{pct(r['iface_vs_hook_pct'], '+.1f')} |")
        lines.append("")
    return "\n".join(lines)


def plot(path: Path, runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda run: float("inf") if run["rate_mbit"] is None else run["rate_mbit"])
    labels = [run["label"] for run in runs]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name in HOOKS:
        ys = [next((r["step_s"] for r in run["rows"] if r["hook"] == name and "step_s" in r), float("nan"))
              for run in runs]
        if not all(y != y for y in ys):
            style = "--" if name.startswith("torch") else "-"
            ax.plot(range(len(runs)), ys, style, marker="o", label=name)
    ax.set_xticks(range(len(runs)), labels)
    ax.set_yscale("log")
    ax.set_xlabel("link rate (tbf on every worker link, both directions)")
    ax.set_ylabel("step time, s (median of slowest rank)")
    ax.set_title("DDP step time vs link rate per communication hook")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 workers, small MLP, 1 Gbit/s, 3 steps")
    ap.add_argument("--world", type=int, default=None, help="workers (default 4; --quick 2)")
    ap.add_argument("--rates", type=_parse_rates, default=None,
                    help="Mbit/s list or 'unshaped' (default 1000,10000,100,unshaped; --quick 1000)")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per link (needs sch_netem)")
    ap.add_argument("--features", type=int, default=None, help="input width (default 2048; --quick 256)")
    ap.add_argument("--hidden", type=int, default=None, help="hidden width (default 2048; --quick 256)")
    ap.add_argument("--depth", type=int, default=None, help="hidden layers (default 6: 25.2M params; --quick 2)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per hook (default 10; --quick 3)")
    ap.add_argument("--slow-steps", type=int, default=None, help="timed steps below 500 Mbit/s (default steps/2)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (dense starts + L-GreCo's first solve)")
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--noise", type=float, default=3.0, help="class noise σ of the synthetic data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="substrings of hook names (default: all)")
    ap.add_argument("--commlib-bucket-mb", type=float, default=25.0, help="DDP bucket_cap_mb of commlib's hooks")
    ap.add_argument("--feedback-warm-start", action="store_true",
                    help="error feedback starts from the last dense step's gradients (CommState feedback_warm_start)")
    ap.add_argument("--no-payoff-rule", action="store_true", help="always compress (no dense fallback)")
    ap.add_argument("--diagnose-powersgd", action="store_true",
                    help="instead of the hook groups: commlib PowerSGD r4 + EF as is, with every ordered all-reduce "
                         "as one all-gather, and with one DDP bucket (beside noop and torch's PowerSGD)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per rate before the workers are killed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    quick = args.quick
    steps = args.steps or (3 if quick else 10)
    cfg_base = {
        "world": args.world or (2 if quick else 4),
        "features": args.features or (256 if quick else 2048),
        "hidden": args.hidden or (256 if quick else 2048),
        "depth": args.depth or (2 if quick else 6),
        "classes": 10, "batch": args.batch, "warmup": args.warmup, "seed": args.seed,
        "lr": args.lr, "noise": args.noise,
        "eval_size": 512, "start_step": 1, "torch_powersgd_start": 2,
        "lgreco_period": 2, "lgreco_window": 1,
        "calibrate_sizes": [1 << 12, 1 << 16, 1 << 20] if quick else [1 << 14, 1 << 18, 1 << 21],
        "calibrate_repeats": 3, "collective_timeout": 300.0, "payoff_rule": not args.no_payoff_rule,
        "commlib_bucket_mb": args.commlib_bucket_mb, "feedback_warm_start": args.feedback_warm_start,
        "groups": POWERSGD_DIAGNOSTICS if args.diagnose_powersgd else _groups(args.only),
    }
    if args.warmup < cfg_base["start_step"] + cfg_base["lgreco_period"]:
        print(f"note: --warmup {args.warmup} < 3: L-GreCo's first decision falls into the timed steps")
    rates = args.rates or ([1000.0] if quick else [1000.0, 10000.0, 100.0, None])
    root, why = can_emulate()
    if not root:
        print(f"NOTE: {why}: running unshaped on loopback instead (no interface counters)")
        rates = [None]
    feat, hid, depth = cfg_base["features"], cfg_base["hidden"], cfg_base["depth"]
    numel = feat * hid + hid + (depth - 1) * (hid * hid + hid) + hid * 10 + 10
    print(f"{cfg_base['world']} workers x 1 thread, gloo; MLP {feat}-{'x'.join([str(hid)] * depth)}-10 = "
          f"{numel / 1e6:.2f}M params ({4 * numel / 1e6:.1f} MB fp32); batch {args.batch}/rank; "
          f"{args.warmup} warm-up + timed steps per hook, interleaved; torch powerSGD_hook with "
          f"bucket_cap_mb=1000 (one bucket: with several it aborts on gloo)")
    out = args.out or RESULTS / ("netem_quick.json" if quick else "netem.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    payload = {
        "config": {**cfg_base, "params": numel, "rates_mbit": rates, "delay_ms": args.delay_ms, "quick": quick,
                   "emulated": root, "shaping": "tbf on both veth ends (egress), burst max(64 KiB, 4 ms), 50 ms queue",
                   "powersgd_bucket_cap_mb": 1000.0},
        "machine": {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_start": os.getloadavg()},
        "runs": runs,
    }
    t_all = time.perf_counter()
    for rate in rates:
        shape = LinkShape(rate, args.delay_ms)
        slow = rate is not None and rate < 500
        cfg = {**cfg_base, "steps": (args.slow_steps or max(3, steps // 2)) if slow else steps}
        label = shape.label if root else "loopback (not root)"
        print(f"\n--- {label}: {cfg['steps']} timed steps ---", flush=True)
        t0 = time.perf_counter()
        if root:
            with emulated_network(cfg["world"], shape) as net:
                results, errors = launch(cfg, net, args.timeout)
        else:
            results, errors = launch(cfg, None, args.timeout)
        for e in errors:
            print(f"ERROR {e}", file=sys.stderr)
        rows = summarise(cfg, results, numel, counters=root)
        print_table(label, rows)
        targets = check_targets(label, rows, rate)
        print("targets:", json.dumps(targets))
        calib = results[0].get("calibration") if results else None
        runs.append({"label": label, "rate_mbit": rate, "delay_ms": args.delay_ms, "steps": cfg["steps"],
                     "wall_s": time.perf_counter() - t0, "errors": errors, "rows": rows, "targets": targets,
                     "calibration_rank0": calib,
                     "peak_rss_mb_max": max((r.get("peak_rss_mb", 0.0) for r in results), default=None)})
        payload["wall_s"] = time.perf_counter() - t_all
        payload["machine"]["loadavg_end"] = os.getloadavg()
        out.write_text(json.dumps(payload, indent=2, default=str) + "\n")  # after every rate: partial runs count
        plot(out.with_suffix(".png"), runs)
        out.with_suffix(".md").write_text(markdown(runs))
        print(f"wrote {out} and {out.with_suffix('.png')} ({payload['wall_s']:.0f}s so far)", flush=True)
    return 1 if any(run["errors"] for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
