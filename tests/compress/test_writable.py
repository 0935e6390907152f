"""Compressors decode into a handed-over input (`TensorContext.writable`: the DDP bucket), with the same bits.

Gather compressors (top-k, QSGD, sign) and linear ones (sketches, random-k,
the DP sketch), whose transpose writes the mean straight into the input once
the payload is encoded.
"""

from __future__ import annotations

import copy

import pytest
import torch

from commlib.comm.local import run_lockstep
from commlib.compress import QSGD, RandK, Sign, Sketch, TensorContext, TopK
from commlib.privacy import DPSketch

COMPRESSORS = [
    TopK(0.1), QSGD(bits=4, bucket_size=16), Sign(),
    Sketch(ratio=4, block=16), Sketch(ratio=4, block=16, mode="projection"),
    Sketch(ratio=4, family="countsketch", rows=3), Sketch(ratio=4, family="gaussian", block=16), RandK(0.25),
    DPSketch(noise_multiplier=1.0, max_norm=1.0, noise_seed=7, ratio=4, block=16),
]


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=lambda c: f"{c.name}-{getattr(c, 'family', '')}")
def test_handed_over_input_receives_the_mean_with_the_same_bits(compressor) -> None:
    n = 3
    xs = [torch.randn(7, 9, generator=torch.Generator().manual_seed(r)) for r in range(n)]

    def run(writable: bool, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        workers = [copy.deepcopy(compressor) for _ in range(n)]
        return run_lockstep([c.exchange(x, TensorContext("w", 4, 1, r, n, writable=writable))
                             for r, (c, x) in enumerate(zip(workers, inputs))])

    kept = [x.clone() for x in xs]
    plain = run(False, kept)
    assert all(torch.equal(k, x) for k, x in zip(kept, xs))  # not handed over: never written
    handed = [x.clone() for x in xs]
    written = run(True, handed)
    for x, out, ref in zip(handed, written, plain):
        assert out.data_ptr() == x.data_ptr() and out.shape == x.shape
        assert torch.equal(x, ref)


def test_a_non_contiguous_input_is_not_written() -> None:
    n = 2
    inputs = [torch.randn(9, 7, generator=torch.Generator().manual_seed(r)).t() for r in range(n)]
    before = [x.clone() for x in inputs]
    outs = run_lockstep([TopK(0.2).exchange(x, TensorContext("w", 0, 0, r, n, writable=True))
                         for r, x in enumerate(inputs)])
    assert all(torch.equal(x, b) for x, b in zip(inputs, before))
    assert all(o.shape == (7, 9) and o.data_ptr() != x.data_ptr() for o, x in zip(outs, inputs))
