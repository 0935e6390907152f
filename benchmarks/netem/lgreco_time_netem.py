"""Is L-GreCo's time model honest? Predicted vs measured exchange seconds on a shaped link (netem harness).

For every world size (``--worlds``, default 2 and 4 ranks) and link rate (``--rates``, default
100 Mbit/s and 1 Gbit/s) the driver builds the emulated network of :mod:`netem_harness` (one
namespace per rank, veths to a bridge, ``tbf`` on both ends of every link) and starts the ranks in
it (``--worker`` mode of this file, gloo, one intra-op thread each). Without root it says so and
runs once per world size, unshaped, on loopback. Each rank:

1. builds the gradients of an MLP (``1024 → 3 × 1024 → 10`` — 3.16 M parameters, one 12.6 MB
   bucket; ``--quick``: 512 wide) on its own Gaussian batch;
2. calibrates a :class:`~commlib.adaptive.TimeCost` on the shaped group
   (:func:`~commlib.adaptive.calibrate`: native all-reduce, all-gather, all-to-all and the split
   ordered all-reduce of 256 KiB … 8 MiB — below, ``tbf``'s 64 KiB burst flatters the link —,
   medians, max over ranks, least squares ``α + β·bytes``);
3. times every option's local work twice (:func:`~commlib.adaptive.measure_codec_times`,
   ``width × width`` Gaussian tensors): **under contention** — every rank timing at once, as they
   encode at once in training, max over ranks — and **alone** — rank 0 only, the others idle at a
   barrier (the older way);
4. L-GreCo (``once=True``: one solve, then hold) observes rank 0's gradients, solves with the
   contention-timed ``TimeCost`` over a mixed grid and broadcasts its decision;
5. measures one bucket exchange (``GradientExchange`` + torch driver, barrier before each) of every
   configuration — L-GreCo's choice, uniform top-k / QSGD / PowerSGD / fp16, all-fp32 through the
   policy's ordered dense all-reduce, and the plain ``Identity`` native all-reduce — interleaved, in
   an order shuffled per repeat (the same on every rank), one untimed warm-up round; each repeat's
   time is the slowest rank's, the figure their median. Two more items join each round's shuffled
   order: a one-repeat :func:`~commlib.adaptive.calibrate` and a one-repeat contention codec table,
   so the model is re-measured on the same stretch of a noisy machine as the exchanges. Each
   exchange's collective rounds are also timed from the protocol's side (a
   :class:`~commlib.comm.traffic.Meter` with a clock, as the DDP runtime times them for
   ``refine_time``), each round's seconds reduced over ranks: the maximum (the round's time, as
   ``refine_time`` takes it) and the minimum (the last rank to issue, which waits for the transfer
   alone, not for the others' local work). The exchange's time less its rounds' maxima is its
   local work, set next to the up-front model's codec and dense-path seconds;
6. predicts each with :func:`~commlib.adaptive.cost.exchange_seconds` (fused collectives, the torch
   driver's split of large ordered all-reduces, codec times, the dense path's own work) under four
   models: **in-run** (medians of the per-round calibrations and codec tables), **up-front** (what
   L-GreCo decided with), **codec timed alone** (up-front link fit, rank 0's solo codec table) and
   **refined** — the up-front model refit from measured exchange rounds by the library's own
   :meth:`LGreCo.refine <commlib.adaptive.LGreCo.refine>` (``refine_time``: each round's slowest
   rank, fitted jointly by :meth:`TimeCost.refit`; the exchanges' own work — their time less
   their rounds' maxima — over the model's local seconds, :meth:`TimeCost.rescale_local`), with
   ``refine_momentum=1`` (the fit of the rounds themselves: what repeated refits on steady rounds
   converge to; the library's default 0.1 moves a tenth of the way per window). No circularity:
   the refit sees only the rounds of the **first half** of the repeats, and its predictions are
   compared with the median of the **second half** (the other models with the median of all
   repeats). Two variants: **own rounds** (each configuration refit from its own rounds, as a
   ``refine_time`` policy sees only the rounds of the configuration it runs) and **all rounds**
   (one model refit from every configuration's rounds: does one ``α + β·bytes`` per collective
   explain them all?). The codec tables stay the up-front ones, scaled as a whole by the first
   half's own work over the up-front model's prediction of it.
   The ``Identity`` hook is one native all-reduce of every tensor plus its cast (priced as fp16's
   conversion, an upper bound of its in-place division).

The exchange is the communication part of a DDP step (the whole model is one bucket). Writes
``benchmarks/results/lgreco_time_netem{_quick}.json`` and ``.md`` (``--append``: keep the other
(ranks, link) cells of the JSON; the .md is rewritten from it). Run as root::

    .venv/bin/python benchmarks/netem/lgreco_time_netem.py [--quick] [--rates 100,1000] [--worlds 2,4]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parents[1] / "results"
OPTIONS = ["topk:0.0025", "topk:0.01", "topk:0.04", "qsgd:4x128", "qsgd:8x128", "powersgd:4", "powersgd:16",
           "fp16", "fp32"]
DEFAULT = "topk:0.01"
UNIFORM = ["topk:0.01", "qsgd:4x128", "powersgd:4", "fp16", "fp32"]
NATIVE = "Identity (native all-reduce)"


def _shapes(width: int) -> dict[str, tuple[int, ...]]:
    """The MLP's parameters, by name: ``width → 3 × width → 10``, weights then biases."""
    dims = [width, width, width, width, 10]
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        shapes[f"l{i}.weight"] = (fan_out, fan_in)
        shapes[f"l{i}.bias"] = (fan_out,)
    return shapes


def _gradients(width: int, rank: int) -> list[tuple[str, Any]]:
    """Gradients of the MLP (weights from seed 0, shared) on rank ``rank``'s Gaussian 10-class batch."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = [nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width),
              nn.ReLU(), nn.Linear(width, 10)]
    model = nn.Sequential(*layers)
    gen = torch.Generator().manual_seed(1 + rank)
    centers = torch.randn(10, width, generator=torch.Generator().manual_seed(7))
    labels = torch.randint(0, 10, (64,), generator=gen)
    x = (centers[labels] + 3 * torch.randn(64, width, generator=gen)) / 10**0.5
    nn.functional.cross_entropy(model(x), labels).backward()
    linear = [m for m in model if isinstance(m, nn.Linear)]
    named = [(f"l{i}.weight", m.weight.grad.clone()) for i, m in enumerate(linear)]
    return named + [(f"l{i}.bias", m.bias.grad.clone()) for i, m in enumerate(linear)]


def _slowest(times: list[float]) -> list[float]:
    """Per repeat, the slowest rank's seconds."""
    import torch
    import torch.distributed as dist

    worst = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return worst.tolist()


def _solo_codec(options: list, shape: tuple[int, int], repeats: int) -> dict[str, tuple[float, float]]:
    """Codec times measured by rank 0 alone (the others wait at a barrier), broadcast to every rank."""
    import torch.distributed as dist

    from commlib.adaptive import measure_codec_times

    box = [measure_codec_times(options, shape=shape, repeats=repeats) if dist.get_rank() == 0 else None]
    dist.barrier()
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _in_run_model(models: list, codecs: list[dict[str, tuple[float, float]]]):
    """One TimeCost from the per-round calibrations and codec tables: the median of every parameter."""
    from commlib.adaptive import TimeCost

    def med(values):
        return statistics.median(values)

    kinds = models[0].latency
    return TimeCost(latency={k: med([m.latency[k] for m in models]) for k in kinds},
                    seconds_per_byte={k: med([m.seconds_per_byte[k] for m in models]) for k in kinds},
                    codec={o: (med([c[o][0] for c in codecs]), med([c[o][1] for c in codecs])) for o in codecs[0]})


def _reduced_rounds(rounds: dict[str, list[tuple[tuple, list[float]]]], op) -> dict[str, list[list[float]]]:
    """Per configuration and timed repeat (the warm-up dropped), each round's seconds reduced over ranks by ``op``.

    Every rank ran the same collectives in the same order, so one all-reduce of the concatenated
    seconds does it. ``MAX``: the rank that issued first and waited longest — a round ends when its
    slowest rank's part arrives, so this is the round's time (what ``refine_time`` feeds the refit).
    ``MIN``: the last rank to issue, which waits for the transfer alone, not for the others' local work.
    """
    import torch
    import torch.distributed as dist

    kept = {label: [secs for _, secs in per_rep[1:]] for label, per_rep in rounds.items()}
    flat = torch.tensor([t for reps in kept.values() for secs in reps for t in secs], dtype=torch.float64)
    dist.all_reduce(flat, op=op)
    reduced, at = flat.tolist(), 0
    out: dict[str, list[list[float]]] = {}
    for label, reps in kept.items():
        out[label] = []
        for secs in reps:
            out[label].append(reduced[at:at + len(secs)])
            at += len(secs)
    return out


def _refined(base, rounds: list, own_work: tuple[float, float], world: int):
    """``base`` refit from ``rounds`` and the exchanges' own work (measured, predicted by ``base``) the way a
    ``refine_time`` policy does it (:meth:`LGreCo.refine`), momentum 1."""
    from commlib.adaptive import LGreCo

    refiner = LGreCo(options=OPTIONS, default_option=DEFAULT, cost_model=copy.deepcopy(base), world_size=world,
                     refine_time=True, refine_momentum=1.0)
    refiner.refine(rounds, own_work)
    return refiner.cost_model, {"rounds": len(rounds), "measured_s": refiner.stats.refit_measured_s,
                                "predicted_before_s": refiner.stats.refit_predicted_s,
                                "predicted_after_s": refiner.stats.refit_refined_s,
                                "local_measured_s": own_work[0], "local_predicted_s": own_work[1],
                                "local_scale": refiner.stats.local_scale}


def _predict(model, choice: list[str] | None, weights: dict, bias_numel: int, world: int) -> float:
    """exchange_seconds of a per-layer choice; ``None``: the Identity hook's one native all-reduce of everything."""
    from commlib.adaptive import Option
    from commlib.adaptive.cost import collective_seconds, exchange_seconds

    if choice is None:
        total = sum(math.prod(s) for s in weights.values()) + bias_numel
        return collective_seconds(model, "allreduce", 4 * total, world) + model.codec_cost(Option("fp16"), total, world)
    layers = [(weights[n], Option.parse(o)) for n, o in zip(weights, choice)]
    return exchange_seconds(model, layers, world, dense_numel=bias_numel)


def worker(cfg: dict[str, Any], out: Path) -> None:
    """One rank: steps 1–6 of the module docstring; rank 0 writes the result to ``out``."""
    import torch
    import torch.distributed as dist

    from commlib.adaptive import LGreCo, Option, TimeCost, calibrate, measure_codec_times
    from commlib.adaptive.cost import RoundTiming
    from commlib.comm import torch_driver
    from commlib.comm.exchange import ExchangeConfig, GradientExchange
    from commlib.comm.traffic import Meter
    from commlib.compress import Identity

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=cfg["collective_timeout"]))
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        width = cfg["width"]
        shapes = _shapes(width)
        named = _gradients(width, rank)
        weights = {n: s for n, s in shapes.items() if len(s) == 2}
        bias_numel = sum(s[0] for n, s in shapes.items() if len(s) == 1)
        options = [Option.parse(o) for o in OPTIONS]
        sizes = (1 << 18, 1 << 20, 1 << 22, 1 << 23)  # >= 256 KiB: below, tbf's 64 KiB burst flatters the link
        timing_shape = (width, width)
        t0 = time.perf_counter()
        upfront = calibrate(sizes=sizes, repeats=cfg["calib_repeats"])
        upfront.codec = measure_codec_times(options, shape=timing_shape, repeats=3, group=dist.group.WORLD)
        alone = TimeCost(latency=dict(upfront.latency), seconds_per_byte=dict(upfront.seconds_per_byte),
                         codec=_solo_codec(options, timing_shape, repeats=3))
        setup_s = time.perf_counter() - t0

        policy = LGreCo(period=1, window=1, options=OPTIONS, default_option=DEFAULT, cost_model=upfront,
                        world_size=world, once=True)
        policy.register(weights)
        if rank == 0:
            policy.observe(0, {n: t for n, t in named if n in weights})
        decision = policy.decide(1)
        dist.broadcast(decision, src=0)
        policy.load_decision(decision)
        configs: dict[str, list[str] | None] = {"L-GreCo (TimeCost)": [str(o) for o in policy.choices().values()]}
        configs.update({f"uniform {o}": [o] * len(weights) for o in UNIFORM})
        configs[NATIVE] = None

        exchanges = {}
        for label, choice in configs.items():
            if choice is None:
                exchanges[label] = GradientExchange(Identity(), rank, world, ExchangeConfig(start_step=0))
                continue
            held = copy.deepcopy(policy)  # solved once and held: no windows, no re-solves
            exchange = GradientExchange(Identity(), rank, world, ExchangeConfig(start_step=0), policy=held)
            exchange.register({n: torch.Size(s) for n, s in shapes.items()})
            held.load_decision(torch.tensor([OPTIONS.index(o) for o in choice]))
            exchanges[label] = exchange
        times: dict[str, list[float]] = {label: [] for label in configs}
        rounds: dict[str, list[tuple[tuple, list[float]]]] = {label: [] for label in configs}
        models, codecs = [], []
        order = [*configs, "calibrate", "codec"]
        shuffle = random.Random(cfg["seed"])
        for rep in range(cfg["repeats"] + 1):
            shuffle.shuffle(order)
            for item in order:
                if item == "calibrate":
                    models.append(calibrate(sizes=sizes, repeats=1))
                elif item == "codec":
                    codecs.append(measure_codec_times(options, shape=timing_shape, repeats=1, group=dist.group.WORLD))
                else:
                    meter = Meter(rank, world, clock=time.perf_counter)  # times each round, as the DDP hook's
                    dist.barrier()
                    start = time.perf_counter()
                    torch_driver.run(meter.run(exchanges[item].protocol(named, step=rep)))
                    times[item].append(time.perf_counter() - start)
                    rounds[item].append((tuple(meter.rounds), list(meter.seconds)))
        in_run = _in_run_model(models[1:], codecs[1:])
        half = cfg["repeats"] // 2
        slowest, fastest = _reduced_rounds(rounds, dist.ReduceOp.MAX), _reduced_rounds(rounds, dist.ReduceOp.MIN)
        timed = {label: [[RoundTiming(k, world, t) for k, t in zip(kinds, secs)]
                         for (kinds, _), secs in zip(rounds[label][1:], slowest[label])] for label in configs}
        learned = {label: [r for rep in timed[label][:half] for r in rep] for label in configs}
        no_codec = TimeCost(latency=upfront.latency, seconds_per_byte=upfront.seconds_per_byte)
        runs_of = {label: _slowest(times[label][1:]) for label in configs}
        wire_of = {label: [sum(secs) for secs in slowest[label]] for label in configs}
        wire_only_of = {label: _predict(no_codec, choice, weights, bias_numel, world)
                        for label, choice in configs.items()}
        local_upfront_of = {label: _predict(upfront, choice, weights, bias_numel, world) - wire_only_of[label]
                            for label, choice in configs.items()}
        # the first half's own work (exchange less its rounds' maxima), measured and as the up-front model predicts it
        own_work_of = {label: (sum(t - w for t, w in zip(runs_of[label][:half], wire_of[label][:half])),
                               half * local_upfront_of[label]) for label in configs}
        pooled, pooled_fit = _refined(upfront, [r for label in configs for r in learned[label]],
                                      tuple(sum(v) for v in zip(*own_work_of.values())), world)
        rows = []
        for label, choice in configs.items():
            runs, wire = runs_of[label], wire_of[label]
            measured, later = statistics.median(runs), statistics.median(runs[half:])
            own, own_fit = _refined(upfront, learned[label], own_work_of[label], world)
            predicted = {name: _predict(m, choice, weights, bias_numel, world)
                         for name, m in (("in_run", in_run), ("upfront", upfront), ("alone", alone),
                                         ("refined_own", own), ("refined_all", pooled))}
            against = {name: later if name.startswith("refined") else measured for name in predicted}
            split = {"rounds_s": statistics.median(wire),
                     "rounds_last_rank_s": statistics.median(sum(secs) for secs in fastest[label]),
                     "predicted_rounds_upfront_s": wire_only_of[label],
                     "local_s": statistics.median(t - w for t, w in zip(runs, wire)),
                     "predicted_local_upfront_s": local_upfront_of[label]}
            rows.append({"config": label, "choice": choice, "measured_s": measured, "measured_second_half_s": later,
                         **split,
                         "runs_s": runs, "refit_own": own_fit, "refined_own_model": own.state_dict(),
                         **{f"predicted_{k}_s": v for k, v in predicted.items()},
                         **{f"ratio_{k}": v / against[k] for k, v in predicted.items()}})
        if rank == 0:
            out.write_text(json.dumps({
                "world": world, "setup_s": setup_s, "first_half_repeats": half,
                "models": {"in_run": in_run.state_dict(), "upfront": upfront.state_dict(),
                           "codec_alone": alone.codec, "refined_all": pooled.state_dict()},
                "refit_all": pooled_fit,
                "lgreco": {"choices": configs["L-GreCo (TimeCost)"], "predicted_cost_s": policy.stats.predicted_cost,
                           "default_cost_s": policy.stats.default_cost},
                "rows": rows}))
    except BaseException as exc:
        if rank == 0:
            out.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        raise
    finally:
        dist.destroy_process_group()


def launch(cfg: dict[str, Any], world: int, net, timeout: float) -> dict[str, Any]:
    """Start ``world`` ranks (in ``net``'s namespaces, or on loopback); kill them after ``timeout``; rank 0's result."""
    from netem_harness import start_ranks, wait_or_kill

    tmp = Path(tempfile.mkdtemp(prefix="lgreco-netem-"))
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    script = str(Path(__file__).resolve())
    procs = start_ranks(world, net, lambda rank: [script, "--worker", str(tmp / "cfg.json"), str(tmp / "out.json")])
    errors = wait_or_kill(procs, timeout)
    out = tmp / "out.json"
    result = json.loads(out.read_text()) if out.exists() else {"error": "rank 0 wrote no result"}
    if errors:
        result.setdefault("error", "; ".join(errors))
    return result


def _table(runs: list[dict[str, Any]]) -> list[str]:
    """Predicted ÷ measured per model; the refined models against the second half's median (module docstring).

    "rounds s" are medians over repeats of the exchange's timed collective rounds, each round's
    maximum over ranks (the round's time) and minimum (the last rank to issue: the transfer
    alone), next to the up-front model's collective seconds; "local s" the exchange's time less
    the rounds' maxima, next to the up-front model's local (codec and dense-path) seconds.
    """
    lines = ["| link | ranks | configuration | per-layer options | measured s (all / 2nd half) | "
             "rounds s: max / min over ranks / up-front model | local s: measured / up-front model | "
             "predicted s (in-run model) | in-run / measured | up-front / measured | "
             "codec timed alone / measured | refined, own rounds / 2nd half | refined, all rounds / 2nd half |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        if "error" in run:
            lines.append(f"| {run['link']} | {run['world']} | error: {run['error']} | | | | | | | | | | |")
            continue
        for row in run["rows"]:
            choice = "native" if row["choice"] is None else ", ".join(row["choice"])
            lines.append(f"| {run['link']} | {run['world']} | {row['config']} | {choice} | {row['measured_s']:.4f} / "
                         f"{row['measured_second_half_s']:.4f} | {row['rounds_s']:.4f} / "
                         f"{row['rounds_last_rank_s']:.4f} / {row['predicted_rounds_upfront_s']:.4f} | "
                         f"{row['local_s']:.4f} / {row['predicted_local_upfront_s']:.4f} | "
                         f"{row['predicted_in_run_s']:.4f} | "
                         f"{row['ratio_in_run']:.2f} | {row['ratio_upfront']:.2f} | {row['ratio_alone']:.2f} | "
                         f"{row['ratio_refined_own']:.2f} | {row['ratio_refined_all']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,1000", help="link rates in Mbit/s, comma-separated")
    parser.add_argument("--worlds", default="2,4", help="world sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=8, help="timed repeats (>= 2: the refit learns from half)")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=540.0, help="seconds per (world, rate) run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true",
                        help="keep the runs of other (ranks, link) pairs already in the results file")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 ranks, 1 Gbit/s, width 512, 4 repeats")
    parser.add_argument("--worker", nargs=2, metavar=("CFG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(Path(args.worker[0]).read_text()), Path(args.worker[1]))
        return
    from netem_harness import LinkShape, can_emulate, emulated_network

    if args.quick:
        args.rates, args.worlds, args.width, args.repeats = "1000", "2", 512, 4
    if args.repeats < 2:
        parser.error(f"--repeats must be >= 2 (the refit learns from the first half), got {args.repeats}")
    rates = [float(r) for r in args.rates.split(",")]
    worlds = [int(w) for w in args.worlds.split(",")]
    cfg = {"width": args.width, "repeats": args.repeats, "seed": args.seed, "calib_repeats": 3 if args.quick else 5,
           "collective_timeout": args.timeout}
    ok, why = can_emulate()
    if not ok:
        print(f"cannot shape links ({why}): running once per world size, unshaped, on loopback")
    runs = []
    load = [os.getloadavg()[0]]
    for world in worlds:
        for rate in rates if ok else [None]:
            shape = LinkShape(rate)
            started = time.time()
            if ok:
                with emulated_network(world, shape) as net:
                    result = launch(cfg, world, net, args.timeout)
            else:
                result = launch(cfg, world, None, args.timeout)
            link = shape.label if ok else "loopback (not shaped: " + why + ")"
            runs.append({"link": link, "rate_mbit": rate, "world": world, "wall_s": time.time() - started, **result})
            print("\n".join(_table(runs[-1:])), flush=True)
    load.append(os.getloadavg()[0])
    name = "lgreco_time_netem_quick" if args.quick else "lgreco_time_netem"
    RESULTS.mkdir(exist_ok=True)
    for run in runs:
        run["load"] = load
    if args.append and (RESULTS / f"{name}.json").exists():
        done = {(r["world"], r["link"]) for r in runs}
        earlier = json.loads((RESULTS / f"{name}.json").read_text())["runs"]
        runs = sorted([r for r in earlier if (r["world"], r["link"]) not in done] + runs,
                      key=lambda r: (r["world"], -(r["rate_mbit"] or 0)))
    (RESULTS / f"{name}.json").write_text(json.dumps({"args": vars(args), "load": load, "runs": runs}, indent=1))
    header = [f"Exchange of one {args.width}-wide MLP bucket; median over {args.repeats} interleaved repeats of the "
              f"slowest rank (refined models: refit from the first {args.repeats // 2} repeats' rounds, compared with "
              "the median of the others); 1-minute load average at the start and end of each run: "
              + ", ".join(f"{r['world']} ranks {r['link']}: {r['load'][0]:.1f}/{r['load'][1]:.1f}" for r in runs), ""]
    (RESULTS / f"{name}.md").write_text("\n".join(header + _table(runs)) + "\n")
    print("\n".join(header + _table(runs)))


if __name__ == "__main__":
    main()
