"""On real gloo process groups: every rank builds a bit-identical R, and sketched exchanges match the simulator."""

from __future__ import annotations

import copy

import pytest
import torch
from dist_utils import run_workers

from commlib.comm import torch_driver
from commlib.comm.local import run_lockstep
from commlib.compress import TensorContext
from commlib.compress.sketch import FetchSGD, Sketch

pytestmark = pytest.mark.timeout(300)

CONFIGS = [dict(family="srht"), dict(family="srht", mode="projection"), dict(family="countsketch", rows=3),
           dict(family="gaussian")]
STEPS = 3


def local_input(rank: int, step: int) -> torch.Tensor:
    return torch.randn(24, 50, generator=torch.Generator().manual_seed(1000 * step + rank))


def compressors() -> list:
    return [Sketch(ratio=6, block=256, **config) for config in CONFIGS] + [FetchSGD(ratio=4, density=0.05)]


def sketch_worker(rank: int, world: int) -> list:
    """Per compressor and step: R applied to a fixed probe (identical on every rank?) and the exchanged mean."""
    probe = torch.randn(24 * 50, generator=torch.Generator().manual_seed(42))
    out = []
    for c in compressors():
        for step in range(STEPS):
            ctx = TensorContext("layer.weight", step, 11, rank, world)
            r_probe = c.operator(probe.numel(), ctx).apply(probe) if isinstance(c, Sketch) else None
            out.append((r_probe, torch_driver.run(c.exchange(local_input(rank, step), ctx))))
    return out


def test_sketches_are_bit_identical_across_ranks_and_match_the_simulator():
    world = 2
    got = run_workers(sketch_worker, world)
    for rank in range(1, world):
        for (r0, m0), (r, m) in zip(got[0], got[rank]):
            assert r0 is None or torch.equal(r0.view(torch.int32), r.view(torch.int32))
            assert torch.equal(m0.view(torch.int32), m.view(torch.int32))
    expected = []
    for c in compressors():
        workers = [copy.deepcopy(c) for _ in range(world)]
        for step in range(STEPS):
            protocols = [w.exchange(local_input(r, step), TensorContext("layer.weight", step, 11, r, world))
                         for r, w in enumerate(workers)]
            expected.append(run_lockstep(protocols)[0])
    for (_, mean), want in zip(got[0], expected):
        assert torch.equal(mean, want)
