"""``commlib train``: the reference trainer — the digits MLP under DDP with any commlib method.

Launch it one of three ways (every rank runs the same command)::

    torchrun --standalone --nproc-per-node=4 -m commlib.cli train --compressor topk:0.01 --feedback econtrol
    mpiexec -n 4 python -m commlib.cli train --compressor qsgd:4      # ranks from the MPI environment
    commlib train --spawn 4 --aggregate flag --byzantine 3 --attack alie   # local ranks started by the command

Every method is a flag (or a key of ``--config file.json``, whose keys are the flags' long
names; flags on the command line win). One rank's run:

1. join the gloo group (``torchrun``'s or ``mpiexec``'s environment; rendezvous at
   ``MASTER_ADDR:MASTER_PORT``, default ``127.0.0.1:29500`` under ``mpiexec``);
2. build the digits data and the seeded MLP, wrap it in DDP and register
   :func:`commlib.ddp.hook` with a :class:`~commlib.ddp.CommState` (compressor, error
   feedback, L-GreCo policy) — or, with ``--aggregate``,
   :func:`commlib.ddp.robust.robust_hook` with a :class:`~commlib.ddp.robust.RobustState`
   (rule, Byzantine ranks and their attack, optional gather compressor);
3. optionally restore ``--resume`` (model, optimizer, hook state, step; every rank
   its own file, see :func:`checkpoint_path`);
4. train with :func:`commlib.train.loop.train_ddp`; after every step rank 0 writes a
   record (:mod:`commlib.train.logs`) to ``--log-jsonl`` and ``--tensorboard``, evaluates
   every ``--eval-every`` steps and at the end, and advances its progress bar;
5. optionally save ``--save`` (every rank its own file); return a summary (accuracy, loss, communication totals).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..adaptive import (
    Accordion,
    ByteCost,
    CostModel,
    ElementCost,
    LGreCo,
    Option,
    calibrate,
    default_grid,
    measure_codec_times,
)
from ..compress.base import GatherCompressor
from ..compress.dense import Identity
from ..ddp import CommState, hook
from ..ddp.robust import RobustState, robust_hook
from ..feedback import ErrorFeedback, require_local_compressor
from .data import load_digits
from .logs import JsonLinesLog, StepLog, TensorBoardLog, step_record, tensorboard_available
from .loop import TrainConfig, evaluate, make_optimizer, train_ddp
from .methods import COMPRESSOR_SPECS, FEEDBACK_SPECS, make_compressor, make_feedback
from .models import mlp
from .robust import ATTACKS, RULES, make_attack, make_rule
from .spawn import launch

__all__ = ["TrainSettings", "build_parser", "checkpoint_path", "main", "number_type", "parse_settings", "run_rank"]

MPI_RANK_VARIABLES = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"))


@dataclass(frozen=True)
class TrainSettings:
    """Everything one rank needs (plain values, so it travels to spawned ranks)."""

    compressor: str = "fp32"
    feedback: str | None = None
    policy: str | None = None
    policy_period: int = 50
    accordion_heavy: str | None = None
    lgreco_alpha: float = 1.0
    lgreco_cost: str = "elements"
    lgreco_refine: bool = False
    lgreco_first_solve: int | None = None
    aggregate: str | None = None
    byzantine: tuple[int, ...] = ()
    attack: str | None = None
    strength: float | None = None
    nnm: bool = False
    worker_momentum: float = 0.9
    sharded: bool = False
    dataset: str = "digits"
    hidden: int = 128
    steps: int = 300
    batch_per_worker: int = 16
    lr: float = 0.1
    momentum: float = 0.9
    seed: int = 0
    start_step: int = 2
    native_dense: bool = False
    eval_every: int = 0
    log_jsonl: str | None = None
    tensorboard: str | None = None
    save: str | None = None
    resume: str | None = None
    progress: bool = True

    @property
    def train_config(self) -> TrainConfig:
        """The loop's settings; with worker momentum (robust runs) the optimizer's momentum is 0."""
        robust_momentum = self.aggregate is not None and self.worker_momentum > 0
        return TrainConfig(steps=self.steps, batch_per_worker=self.batch_per_worker, lr=self.lr,
                           momentum=0.0 if robust_momentum else self.momentum, seed=self.seed)


def number_type(kind: type, low: float, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` (int or float) at least ``low`` (greater than ``low`` when ``strict``)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} {low:g}, got {text}")
        return value
    return parse


def _spec(make: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type that validates a method spec by building it once."""
    def parse(text: str) -> str:
        try:
            make(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return parse


def _ranks(text: str) -> tuple[int, ...]:
    try:
        ranks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ranks such as 1,3, got {text!r}") from None
    if any(r < 0 for r in ranks):
        raise argparse.ArgumentTypeError(f"ranks must be >= 0, got {text!r}")
    return ranks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="commlib train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the digits MLP under DDP with a commlib method (compression, error feedback, L-GreCo, "
                    "or Byzantine-robust aggregation), logging per-step statistics.",
        epilog="launch:\n"
               "  torchrun --standalone --nproc-per-node=4 -m commlib.cli train [options]\n"
               "  mpiexec -n 4 python -m commlib.cli train [options]\n"
               "  commlib train --spawn 4 [options]\n\n"
               f"compressors: {' | '.join(COMPRESSOR_SPECS)}\n"
               f"feedback:    {' | '.join(FEEDBACK_SPECS)}\n\n"
               "examples:\n"
               "  commlib train --spawn 4 --compressor topk:0.01 --feedback econtrol --log-jsonl topk.jsonl\n"
               "  commlib train --spawn 4 --compressor topk:0.1 --policy lgreco --policy-period 50\n"
               "  commlib train --spawn 4 --compressor topk:0.01 --feedback econtrol --policy lgreco \\\n"
               "      --lgreco-cost time --native-dense\n"
               "  commlib train --spawn 4 --compressor topk:0.2 --policy accordion --accordion-heavy topk:0.05\n"
               "  commlib train --spawn 4 --aggregate flag --byzantine 3 --attack alie\n"
               "  commlib train --spawn 4 --config run.json   # {\"compressor\": \"qsgd:4\", \"steps\": 200}")
    method = p.add_argument_group("method")
    method.add_argument("--compressor", type=_spec(make_compressor), default="fp32", metavar="SPEC",
                        help="gradient compressor (default fp32; see below)")
    method.add_argument("--feedback", type=_spec(make_feedback), metavar="SPEC",
                        help="error feedback around the compressor (not with the dense casts, nor powersgd, "
                             "which has its own: powersgd:RANK:ef)")
    method.add_argument("--policy", choices=["lgreco", "accordion"],
                        help="layerwise-adaptive compression: L-GreCo (--compressor is its default option) or "
                             "Accordion (--compressor is the light setting, --accordion-heavy the heavy one)")
    method.add_argument("--policy-period", type=number_type(int, 1), default=50, metavar="STEPS",
                        help="steps between the policy's decisions (default 50)")
    method.add_argument("--lgreco-alpha", type=number_type(float, 0, strict=True), default=1.0, metavar="A",
                        help="L-GreCo error budget relative to the default option (default 1)")
    method.add_argument("--lgreco-cost", choices=["elements", "bytes", "time"], default="elements",
                        help="what L-GreCo minimises: elements sent (the paper's), bytes on the wire, or seconds "
                             "(a time model calibrated on this process group at start-up: each collective timed at "
                             "a few sizes, each option's local work on the model's largest layer)")
    method.add_argument("--lgreco-refine", action="store_true",
                        help="with --lgreco-cost time: refine the model from the hook's own timings at each re-solve")
    method.add_argument("--lgreco-first-solve", type=number_type(int, 1), metavar="STEPS",
                        help="L-GreCo's first decision after this many compressed steps, from their gradients "
                             "(default: the period; its window shrinks to fit)")
    method.add_argument("--accordion-heavy", metavar="SPEC",
                        help="Accordion's heavy (more compressed) setting, an option like topk:0.05 or powersgd:2")
    rob = p.add_argument_group("Byzantine robustness")
    rob.add_argument("--aggregate", choices=sorted(RULES), help="robust rule (model-wide robust hook)")
    rob.add_argument("--byzantine", type=_ranks, default=(), metavar="RANKS", help="comma-separated attacking ranks")
    rob.add_argument("--attack", choices=sorted(ATTACKS), help="what the Byzantine ranks send")
    rob.add_argument("--strength", type=float, metavar="Z", help="ALIE's z or IPM's epsilon (default: the paper's)")
    rob.add_argument("--nnm", action="store_true", help="nearest-neighbour mixing before the rule")
    rob.add_argument("--worker-momentum", type=number_type(float, 0), default=0.9, metavar="BETA",
                     help="momentum each rank submits to the rule (default 0.9; 0: --momentum in the optimizer)")
    rob.add_argument("--sharded", action="store_true",
                     help="aggregate by all-to-all + Gram all-reduce instead of gathering every gradient")
    run = p.add_argument_group("training")
    run.add_argument("--dataset", choices=["digits"], default="digits", help="bundled dataset (default digits)")
    run.add_argument("--hidden", type=number_type(int, 1), default=128, help="MLP width (default 128)")
    run.add_argument("--steps", type=number_type(int, 1), default=300, help="training steps (default 300)")
    run.add_argument("--batch-per-worker", type=number_type(int, 1), default=16, metavar="B", help="default 16")
    run.add_argument("--lr", type=number_type(float, 0, strict=True), default=0.1,
                     help="SGD learning rate (default 0.1)")
    run.add_argument("--momentum", type=number_type(float, 0), default=0.9, help="SGD momentum (default 0.9)")
    run.add_argument("--seed", type=number_type(int, 0), default=0, help="seed of data order, init and methods")
    run.add_argument("--start-step", type=number_type(int, 1), default=2, metavar="S",
                     help="dense steps before compression starts (default 2)")
    run.add_argument("--native-dense", action="store_true",
                     help="dense tensors (warm-up, biases, a policy's fp32 layers) through the backend's native "
                          "all-reduce: faster on large dense layers, but DDP no longer matches the simulator bit "
                          "for bit")
    run.add_argument("--save", metavar="PATH",
                     help="checkpoint at the end: rank 0 writes PATH, rank R > 0 writes PATH.rankR")
    run.add_argument("--resume", metavar="PATH", help="restore the --save checkpoints first (same method settings)")
    out = p.add_argument_group("launch and output")
    out.add_argument("--config", type=Path, metavar="FILE.json", help="JSON object of flag values (flags win)")
    out.add_argument("--spawn", type=number_type(int, 1), metavar="N", help="start N local gloo ranks (no torchrun)")
    out.add_argument("--eval-every", type=number_type(int, 0), default=0, metavar="K",
                     help="test accuracy every K steps in the log (default 0: at the end only)")
    out.add_argument("--log-jsonl", metavar="PATH", help="per-step statistics, one JSON object per line (rank 0)")
    out.add_argument("--tensorboard", metavar="DIR", help="TensorBoard scalars (needs the tensorboard package)")
    out.add_argument("--json", type=Path, metavar="PATH", help="write the run's summary as JSON")
    out.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")
    return p


def _config_argv(parser: argparse.ArgumentParser, path: Path) -> list[str]:
    """The flags a JSON config stands for; unknown keys and bad values are the parser's errors."""
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        parser.error(f"--config: cannot read {path}: {exc.strerror}")
    except json.JSONDecodeError as exc:
        parser.error(f"--config: {path} is not JSON ({exc.msg}, line {exc.lineno})")
    if not isinstance(config, dict):
        parser.error(f"--config: {path} must hold a JSON object of flag values")
    flags = {action.dest: action for action in parser._actions if action.option_strings}
    argv: list[str] = []
    for key, value in config.items():
        dest = str(key).replace("-", "_")
        if dest not in flags or dest in ("config", "spawn", "help"):
            parser.error(f"--config: unknown key {key!r} in {path}")
        flag = flags[dest].option_strings[-1]
        if flags[dest].nargs == 0:  # a switch
            if not isinstance(value, bool):
                parser.error(f"--config: {key!r} must be true or false, got {value!r}")
            argv += [flag] if value else []
        elif isinstance(value, list) and dest == "byzantine":
            argv += [flag, ",".join(str(v) for v in value)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def parse_settings(argv: Sequence[str] | None = None) -> tuple[TrainSettings, argparse.Namespace]:
    """Parse flags (and ``--config``) into settings; every inconsistency is an argparse error naming its flag."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.config is not None:
        args = parser.parse_args(_config_argv(parser, args.config) + argv)
    if args.aggregate is None and (args.byzantine or args.attack or args.nnm or args.sharded
                                   or args.strength is not None):
        parser.error("--byzantine, --attack, --strength, --nnm and --sharded need --aggregate")
    if args.worker_momentum >= 1:
        parser.error(f"--worker-momentum must lie in [0, 1), got {args.worker_momentum}")
    if bool(args.byzantine) != (args.attack is not None):
        parser.error("--byzantine and --attack go together")
    if args.aggregate is not None:
        if args.feedback or args.policy or args.native_dense:
            parser.error("--feedback, --policy and --native-dense do not apply with --aggregate (the robust hook)")
        compressor = make_compressor(args.compressor)
        if not isinstance(compressor, (Identity, GatherCompressor)):
            parser.error(f"--compressor {args.compressor}: the robust hook takes a gather compressor "
                         "(topk, qsgd, sign) or fp32")
    if args.feedback is not None:
        try:
            require_local_compressor(make_compressor(args.compressor))
        except ValueError as exc:
            own = " (PowerSGD has its own: --compressor powersgd:RANK:ef)" if "powersgd" in args.compressor else ""
            parser.error(f"--feedback needs a compressor with a local operator: {exc}{own}")
    if args.policy is not None:
        from ..adaptive import Option

        specs = [("--compressor", args.compressor)]
        if args.policy == "accordion":
            if args.accordion_heavy is None:
                parser.error("--policy accordion needs --accordion-heavy SPEC (the heavy setting)")
            specs.append(("--accordion-heavy", args.accordion_heavy))
        for flag, spec in specs:
            try:
                Option.parse(spec)
            except ValueError:
                parser.error(f"--policy {args.policy}: {flag} {spec} is not a policy option "
                             "(topk:D, qsgd:BITS, powersgd:RANK[:ef], fp16, bf16, fp32)")
    elif args.accordion_heavy is not None:
        parser.error("--accordion-heavy applies only with --policy accordion")
    if args.policy != "lgreco" and (args.lgreco_cost != "elements" or args.lgreco_refine
                                    or args.lgreco_first_solve is not None):
        parser.error("--lgreco-cost, --lgreco-refine and --lgreco-first-solve apply only with --policy lgreco")
    if args.lgreco_refine and args.lgreco_cost != "time":
        parser.error("--lgreco-refine refines a time model: it needs --lgreco-cost time")
    if args.spawn is not None and args.byzantine and max(args.byzantine) >= args.spawn:
        parser.error(f"--byzantine {','.join(map(str, args.byzantine))}: ranks must be below --spawn {args.spawn}")
    if args.tensorboard is not None and not tensorboard_available():
        parser.error("--tensorboard needs the tensorboard package (pip install tensorboard)")
    for flag, path in (("--log-jsonl", args.log_jsonl), ("--save", args.save), ("--json", args.json)):
        if path is not None and not Path(path).resolve().parent.is_dir():
            parser.error(f"{flag}: directory {Path(path).resolve().parent} does not exist")
    if args.resume is not None and not Path(args.resume).is_file():
        parser.error(f"--resume: no such file {args.resume}")
    settings = TrainSettings(
        compressor=args.compressor, feedback=args.feedback, policy=args.policy, policy_period=args.policy_period,
        accordion_heavy=args.accordion_heavy,
        lgreco_alpha=args.lgreco_alpha, lgreco_cost=args.lgreco_cost, lgreco_refine=args.lgreco_refine,
        lgreco_first_solve=args.lgreco_first_solve,
        aggregate=args.aggregate, byzantine=tuple(args.byzantine),
        attack=args.attack, strength=args.strength, nnm=args.nnm,
        worker_momentum=args.worker_momentum, sharded=args.sharded, dataset=args.dataset, hidden=args.hidden,
        steps=args.steps, batch_per_worker=args.batch_per_worker, lr=args.lr, momentum=args.momentum,
        seed=args.seed, start_step=args.start_step, native_dense=args.native_dense, eval_every=args.eval_every,
        log_jsonl=args.log_jsonl,
        tensorboard=args.tensorboard, save=args.save, resume=args.resume, progress=not args.no_progress)
    return settings, args


def _register(wrapped: DDP, settings: TrainSettings, world: int) -> CommState | RobustState:
    """Step 2: the hook state for the settings, registered on ``wrapped``."""
    if settings.aggregate is not None:
        compressor = make_compressor(settings.compressor)
        rule = make_rule(settings.aggregate, len(settings.byzantine), settings.nnm)
        attack = make_attack(settings.attack, settings.strength) if settings.byzantine else None
        state: CommState | RobustState = RobustState(
            wrapped, rule, compressor=None if isinstance(compressor, Identity) else compressor,  # type: ignore[arg-type]
            byzantine=settings.byzantine, attack=attack, seed=settings.seed, sharded=settings.sharded,
            worker_momentum=settings.worker_momentum)
        wrapped.register_comm_hook(state, robust_hook)
        return state
    policy: LGreCo | Accordion | None = None
    compressor = make_compressor(settings.compressor)
    feedback = make_feedback(settings.feedback) if settings.feedback else None
    if settings.policy == "lgreco":
        first = settings.lgreco_first_solve or settings.policy_period
        policy = LGreCo(period=settings.policy_period, window=min(10, settings.policy_period, first),
                        default_option=settings.compressor, alpha=settings.lgreco_alpha, world_size=world,
                        seed=settings.seed, cost_model=_lgreco_cost(wrapped.module, settings, feedback),
                        refine_time=settings.lgreco_refine, first_solve=first)
    elif settings.policy == "accordion":
        policy = Accordion(light=settings.compressor, heavy=settings.accordion_heavy, interval=settings.policy_period,
                           window=min(10, settings.policy_period))
    if policy is not None:
        compressor = Identity()
    state = CommState(wrapped, compressor=compressor, feedback=feedback, seed=settings.seed,
                      start_step=settings.start_step, policy=policy, native_dense=settings.native_dense)
    wrapped.register_comm_hook(state, hook)
    return state


def _lgreco_cost(model: torch.nn.Module, settings: TrainSettings, feedback: ErrorFeedback | None) -> CostModel:
    """L-GreCo's cost model for ``--lgreco-cost``; ``time`` is measured here, on the process group.

    Steps for ``time`` (every rank at once, every figure max-reduced, so every rank holds
    the same model): time each compressed option of L-GreCo's grid for the default option
    on the model's largest 2-D layer through the real exchange, under the run's error
    feedback and dense path (:func:`~commlib.adaptive.measure_codec_times`; casts have no
    codec entry: their reduction is the calibrated all-reduce's); then time each collective
    kind at a few sizes and fit the model (:func:`~commlib.adaptive.calibrate`); price the
    ``fp32`` layers as the path ``--native-dense`` chooses.
    """
    if settings.lgreco_cost == "elements":
        return ElementCost()
    if settings.lgreco_cost == "bytes":
        return ByteCost()
    shape = max((tuple(p.shape) for p in model.parameters() if p.dim() == 2), key=math.prod)
    options = [o for o in default_grid(Option.parse(settings.compressor)) if not o.is_cast and o.applicable(shape)]
    codec = measure_codec_times(options, shape=shape, repeats=2, group=dist.group.WORLD, feedback=feedback,
                                native_dense=settings.native_dense)
    cost = calibrate(repeats=3, codec=codec)
    cost.native_dense = settings.native_dense
    return cost


class _NoBar:
    """The progress bar's interface, doing nothing (off, or tqdm not installed)."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **kwargs: Any) -> None: ...

    def close(self) -> None: ...


def checkpoint_path(path: str, rank: int) -> str:
    """Rank ``rank``'s checkpoint file: ``path`` for rank 0, ``path.rankR`` for the others.

    Every rank saves its own: the hook's state differs between ranks (error-feedback
    buffers hold each rank's own compression error).
    """
    return path if rank == 0 else f"{path}.rank{rank}"


def _progress(settings: TrainSettings, rank: int, total: int) -> Any:
    """tqdm on rank 0 when stderr is a terminal and the bar is wanted; else a bar that does nothing."""
    if rank != 0 or not settings.progress or not sys.stderr.isatty():
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)


def run_rank(rank: int, world: int, settings: TrainSettings) -> dict[str, Any]:
    """Steps 2–5 of the module docstring on an initialised process group; returns the run's summary."""
    if settings.byzantine and max(settings.byzantine) >= world:
        raise ValueError(f"--byzantine ranks must be below the world size {world}, got {list(settings.byzantine)}")
    data = load_digits()
    cfg = settings.train_config
    model = mlp(features=data.features, classes=data.classes, hidden=settings.hidden, seed=settings.seed)
    wrapped = DDP(model)
    optimizer = make_optimizer(model, cfg)
    state = _register(wrapped, settings, world)
    start = 0
    if settings.resume is not None:
        path = checkpoint_path(settings.resume, rank)
        if not Path(path).is_file():
            raise ValueError(f"--resume: rank {rank}'s checkpoint {path} does not exist")
        ckpt = torch.load(path, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state.load_state_dict(ckpt["comm"])
        start = int(ckpt["step"])
    logs: list[StepLog] = []
    if rank == 0 and settings.log_jsonl is not None:
        logs.append(JsonLinesLog(settings.log_jsonl))
    if rank == 0 and settings.tensorboard is not None:
        logs.append(TensorBoardLog(settings.tensorboard))
    bar = _progress(settings, rank, max(0, cfg.steps - start))
    clock = [time.perf_counter()]

    def on_step(step: int, loss: float) -> None:
        now = time.perf_counter()
        step_s, clock[0] = now - clock[0], now
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if not logs:
            return
        due = step + 1 == cfg.steps or (settings.eval_every and (step + 1) % settings.eval_every == 0)
        accuracy = evaluate(model, data) if due else None
        if isinstance(state, CommState):
            record = step_record(step, loss, step_s, state.stats.last, accuracy)
        else:
            record = step_record(step, loss, step_s, None, accuracy, faulty_rows=state.faulty_rows)
        for log in logs:
            log.write(record)
        clock[0] = time.perf_counter()  # logging and evaluation are not the next step's time

    try:
        result = train_ddp(wrapped, optimizer, data, cfg, rank, world, start=start, on_step=on_step)
    finally:
        bar.close()
        for log in logs:
            log.close()
    if settings.save is not None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "comm": state.state_dict(),
                    "step": cfg.steps}, checkpoint_path(settings.save, rank))
        dist.barrier()  # every rank's checkpoint is complete before any rank goes on (and perhaps reads one)
    summary: dict[str, Any] = {"rank": rank, "world": world, "accuracy": result.accuracy, "loss": result.loss,
                               "seconds": result.seconds, "steps": cfg.steps, "start": start,
                               "losses": result.losses, "settings": asdict(settings)}
    if isinstance(state, CommState):
        summary["stats"] = state.stats.as_dict()
        if state.policy is not None:
            summary["policy"] = {"stats": state.policy.stats.as_dict(),
                                 "choices": {name: str(o) for name, o in state.policy.choices().items()}}
    else:
        summary["faulty_rows"] = state.faulty_rows
    return summary


def _mpi_environment() -> bool:
    """Under ``mpiexec`` without torchrun's variables: set RANK/WORLD_SIZE from MPI's (and a default rendezvous)."""
    if "RANK" in os.environ:
        return False
    for rank_var, size_var in MPI_RANK_VARIABLES:
        if rank_var in os.environ and size_var in os.environ:
            os.environ.update(RANK=os.environ[rank_var], WORLD_SIZE=os.environ[size_var])
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            return True
    return False


def _describe(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    method = (f"aggregate={s['aggregate']} byzantine={s['byzantine']} attack={s['attack']}" if s["aggregate"]
              else f"compressor={s['compressor']} feedback={s['feedback']} policy={s['policy']}")
    line = (f"{method}: {summary['world']} ranks, steps {summary['start']}..{summary['steps']}, "
            f"accuracy {summary['accuracy']:.4f}, loss {summary['loss']:.4f}, {summary['seconds']:.1f} s")
    if "stats" in summary:
        per = summary["stats"]["per_step"]
        line += (f"\nper step: sent {per['sent_bytes'] / 1e3:.1f} kB, ratio {per['ratio_vs_fp32']:.1f}x vs fp32, "
                 f"encode/decode {per['compute_s'] * 1e3:.2f} ms, comm {per['comm_s'] * 1e3:.2f} ms")
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``commlib train``; returns the exit status."""
    settings, args = parse_settings(argv)
    if args.spawn is not None:
        summary = launch(run_rank, args.spawn, settings, timeout=3600.0, collective_timeout=120.0)[0]
    else:
        _mpi_environment()
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            build_parser().error("no process group to join: run under torchrun or mpiexec, or pass --spawn N")
        dist.init_process_group("gloo", timeout=timedelta(seconds=120))
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        summary = run_rank(rank, world, settings)
        dist.barrier()  # every rank's last collective has completed before any rank tears its group down
        gc.collect()  # cycles still holding the group (finished futures) go while the interpreter is whole
        dist.destroy_process_group()
        if rank != 0:
            return 0
    print(_describe(summary))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    return 0
