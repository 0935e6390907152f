"""Robust DDP training on digits with Byzantine ranks chosen on the command line.

::

    torchrun --standalone --nproc-per-node=4 -m commlib.train.robust \\
        --aggregate flag --byzantine 1 --attack alie --steps 300

Every rank trains the digits MLP under DDP with :func:`commlib.ddp.robust.robust_hook`;
the ranks in ``--byzantine`` replace their gradient by the attack's vector inside
the same protocol. Rank 0 prints the test accuracy (and ``--json`` writes it).

Momentum sits on the workers by default (``--worker-momentum 0.9``): every rank
submits ``mᵣ ← β·mᵣ + gᵣ`` and the optimizer is plain SGD — the same update as
heavy-ball SGD when the rule is the mean, but the robust rule now judges vectors
whose spread is small next to their mean (Karimireddy, He, Jaggi, ICML 2021;
ByzFL's default protocol). ``--worker-momentum 0`` puts the momentum (0.9) back
in the optimizer, after the aggregation. The default batch is 64 examples per
worker: with 4 ranks, one of them running ALIE, the trimmed mean needs both
(docs/robust.md, "ALIE under torchrun"). ``--sharded`` aggregates without any
rank holding all n gradients (:func:`commlib.ddp.robust.sharded_protocol`).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import robust
from ..ddp.robust import RobustState, robust_hook
from .data import load_digits
from .loop import TrainConfig, make_optimizer, train_ddp
from .models import mlp

__all__ = ["ATTACKS", "RULES", "main", "make_attack", "make_rule"]

RULES: dict[str, Callable[[int], robust.Aggregator]] = {
    "mean": lambda f: robust.Mean(),
    "median": lambda f: robust.CoordinateMedian(),
    "trimmed-mean": lambda f: robust.TrimmedMean(f=f),
    "meamed": lambda f: robust.Meamed(f=f),
    "phocas": lambda f: robust.Phocas(f=f),
    "geomed": lambda f: robust.GeometricMedian(),
    "krum": lambda f: robust.Krum(f=f),
    "multi-krum": lambda f: robust.MultiKrum(f=f),
    "flag": lambda f: robust.FlagAggregator(m=2),
}

ATTACKS: dict[str, Callable[[float | None], robust.Attack]] = {
    "sign-flip": lambda z: robust.SignFlip(),
    "ipm": lambda z: robust.IPM() if z is None else robust.IPM(eps=z),
    "alie": lambda z: robust.ALIE(z=z),
    "gaussian": lambda z: robust.Gaussian(),
    "nan": lambda z: robust.NonFinite("nan"),
    "inf": lambda z: robust.NonFinite("inf"),
}


def make_rule(name: str, f: int, nnm: bool = False) -> Callable:
    """The rule called ``name`` for ``f`` Byzantine workers, optionally behind nearest-neighbour mixing."""
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; choose one of {sorted(RULES)}")
    rule = RULES[name](f)
    return robust.Compose([robust.NNM(f=f)], rule) if nnm else rule


def make_attack(name: str, strength: float | None = None) -> robust.Attack:
    """The attack called ``name`` (``strength``: ALIE's z or IPM's ε; default the paper's)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name](strength)


def parse_ranks(text: str) -> list[int]:
    """``"1,3"`` → ``[1, 3]``; ``""`` → ``[]``."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--byzantine takes comma-separated ranks, got {text!r}") from exc


def train(rank: int, world: int, aggregate: str, byzantine: list[int], attack: str | None, strength: float | None,
          nnm: bool, cfg: TrainConfig, worker_momentum: float = 0.9, sharded: bool = False) -> float:
    """One rank's robust DDP run; returns the final test accuracy (the same on every rank).

    With ``worker_momentum`` > 0 the optimizer's momentum (``cfg.momentum``) is
    replaced by the workers' (module docstring).
    """
    data = load_digits()
    model = mlp(seed=cfg.seed)
    wrapped = DDP(model)
    if worker_momentum:
        cfg = dataclasses.replace(cfg, momentum=0.0)
    state = RobustState(wrapped, make_rule(aggregate, len(byzantine), nnm), byzantine=byzantine,
                        attack=make_attack(attack, strength) if byzantine else None, seed=cfg.seed,
                        worker_momentum=worker_momentum, sharded=sharded)
    wrapped.register_comm_hook(state, robust_hook)
    return train_ddp(wrapped, make_optimizer(model, cfg), data, cfg, rank, world).accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m commlib.train.robust", description=__doc__.split("\n\n")[0])
    parser.add_argument("--aggregate", default="flag", choices=sorted(RULES), help="the robust rule")
    parser.add_argument("--nnm", action="store_true", help="nearest-neighbour mixing before the rule")
    parser.add_argument("--byzantine", type=parse_ranks, default=[], help="comma-separated Byzantine ranks")
    parser.add_argument("--attack", choices=sorted(ATTACKS), help="what the Byzantine ranks send")
    parser.add_argument("--strength", type=float, help="ALIE's z or IPM's epsilon (default: the paper's)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=64,
                        help="examples per worker per step (a larger batch also shrinks the honest spread)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker-momentum", type=float, default=0.9,
                        help="β of the momentum each worker submits (0: momentum 0.9 in the optimizer instead)")
    parser.add_argument("--sharded", action="store_true",
                        help="all-to-all + Gram all-reduce instead of gathering every gradient on every rank")
    parser.add_argument("--json", help="rank 0 writes {aggregate, attack, accuracy} here")
    args = parser.parse_args(argv)
    if bool(args.byzantine) != (args.attack is not None):
        parser.error("--byzantine and --attack go together")
    if not 0.0 <= args.worker_momentum < 1.0:
        parser.error(f"--worker-momentum must lie in [0, 1), got {args.worker_momentum}")
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    cfg = TrainConfig(steps=args.steps, batch_per_worker=args.batch, lr=args.lr, seed=args.seed)
    accuracy = train(rank, world, args.aggregate, args.byzantine, args.attack, args.strength, args.nnm, cfg,
                     args.worker_momentum, args.sharded)
    if rank == 0:
        print(f"aggregate={args.aggregate} nnm={args.nnm} byzantine={args.byzantine} attack={args.attack} "
              f"batch={args.batch} worker_momentum={args.worker_momentum} seed={args.seed} accuracy={accuracy:.4f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"aggregate": args.aggregate, "nnm": args.nnm, "attack": args.attack,
                           "byzantine": args.byzantine, "batch": args.batch, "worker_momentum": args.worker_momentum,
                           "seed": args.seed, "accuracy": accuracy}, f)
    dist.barrier()  # every rank's last collective has completed before any rank tears its group down
    gc.collect()  # cycles still holding the group (finished futures) go while the interpreter is whole
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
