"""Exchanges whose received bytes are checked against what the torch driver's collectives move (gloo children)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from commlib.adaptive import LGreCo, TimeCost
from commlib.comm import torch_driver
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.stats import CommStats
from commlib.compress import Identity, PowerSGD, TopK


def _grads(shapes: dict[str, tuple[int, ...]], rank: int, step: int) -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return [(name, torch.randn(shape, generator=gen)) for name, shape in shapes.items()]


# name -> (exchange factory (rank, world), tensor shapes, steps); steps < start_step=2 are the dense warm-up.
SCENARIOS: dict[str, tuple[Callable[[int, int], GradientExchange], dict[str, tuple[int, ...]], list[int]]] = {
    # one dense warm-up step of a 128 KiB weight: the fused ordered all-reduce splits
    "warmup-large": (lambda r, n: GradientExchange(PowerSGD(rank=4), r, n), {"w": (256, 128), "b": (256,)}, [0]),
    # a warm-up step of 4 KiB: one all-gather
    "warmup-small": (lambda r, n: GradientExchange(PowerSGD(rank=4), r, n), {"w": (32, 32), "b": (32,)}, [0]),
    # six PowerSGD P factors of 16 KiB each, fused to 96 KiB (splits); the Q factors, 6 KiB, gather
    "powersgd-fused": (lambda r, n: GradientExchange(PowerSGD(rank=4), r, n),
                       {f"w{i}": (1024, 64) for i in range(6)}, [2, 3]),
    # top-k payloads all-gathered (8-byte aligned) next to a 80 KB dense vector (splits)
    "topk-dense": (lambda r, n: GradientExchange(TopK(density=0.01), r, n),
                   {"w": (200, 100), "v": (301, 7), "b": (20000,)}, [2, 3]),
    # the native all-reduce of a cast
    "identity": (lambda r, n: GradientExchange(Identity(), r, n), {"w": (64, 32)}, [0]),
    # L-GreCo: its decision broadcast (after step 3, a re-solve at τ = 2) counts too
    "lgreco": (lambda r, n: _lgreco_exchange(r, n), {"w": (128, 96), "u": (96, 64)}, [2, 3, 4]),
    # … and with refine_time: the all-gathered table of timed rounds counts too
    "lgreco-refine": (lambda r, n: _lgreco_exchange(r, n, refine=True), {"w": (128, 96), "u": (96, 64)}, [2, 3, 4]),
}


def _lgreco_exchange(rank: int, world: int, refine: bool = False) -> GradientExchange:
    # With refine_time the decisions follow the model each run refits from its own timings (the gloo ranks' and
    # the simulator's differ); a model in which bytes dominate by far takes the same decisions whatever the refit.
    by_bytes = TimeCost(latency={"allreduce": 1e-4, "allgather": 1e-4},
                        seconds_per_byte={"allreduce": 1e-3, "allgather": 1e-3})
    policy = LGreCo(period=2, window=1, default_option="powersgd:2", options=["powersgd:1", "powersgd:2", "fp32"],
                    cost_model=by_bytes if refine else None, refine_time=refine)
    exchange = GradientExchange(Identity(), rank, world, ExchangeConfig(), policy=policy,
                                clock=time.perf_counter if refine else None)
    exchange.register({"w": torch.Size([128, 96]), "u": torch.Size([96, 64])})
    return exchange


class DriverLog:
    """Patches the collectives the torch driver calls; adds up the bytes each delivers to this rank."""

    def __init__(self) -> None:
        self.received = 0
        self.all_to_alls = 0
        self._originals: dict[str, Callable] = {}

    def __enter__(self) -> DriverLog:
        world, rank = dist.get_world_size(), dist.get_rank()
        gather, a2a = torch_driver._all_gather_flat, dist.all_to_all_single
        reduce, broadcast = dist.all_reduce, dist.broadcast
        self._originals = {"gather": gather, "a2a": a2a, "reduce": reduce, "broadcast": broadcast}

        def nbytes(t: torch.Tensor) -> int:
            return t.numel() * t.element_size()

        def gathering(out, src, *args, **kwargs):
            self.received += nbytes(out) - nbytes(src)  # every row but this rank's own
            return gather(out, src, *args, **kwargs)

        def all_to_all(out, src, *args, **kwargs):
            self.all_to_alls += 1
            self.received += nbytes(out) - nbytes(out) // world  # every chunk but this rank's own
            return a2a(out, src, *args, **kwargs)

        def reducing(t, *args, **kwargs):
            self.received += 2 * (world - 1) * nbytes(t) // world  # gloo's ring (the only figure one can state)
            return reduce(t, *args, **kwargs)

        def broadcasting(t, src, *args, **kwargs):
            self.received += 0 if src == rank else nbytes(t)
            return broadcast(t, src, *args, **kwargs)

        torch_driver._all_gather_flat = gathering
        dist.all_to_all_single, dist.all_reduce, dist.broadcast = all_to_all, reducing, broadcasting
        return self

    def __exit__(self, *exc: object) -> None:
        torch_driver._all_gather_flat = self._originals["gather"]
        dist.all_to_all_single = self._originals["a2a"]
        dist.all_reduce, dist.broadcast = self._originals["reduce"], self._originals["broadcast"]


def scenarios(rank: int, world: int) -> dict[str, dict[str, int]]:
    """Each scenario's stats (``received_bytes``) next to the bytes the driver's collectives delivered."""
    out = {}
    for name, (make, shapes, steps) in SCENARIOS.items():
        exchange, stats = make(rank, world), CommStats()
        with DriverLog() as log:
            for step in steps:
                _, report = torch_driver.run(exchange.protocol(_grads(shapes, rank, step), step, last=True))
                stats.add_bucket(report)
                stats.end_step(step)
        out[name] = {"stats": stats.total.received_bytes, "driver": log.received, "all_to_alls": log.all_to_alls}
    return out


def ddp_powersgd(rank: int, world: int) -> dict[str, int]:
    """A DDP run (several buckets, warm-up then PowerSGD): ``state.stats`` against the driver's bytes."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from commlib import ddp
    from commlib.train import mlp

    model = mlp(hidden=256, depth=2)
    wrapped = DDP(model, bucket_cap_mb=0.2)
    state = ddp.CommState(wrapped, compressor=PowerSGD(rank=4), verify_config=False)
    wrapped.register_comm_hook(state, ddp.hook)
    gen = torch.Generator().manual_seed(rank)
    with DriverLog() as log:
        for _ in range(4):
            wrapped.zero_grad()
            x, y = torch.randn(16, 64, generator=gen), torch.randint(0, 10, (16,), generator=gen)
            F.cross_entropy(wrapped(x), y).backward()
    return {"stats": state.stats.total.received_bytes, "driver": log.received, "all_to_alls": log.all_to_alls,
            "buckets": state.stats.total.buckets}
