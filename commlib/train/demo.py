"""``make demo``: a short 4-worker torchrun training on digits, one run per hook, and a table.

Run with ``torchrun --standalone --nproc-per-node=4 -m commlib.train.demo``.
Every rank trains the same MLP under each hook; rank 0 prints hook, bytes sent
per step, compression ratio vs fp32, test accuracy and wall time.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import ddp, ops
from ..compress import QSGD, Compressor, Identity, PowerSGD, RandK, TopK
from .data import load_digits
from .loop import TrainConfig, make_optimizer, train_ddp
from .models import mlp

HOOKS: dict[str, Compressor] = {
    "identity (fp32)": Identity(),
    "topk 10%": TopK(density=0.1),
    "randk 25%": RandK(density=0.25),
    "qsgd 4-bit": QSGD(bits=4),
    "powersgd rank 4": PowerSGD(rank=4),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_digits()
    cfg = TrainConfig(steps=args.steps)
    rows = []
    for name, compressor in HOOKS.items():
        model = mlp(features=data.features, classes=data.classes, hidden=args.hidden, seed=cfg.seed)
        wrapped = DDP(model)
        state = ddp.CommState(wrapped, compressor=compressor)
        wrapped.register_comm_hook(state, ddp.hook)
        result = train_ddp(wrapped, make_optimizer(model, cfg), data, cfg, rank, world)
        per_step = state.stats.as_dict()["per_step"]
        rows.append((name, per_step["sent_bytes"], per_step["ratio_vs_fp32"], result.accuracy, result.seconds))
    if rank == 0:
        print(f"\ncommlib demo: digits MLP ({sum(p.numel() for p in model.parameters())} parameters), "
              f"{world} gloo workers, {cfg.steps} steps, kernels: {ops.backend()}")
        print(f"{'hook':<18}{'bytes/step':>12}{'ratio':>8}{'accuracy':>10}{'time (s)':>10}")
        for name, sent, ratio, acc, secs in rows:
            print(f"{name:<18}{sent:>12.0f}{ratio:>7.1f}x{acc:>10.3f}{secs:>10.2f}")
    dist.barrier()  # every rank's last collective has completed before any rank tears its group down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
