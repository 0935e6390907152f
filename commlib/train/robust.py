"""Robust DDP training on digits with Byzantine ranks chosen on the command line.

::

    torchrun --standalone --nproc-per-node=4 -m commlib.train.robust \\
        --aggregate flag --byzantine 1 --attack alie --steps 300

Every rank trains the digits MLP under DDP with :func:`commlib.ddp.robust.robust_hook`;
the ranks in ``--byzantine`` replace their gradient by the attack's vector inside
the same protocol. Rank 0 prints the test accuracy (and ``--json`` writes it).
"""

from __future__ import annotations

import argparse
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
          nnm: bool, cfg: TrainConfig) -> float:
    """One rank's robust DDP run; returns the final test accuracy (the same on every rank)."""
    data = load_digits()
    model = mlp(seed=cfg.seed)
    wrapped = DDP(model)
    state = RobustState(wrapped, make_rule(aggregate, len(byzantine), nnm), byzantine=byzantine,
                        attack=make_attack(attack, strength) if byzantine else None, seed=cfg.seed)
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="rank 0 writes {aggregate, attack, accuracy} here")
    args = parser.parse_args(argv)
    if bool(args.byzantine) != (args.attack is not None):
        parser.error("--byzantine and --attack go together")
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    cfg = TrainConfig(steps=args.steps, lr=args.lr, seed=args.seed)
    accuracy = train(rank, world, args.aggregate, args.byzantine, args.attack, args.strength, args.nnm, cfg)
    if rank == 0:
        print(f"aggregate={args.aggregate} byzantine={args.byzantine} attack={args.attack} accuracy={accuracy:.4f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"aggregate": args.aggregate, "attack": args.attack, "byzantine": args.byzantine,
                           "accuracy": accuracy}, f)
    dist.barrier()  # every rank's last collective has completed before any rank tears its group down
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
