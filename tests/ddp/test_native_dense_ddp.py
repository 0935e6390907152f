"""``CommState(native_dense=True)`` under DDP on gloo: every rank ends with the same bits, close to the simulator."""

from __future__ import annotations

import torch
from dist_utils import run_workers

from commlib.compress import TopK
from commlib.sim import Simulator
from commlib.train import TrainConfig, load_digits, make_optimizer, mlp, train_ddp, train_simulated

WORLD = 3  # with 2 ranks ÷2 is exact, so x₀/2 + x₁/2 = (x₀ + x₁)/2 bit for bit: no path would show
CFG = TrainConfig(steps=6, lr=0.05)


def _train(rank: int, world: int, native: bool) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from commlib import ddp

    model = mlp(hidden=64)
    wrapped = DDP(model, bucket_cap_mb=0.01)  # several buckets
    state = ddp.CommState(wrapped, compressor=TopK(density=0.1), start_step=3, native_dense=native)
    wrapped.register_comm_hook(state, ddp.hook)
    train_ddp(wrapped, make_optimizer(model, CFG), load_digits(), CFG, rank, world)
    return {"params": [p.detach().clone() for p in model.parameters()], "fingerprint": state.config()}


def test_native_dense_warm_up_agrees_across_ranks_and_with_the_simulator() -> None:
    native = run_workers(_train, WORLD, True, timeout=300)
    assert native[0]["fingerprint"]["native_dense"] is True
    for other in native[1:]:
        assert all(torch.equal(a, b) for a, b in zip(native[0]["params"], other["params"]))
    torch.set_num_threads(1)
    model = mlp(hidden=64)
    train_simulated(model, make_optimizer(model, CFG), load_digits(), CFG, Simulator(TopK(density=0.1), WORLD,
                                                                                      start_step=3))
    for a, b in zip(model.parameters(), native[0]["params"]):
        torch.testing.assert_close(a.detach(), b, rtol=1e-4, atol=1e-6)  # another summation order, same math
    # the warm-up went native: ÷n before gloo's sum, not the simulator's rank-ordered sum ÷ n
    assert not all(torch.equal(a.detach(), b) for a, b in zip(model.parameters(), native[0]["params"]))
