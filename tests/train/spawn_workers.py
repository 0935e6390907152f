"""Worker functions for tests/train/test_spawn.py (importable, as the spawn context requires)."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist


def rank_sum(rank: int, world: int, offset: int) -> tuple[int, int, float, str]:
    """One all-reduce: every rank should see 0 + 1 + … + (world − 1) + world·offset."""
    t = torch.tensor([float(rank + offset)])
    dist.all_reduce(t)
    return rank, world, float(t), os.environ["MASTER_ADDR"]


def fail_on_rank_one(rank: int, world: int) -> None:
    """Rank 1 raises; the others block in a collective that can never complete."""
    if rank == 1:
        raise ValueError("rank one says no")
    dist.barrier()


def sleep_long(rank: int, world: int) -> None:
    time.sleep(600)


def die_without_report(rank: int, world: int) -> None:
    os._exit(3)
