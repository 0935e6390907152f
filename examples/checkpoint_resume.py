"""Checkpoint and resume a compressed DDP run: the resumed run ends with exactly the uninterrupted run's parameters.

    torchrun --standalone --nproc-per-node=4 examples/checkpoint_resume.py --steps 100 --ckpt /tmp/ckpt

1. Train the digits MLP for ``--steps`` steps under top-k + EF21 without a break.
2. Train a fresh copy for half the steps; every rank saves the model, the optimizer and
   its ``CommState.state_dict()`` (tensors and plain values: ``torch.load(..., weights_only=True)``
   reads it) with the step to ``CKPT.rankR``. Each rank saves its own: error feedback keeps
   each rank's own compression error, so the hook's state differs between ranks.
3. Build everything anew, every rank loads its checkpoint, train the remaining steps.
4. Rank 0 prints whether the parameters of runs 1 and 3 are bitwise equal.
"""

from __future__ import annotations

import argparse
import gc
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from commlib import compress, ddp, feedback
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_ddp


def fresh(data):
    """Model (inner and DDP-wrapped), optimizer and the hook's state, all from the same seeds."""
    model = mlp(features=data.features, classes=data.classes)
    wrapped = DDP(model)
    state = ddp.CommState(wrapped, compressor=compress.TopK(density=0.05), feedback=feedback.EF21())
    wrapped.register_comm_hook(state, ddp.hook)
    return model, wrapped, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--ckpt", default="checkpoint", help="rank R's half-way checkpoint goes to CKPT.rankR")
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_digits()
    cfg = TrainConfig(steps=args.steps)
    half = args.steps // 2

    model, wrapped, _ = fresh(data)  # 1. without a break
    train_ddp(wrapped, make_optimizer(model, cfg), data, cfg, rank, world)
    reference = [p.detach().clone() for p in model.parameters()]

    model, wrapped, state = fresh(data)  # 2. half-way, then a checkpoint
    optimizer = make_optimizer(model, cfg)
    train_ddp(wrapped, optimizer, data, cfg, rank, world, stop=half)
    mine = f"{args.ckpt}.rank{rank}"  # per rank: each rank's error-feedback buffers hold its own error
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "comm": state.state_dict(),
                "step": half}, mine)

    model, wrapped, state = fresh(data)  # 3. resume
    optimizer = make_optimizer(model, cfg)
    ckpt = torch.load(mine, weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    state.load_state_dict(ckpt["comm"])
    result = train_ddp(wrapped, optimizer, data, cfg, rank, world, start=ckpt["step"])

    same = all(torch.equal(a, b) for a, b in zip(reference, model.parameters()))
    if rank == 0:
        print(f"resumed at step {ckpt['step']} of {args.steps}: accuracy {result.accuracy:.3f}; "
              f"parameters equal to the uninterrupted run: {same}")
    dist.barrier()
    # DDP's reducer and the hook's finished futures still hold the group: release them (and collect any
    # reference cycles) while the interpreter is whole, so the group's threads stop cleanly at teardown
    del wrapped, state
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
