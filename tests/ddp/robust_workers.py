"""Worker functions for the robust-hook tests, run in spawned gloo processes (importable by the children)."""

from __future__ import annotations

import torch
import torch.distributed as dist
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


def byzantine_training(rank: int, world: int, rules: dict, attack, steps: int, batch: int = 16, **options) -> dict:
    """Train digits under each named rule with rank 1 attacking; accuracy, faulty rows and final parameters.

    With ``worker_momentum`` in ``options`` the optimizer has no momentum of its own.
    """
    out = {}
    for name, make_rule in rules.items():
        model = mlp(seed=0)
        wrapped = DDP(model, bucket_cap_mb=0.05)
        state = RobustState(wrapped, make_rule(), byzantine=[1], attack=attack, **options)
        wrapped.register_comm_hook(state, robust_hook)
        momentum = 0.0 if options.get("worker_momentum") else 0.9
        cfg = TrainConfig(steps=steps, batch_per_worker=batch, momentum=momentum, seed=0)
        result = train_ddp(wrapped, make_optimizer(model, cfg), load_digits(), cfg, rank, world)
        out[name] = {
            "accuracy": result.accuracy,
            "faulty_rows": state.faulty_rows,
            "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
        }
    return out


def alie_training(rank: int, world: int, rules: dict, steps: int) -> dict:
    """The trainer's protocol (64 examples per worker, worker momentum 0.9) with rank 1 running ALIE at z = 4."""
    return byzantine_training(rank, world, rules, robust.ALIE(z=4.0), steps, 64, worker_momentum=0.9)


def out_of_range_indices(payload: torch.Tensor) -> torch.Tensor:
    """Corrupt a top-k payload: every index becomes 2**30 (far outside any tensor)."""
    tampered = payload.clone()
    k = tampered.numel() // 8
    tampered[4 * k :].view(torch.int32).fill_(2**30)
    return tampered


def truncated(payload: torch.Tensor) -> torch.Tensor:
    """A top-k payload one (value, index) pair short: the wrong size."""
    return payload[:-8].clone()


def overlong(payload: torch.Tensor) -> torch.Tensor:
    """A valid top-k payload with 16 extra bytes appended: the wrong size, even though its prefix decodes."""
    return torch.cat([payload, torch.zeros(16, dtype=torch.uint8)])


TAMPERS = {"out_of_range": out_of_range_indices, "truncated": truncated, "overlong": overlong}


def _forbid_object_collectives() -> None:
    """Make every pickling collective of torch.distributed raise: the robust hook must never need one."""
    def refuse(*args, **kwargs):
        raise AssertionError("a pickled object was about to cross ranks")

    c10d = dist.distributed_c10d
    for name in ("all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list",
                 "send_object_list", "recv_object_list"):
        setattr(dist, name, refuse)
        setattr(c10d, name, refuse)
    c10d._object_to_tensor = refuse
    c10d._tensor_to_object = refuse


def tampered_topk(rank: int, world: int, steps: int) -> dict:
    """Rank 1 sends malformed top-k payloads (one kind per run) while object collectives are forbidden."""
    _forbid_object_collectives()
    return {name: byzantine_training(rank, world, {"median": robust.CoordinateMedian}, robust.SignFlip(), steps,
                                     compressor=TopK(density=0.1), tamper=tamper)["median"]
            for name, tamper in TAMPERS.items()}


def sharded_rules() -> dict:
    """Rules the sharded mode supports, by name: Gram rules, coordinate-wise rules, and both behind NNM."""
    return {
        "flag": lambda: robust.FlagAggregator(m=2),
        "krum": lambda: robust.Krum(f=0),
        "multi_krum": lambda: robust.MultiKrum(f=0, m=2),
        "geomed": robust.GeometricMedian,
        "mean": robust.Mean,
        "median": robust.CoordinateMedian,
        "trimmed_mean": lambda: robust.TrimmedMean(f=1),
        "meamed": lambda: robust.Meamed(f=1),
        "phocas": lambda: robust.Phocas(f=1),
        "nnm_trimmed_mean": lambda: robust.Compose([robust.NNM(f=1)], robust.TrimmedMean(f=1)),
        "nnm_flag": lambda: robust.Compose([robust.NNM(f=1)], robust.FlagAggregator(m=2)),
    }


def worker_vector(rank: int, d: int, nan_at: int | None = None) -> torch.Tensor:
    """Rank ``rank``'s test gradient: a shared direction plus its own noise; optionally one NaN coordinate."""
    common = torch.randn(d, generator=torch.Generator().manual_seed(99))
    own = torch.randn(d, generator=torch.Generator().manual_seed(rank))
    x = common + 0.5 * own
    if nan_at is not None:
        x[nan_at] = float("nan")
    return x


def sharded_vs_gathered(rank: int, world: int, d: int, nan_rank: int | None = None) -> dict:
    """Every supported rule's aggregate of the same vectors, through the gathered and the sharded protocol."""
    from commlib.comm import torch_driver
    from commlib.ddp.robust import robust_protocol, sharded_protocol

    model = DDP(mlp(hidden=8, depth=1, seed=0))
    flat = worker_vector(rank, d, nan_at=d - 2 if rank == nan_rank else None)
    out = {}
    for name, make_rule in sharded_rules().items():
        gathered = RobustState(model, make_rule())
        sharded = RobustState(model, make_rule(), sharded=True)
        out[name] = {
            "gathered": torch_driver.run(robust_protocol(gathered, flat, 3)),
            "sharded": torch_driver.run(sharded_protocol(sharded, flat, 3)),
            "faulty": (gathered.faulty_rows, sharded.faulty_rows),
        }
    return out


def sharded_training(rank: int, world: int, steps: int) -> dict:
    """Train digits with rank 1 running ALIE under Flag, gathered and sharded; final parameters of each."""
    out = {}
    for sharded in (False, True):
        out[sharded] = byzantine_training(rank, world, {"flag": lambda: robust.FlagAggregator(m=2)},
                                          robust.ALIE(z=4.0), steps, sharded=sharded)["flag"]
    return out


def momentum_placement(rank: int, world: int, steps: int) -> dict:
    """Mean aggregation, momentum 0.9 on the workers (plain SGD) vs in the optimizer: parameters and states.

    Many tiny buckets, so DDP's bucket rebuild after the first step reorders them.
    """
    out = {}
    for on_workers in (True, False):
        model = mlp(hidden=64, depth=2, seed=0)
        wrapped = DDP(model, bucket_cap_mb=0.002)
        state = RobustState(wrapped, robust.Mean(), worker_momentum=0.9 if on_workers else 0.0)
        wrapped.register_comm_hook(state, robust_hook)
        cfg = TrainConfig(steps=steps, momentum=0.0 if on_workers else 0.9, seed=0)
        train_ddp(wrapped, make_optimizer(model, cfg), load_digits(), cfg, rank, world)
        out[on_workers] = {"params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
                           "state": state.state_dict(), "buckets": state.buckets_last_step}
    return out
