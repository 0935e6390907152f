"""Register each commlib hook on a DDP model — a few lines apiece — and train the digits MLP with it.

    torchrun --standalone --nproc-per-node=4 examples/ddp_hooks.py --hook topk-ef --steps 200
    torchrun --standalone --nproc-per-node=4 examples/ddp_hooks.py --hook all --steps 50

``HOOKS`` below maps each name to the lines that register it on the DDP model ``model``;
the rest is an ordinary DDP training loop (:func:`commlib.train.train_ddp`). Rank 0
prints, per hook, the test accuracy and what the hook's statistics say.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from commlib import adaptive, compress, ddp, feedback, robust
from commlib.ddp.robust import RobustState, robust_hook
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_ddp


def fp16(model: DDP) -> ddp.CommState:
    state = ddp.CommState(model, compressor=compress.FP16())
    model.register_comm_hook(state, ddp.hook)
    return state


def topk_ef(model: DDP) -> ddp.CommState:
    state = ddp.CommState(model, compressor=compress.TopK(density=0.05), feedback=feedback.EF21())
    model.register_comm_hook(state, ddp.hook)
    return state


def qsgd(model: DDP) -> ddp.CommState:
    state = ddp.CommState(model, compressor=compress.QSGD(bits=4))
    model.register_comm_hook(state, ddp.hook)
    return state


def powersgd(model: DDP) -> ddp.CommState:
    state = ddp.CommState(model, compressor=compress.PowerSGD(rank=4))
    model.register_comm_hook(state, ddp.hook)
    return state


def sketch(model: DDP) -> ddp.CommState:
    state = ddp.CommState(model, compressor=compress.Sketch(ratio=4))
    model.register_comm_hook(state, ddp.hook)
    return state


def lgreco(model: DDP) -> ddp.CommState:
    policy = adaptive.LGreCo(period=20, window=5, default_option="topk:0.1", world_size=dist.get_world_size())
    state = ddp.CommState(model, policy=policy)
    model.register_comm_hook(state, ddp.hook)
    return state


def flag(model: DDP) -> RobustState:
    state = RobustState(model, robust.FlagAggregator(m=2))
    model.register_comm_hook(state, robust_hook)
    return state


HOOKS: dict[str, Callable[[DDP], ddp.CommState | RobustState]] = {
    "fp16": fp16, "topk-ef": topk_ef, "qsgd": qsgd, "powersgd": powersgd, "sketch": sketch, "lgreco": lgreco,
    "flag": flag,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hook", choices=[*HOOKS, "all"], default="topk-ef")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_digits()
    cfg = TrainConfig(steps=args.steps)
    for name in HOOKS if args.hook == "all" else [args.hook]:
        model = mlp(features=data.features, classes=data.classes)
        wrapped = DDP(model)
        state = HOOKS[name](wrapped)
        result = train_ddp(wrapped, make_optimizer(model, cfg), data, cfg, rank, world)
        if rank == 0:
            stats = state.stats.summary() if isinstance(state, ddp.CommState) else f"{state.step} robust steps"
            print(f"{name}: accuracy {result.accuracy:.3f}; {stats}")
    dist.barrier()
    # DDP's reducer and the hook's finished futures still hold the group: release them (and collect any
    # reference cycles) while the interpreter is whole, so the group's threads stop cleanly at teardown
    del wrapped, state
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
