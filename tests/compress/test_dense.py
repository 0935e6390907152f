"""Identity, FP16 and BF16: one native all-reduce of x/n in the wire dtype, exact byte counts."""

from __future__ import annotations

import pytest
import torch
from protocol_utils import recorded

from commlib.comm.collectives import AllReduce
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import BF16, FP16, Identity, TensorContext

CASTS = [(Identity(), torch.float32, 1e-6), (FP16(), torch.float16, 1e-3), (BF16(), torch.bfloat16, 1e-2)]


@pytest.mark.parametrize("c, wire_dtype, rtol", CASTS)
@pytest.mark.parametrize("shape", [(1,), (7,), (13, 11), (3, 4, 5)])
def test_one_native_all_reduce_of_the_mean(c, wire_dtype, rtol, shape):
    n = 3
    xs = [torch.randn(shape, generator=torch.Generator().manual_seed(r)) for r in range(n)]
    logs = [[] for _ in range(n)]
    out = run_lockstep([recorded(c.exchange(x, TensorContext("w", 0, 0, r, n)), logs[r]) for r, x in enumerate(xs)])
    mean = sum(xs) / n
    for o in out:
        assert o.dtype == torch.float32 and o.shape == shape
        torch.testing.assert_close(o, mean, rtol=rtol, atol=rtol)
    (request,) = logs[0]
    assert isinstance(request, AllReduce) and not request.ordered and request.tensor.dtype == wire_dtype
    sent = request.tensor.numel() * request.tensor.element_size()
    assert sent == c.wire_bytes(torch.Size(shape)).total == torch.Size(shape).numel() * wire_dtype.itemsize


@pytest.mark.parametrize("c, wire_dtype, rtol", CASTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_gradient_exchange_accepts_every_float_dtype(c, wire_dtype, rtol, dtype):
    n = 2
    grads = [torch.randn(6, 5, generator=torch.Generator().manual_seed(r)).to(dtype) for r in range(n)]
    engines = [GradientExchange(c, r, n, ExchangeConfig(start_step=0)) for r in range(n)]
    results = run_lockstep([e.protocol([("layer.weight", g)], step=3) for e, g in zip(engines, grads, strict=True)])
    mean = sum(g.float() for g in grads) / n
    for tensors, report in results:
        assert tensors[0].dtype == torch.float32
        torch.testing.assert_close(tensors[0], mean, rtol=rtol, atol=rtol)
        assert report.sent == c.wire_bytes(torch.Size([6, 5])).total


def test_identity_is_exactly_the_sum_of_x_over_n():
    xs = [torch.randn(4, 4, generator=torch.Generator().manual_seed(r)) for r in range(4)]
    out = run_lockstep([Identity().exchange(x, TensorContext("w", 0, 0, r, 4)) for r, x in enumerate(xs)])
    expected = xs[0] / 4
    for x in xs[1:]:
        expected = expected + x / 4
    assert torch.equal(out[0], expected)
