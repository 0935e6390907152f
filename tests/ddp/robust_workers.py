"""Worker functions for the robust-hook tests, run in spawned gloo processes (importable by the children)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from commlib import robust
from commlib.compress import TopK
from commlib.ddp.robust import RobustState, robust_hook
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_ddp


def _batch(rank: int):
    data = load_digits()
    return data.x_train[rank * 24 : (rank + 1) * 24], data.y_train[rank * 24 : (rank + 1) * 24]


def model_wide(rank: int, world: int, make_rule) -> dict:
    """The second backward (DDP has rebuilt its buckets to many tiny ones) and the rule on whole gradients."""
    model = mlp(hidden=64, depth=2, seed=0)
    wrapped = DDP(model, bucket_cap_mb=0.002)
    state = RobustState(wrapped, make_rule())
    wrapped.register_comm_hook(state, robust_hook)
    x, y = _batch(rank)
    for _ in range(2):
        wrapped.zero_grad(set_to_none=True)
        F.cross_entropy(wrapped(x), y).backward()
    hooked = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    rows = []
    for r in range(world):
        replica = mlp(hidden=64, depth=2, seed=0)
        xr, yr = _batch(r)
        F.cross_entropy(replica(xr), yr).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in replica.parameters()]))
    stacked = torch.stack(rows)
    return {"hooked": hooked, "expected": make_rule()(stacked), "rows": stacked,
            "buckets": state.buckets_last_step}


class WidthProbe:
    """A test rule that answers with the width it was given: d everywhere (whole gradients) or a bucket's size."""

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return torch.full((X.shape[1],), float(X.shape[1]))


def byzantine_training(rank: int, world: int, rules: dict, attack, steps: int, **options) -> dict:
    """Train digits under each named rule with rank 1 attacking; accuracy, faulty rows and final parameters."""
    out = {}
    for name, make_rule in rules.items():
        model = mlp(seed=0)
        wrapped = DDP(model, bucket_cap_mb=0.05)
        state = RobustState(wrapped, make_rule(), byzantine=[1], attack=attack, **options)
        wrapped.register_comm_hook(state, robust_hook)
        cfg = TrainConfig(steps=steps, seed=0)
        result = train_ddp(wrapped, make_optimizer(model, cfg), load_digits(), cfg, rank, world)
        out[name] = {
            "accuracy": result.accuracy,
            "faulty_rows": state.faulty_rows,
            "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
        }
    return out


def out_of_range_indices(payload: torch.Tensor) -> torch.Tensor:
    """Corrupt a top-k payload: every index becomes 2**30 (far outside any tensor)."""
    tampered = payload.clone()
    k = tampered.numel() // 8
    tampered[4 * k :].view(torch.int32).fill_(2**30)
    return tampered


def tampered_topk(rank: int, world: int, steps: int) -> dict:
    return byzantine_training(rank, world, {"median": robust.CoordinateMedian}, robust.SignFlip(), steps,
                              compressor=TopK(density=0.1), tamper=out_of_range_indices)["median"]
