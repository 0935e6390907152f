"""The Sketch compressor in the exchange: all-reduce of sketches, EF-projection with EF14, payload validation."""

from __future__ import annotations

import pytest
import torch

from commlib.comm.collectives import AllReduce
from commlib.comm.local import run_lockstep
from commlib.compress import TensorContext
from commlib.compress.sketch import Sketch
from commlib.errors import WireFormatError
from commlib.feedback import EF14
from commlib.sim import Simulator

CONFIGS = [dict(family="srht"), dict(family="srht", mode="projection"), dict(family="countsketch", rows=2),
           dict(family="gaussian")]


pytestmark = pytest.mark.usefixtures("one_thread")


def grads(n: int, shape: tuple, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(n)]


@pytest.mark.parametrize("config", CONFIGS)
def test_exchange_is_the_sketch_of_the_mean(config):
    """Linearity end to end: every worker gets the same bits, equal to RᵀR·mean(g) (up to fp32 rounding)."""
    n, shape = 4, (40, 50)
    xs = grads(n, shape)
    c = Sketch(ratio=10, **config)
    out = run_lockstep([c.exchange(x, TensorContext("layer", 9, 3, r, n)) for r, x in enumerate(xs)])
    assert all(torch.equal(o, out[0]) for o in out)
    expected = c.compress(sum(xs) / n, TensorContext("layer", 9, 3, 0, n))
    torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-5)
    assert out[0].shape == shape and out[0].dtype == torch.float32


def test_ef_projection_in_the_simulator():
    """EF14 + projection: the step is P·mean(p) and each worker keeps e = p − Pp (orthogonal to the sketch)."""
    n = 3
    sim = Simulator(Sketch(ratio=8, mode="projection", block=256), n, feedback=EF14(), start_step=0, min_numel=1)
    c = Sketch(ratio=8, mode="projection", block=256)
    xs = grads(n, (16, 32), seed=1)
    mean = sim.exchange([[("w", x)] for x in xs])[0]
    ctx = TensorContext("w", 0, 0, 0, n)
    torch.testing.assert_close(mean, c.compress(sum(xs) / n, ctx), rtol=1e-4, atol=1e-5)
    for worker, x in zip(sim.workers, xs):
        e = worker.feedback.get("w")["e"]
        torch.testing.assert_close(e, x - c.compress(x, ctx), rtol=1e-4, atol=1e-5)
        assert float(c.compress(e, ctx).norm()) < 1e-4 * float(x.norm())
    # next step: the carried error enters the message; the virtual sum of steps plus errors is the sum of gradients
    ys = grads(n, (16, 32), seed=2)
    second = sim.exchange([[("w", y)] for y in ys])[0]
    errors = sum(w.feedback.get("w")["e"] for w in sim.workers) / n
    torch.testing.assert_close(mean + second + errors, (sum(xs) + sum(ys)) / n, rtol=1e-4, atol=1e-4)


def test_wire_bytes_follow_the_ratio():
    for family in ("srht", "countsketch", "gaussian"):
        c = Sketch(ratio=20, family=family)
        s = c.sketch_size(32768)
        assert c.wire_bytes(torch.Size([128, 256])) .total == 4 * s
        assert abs(32768 / s - 20) < 0.5
    assert Sketch(ratio=1000).sketch_size(10) == 1  # at least one value


@pytest.mark.parametrize("bad", ["shape", "nan", "dtype"])
def test_malformed_sum_raises_wire_format_error(bad):
    c = Sketch(ratio=10)
    x = torch.randn(20, 30)
    proto = c.exchange(x, TensorContext("w", 0, 0, 0, 2))
    request = next(proto)
    assert isinstance(request, AllReduce)
    total = request.tensor * 2
    total = {"shape": total[:-1], "nan": total.index_fill(0, torch.tensor([0]), float("nan")),
             "dtype": total.double()}[bad]
    with pytest.raises(WireFormatError):
        proto.send(total)
