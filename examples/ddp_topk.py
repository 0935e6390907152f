"""Train the digits MLP with top-k compressed gradients on DDP.

    torchrun --standalone --nproc-per-node=4 examples/ddp_topk.py --density 0.05

Everything commlib needs is the two lines marked below; the rest is an ordinary
DDP training script. A checkpoint of the model, the optimizer and the hook's
state is written at the end (``--save``) and restored with ``--resume``.
"""

from __future__ import annotations

import argparse
import gc
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from commlib import ddp
from commlib.compress import TopK
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_ddp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--save", default=None, help="write a checkpoint here at the end")
    parser.add_argument("--resume", default=None, help="restore this checkpoint first")
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_digits()
    cfg = TrainConfig(steps=args.steps)
    model = mlp(features=data.features, classes=data.classes)
    wrapped = DDP(model)
    optimizer = make_optimizer(model, cfg)

    state = ddp.CommState(wrapped, compressor=TopK(density=args.density))  # commlib, 1 of 2
    wrapped.register_comm_hook(state, ddp.hook)  # commlib, 2 of 2

    start = 0
    if args.resume:
        ckpt = torch.load(args.resume, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state.load_state_dict(ckpt["comm"])
        start = ckpt["step"]
    result = train_ddp(wrapped, optimizer, data, cfg, rank, world, start=start)
    if rank == 0:
        print(f"top-k {args.density:.0%}: test accuracy {result.accuracy:.3f}, {result.seconds:.1f} s")
        print(state.stats.summary())
        if args.save:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "comm": state.state_dict(), "step": cfg.steps}, args.save)
    dist.barrier()  # every rank's last collective has completed before any rank tears its group down
    # DDP's reducer and the hook's finished futures still hold the group: release them (and collect any
    # reference cycles) while the interpreter is whole, so the group's threads stop cleanly at teardown
    del wrapped, state
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
