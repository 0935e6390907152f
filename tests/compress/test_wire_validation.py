"""Bad configurations, malformed payloads from peers, exact wire bytes, and the dtypes of the exchange path."""

from __future__ import annotations

import copy

import pytest
import torch
from protocol_utils import recorded

from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import QSGD, PowerSGD, RandK, Sign, TensorContext, TopK
from commlib.errors import WireFormatError

CTX = TensorContext("layer.w", 0, 0, 0, 2)
COMPRESSORS = [
    TopK(density=0.1),
    TopK(k=3),
    RandK(density=0.1),
    RandK(density=0.3, unbiased=True),
    QSGD(bits=2),
    QSGD(levels=5, bucket_size=10, norm="max"),
    QSGD(bits=8, bucket_size=7),
    Sign(),
    Sign(chunk_size=5),
    PowerSGD(rank=2),
    PowerSGD(rank=8, warm_start=False),
]


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda: TopK(k=5).count(3), "exceeds"),
        (lambda: TopK(density=0.0), "density"),
        (lambda: TopK(density=1.5), "density"),
        (lambda: TopK(density="0.1"), "density"),
        (lambda: TopK(k=True), "k"),
        (lambda: TopK(), "exactly one"),
        (lambda: RandK(density=0.0), "density"),
        (lambda: RandK(density=1.01), "density"),
        (lambda: RandK(density=float("nan")), "density"),
        (lambda: QSGD(bits=3), "bits"),
        (lambda: QSGD(levels=0), "levels"),
        (lambda: QSGD(levels=128), "levels"),
        (lambda: QSGD(bits=4, levels=7), "exactly one"),
        (lambda: QSGD(), "exactly one"),
        (lambda: QSGD(bits=4, norm="l3"), "norm"),
        (lambda: QSGD(bits=4, bucket_size=0), "bucket_size"),
        (lambda: Sign(chunk_size=0), "chunk_size"),
        (lambda: PowerSGD(rank=0), "rank"),
        (lambda: PowerSGD(orthogonalization_epsilon=-1e-8), "orthogonalization_epsilon"),
        (lambda: PowerSGD(orthogonalization_epsilon=float("nan")), "orthogonalization_epsilon"),
    ],
)
def test_bad_configuration_raises_value_error_naming_the_problem(make, problem):
    with pytest.raises(ValueError, match=problem):
        make()


def payloads(c, d: int = 40, n: int = 2) -> torch.Tensor:
    """Valid payloads of ``n`` ranks for a ``d``-element tensor, stacked as all-gather delivers them."""
    xs = [torch.randn(d, generator=torch.Generator().manual_seed(r)) for r in range(n)]
    return torch.stack([c.encode(x, TensorContext("layer.w", 0, 0, r, n)) for r, x in enumerate(xs)])


def set_float(parts: torch.Tensor, byte_offset: int, value: float) -> None:
    parts[1, byte_offset : byte_offset + 4] = torch.tensor([value], dtype=torch.float32).view(torch.uint8)


def set_int(parts: torch.Tensor, byte_offset: int, value: int) -> None:
    parts[1, byte_offset : byte_offset + 4] = torch.tensor([value], dtype=torch.int32).view(torch.uint8)


def topk_index(k: int, i: int) -> int:
    return 4 * k + 4 * i


@pytest.mark.parametrize(
    "corrupt, problem",
    [
        (lambda p: set_int(p, topk_index(4, 3), 40), "indices"),
        (lambda p: set_int(p, topk_index(4, 0), -1), "indices"),
        (lambda p: set_int(p, topk_index(4, 0), 39), "indices"),  # unsorted
        (lambda p: set_int(p, topk_index(4, 1), int(p[1, topk_index(4, 0)])), "indices"),  # duplicate
        (lambda p: set_float(p, 0, float("nan")), "non-finite"),
        (lambda p: set_float(p, 4, float("inf")), "non-finite"),
    ],
)
def test_topk_rejects_malformed_payloads(corrupt, problem):
    c = TopK(k=4)
    parts = payloads(c)
    c.decode_all(parts.clone(), torch.Size([40]), CTX)
    corrupt(parts)
    with pytest.raises(WireFormatError, match=problem):
        c.decode_all(parts, torch.Size([40]), CTX)


@pytest.mark.parametrize(
    "c, corrupt, problem",
    [
        (QSGD(bits=2, bucket_size=16), lambda p: p[1, 12:].fill_(0xFF), r"code exceeds 2 \* levels"),
        (QSGD(levels=5, bucket_size=16), lambda p: p[1, 12].fill_(0x0B), r"code exceeds 2 \* levels"),
        (QSGD(bits=8, bucket_size=16), lambda p: p[1, -1].fill_(0xFF), r"code exceeds 2 \* levels"),
        (QSGD(bits=4, bucket_size=16), lambda p: set_float(p, 4, -1.0), "non-negative"),
        (QSGD(bits=4, bucket_size=16), lambda p: set_float(p, 0, float("nan")), "finite"),
        (QSGD(bits=4, bucket_size=16), lambda p: set_float(p, 8, float("inf")), "finite"),
        (Sign(chunk_size=16), lambda p: set_float(p, 4, -1.0), "non-negative"),
        (Sign(chunk_size=16), lambda p: set_float(p, 0, float("nan")), "finite"),
    ],
)
def test_quantizers_reject_malformed_payloads(c, corrupt, problem):
    parts = payloads(c)
    c.decode_all(parts.clone(), torch.Size([40]), CTX)
    corrupt(parts)
    with pytest.raises(WireFormatError, match=problem):
        c.decode_all(parts, torch.Size([40]), CTX)
    with pytest.raises(WireFormatError, match=problem):  # the check that runs without decoding refuses it too
        c.check_payload(parts[1], torch.Size([40]), CTX)
    # error feedback's exchange decodes its results on use: it must refuse the gathered rows before returning them
    gen = c.exchange_local(torch.randn(40), CTX, sparse=True)
    next(gen)
    with pytest.raises(WireFormatError, match=problem):
        gen.send(parts)


@pytest.mark.parametrize("c", [TopK(k=4), QSGD(bits=4, bucket_size=16), QSGD(levels=1), Sign(chunk_size=16)])
@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_payload_length_is_rejected(c, delta):
    parts = payloads(c)
    wrong = parts[:, :-1] if delta < 0 else torch.cat([parts, parts[:, :1]], dim=1)
    with pytest.raises(WireFormatError, match="byte"):
        c.decode_all(wrong.contiguous(), torch.Size([40]), CTX)
    if not isinstance(c, TopK):
        with pytest.raises(WireFormatError, match="byte"):
            c.decode_add(wrong[0].contiguous(), torch.zeros(40), CTX)
        with pytest.raises(WireFormatError, match="byte"):
            c.check_payload(wrong[0].contiguous(), torch.Size([40]), CTX)
        gen = c.exchange_local(torch.randn(40), CTX, sparse=True)
        next(gen)
        with pytest.raises(WireFormatError, match="byte"):
            gen.send(wrong.contiguous())
        with pytest.raises(WireFormatError, match="uint8"):
            c.decode_add(parts[0].to(torch.int16), torch.zeros(40), CTX)


def test_randk_rejects_non_finite_sums_and_wrong_sizes():
    c = RandK(density=0.25)
    gen = c.exchange(torch.randn(40), CTX)
    request = next(gen)
    bad = request.tensor.clone()
    bad[2] = float("nan")
    with pytest.raises(WireFormatError, match="non-finite"):
        gen.send(bad)
    with pytest.raises(WireFormatError, match="10 values"):
        c.decode(torch.zeros(11), torch.Size([40]), CTX)
    with pytest.raises(WireFormatError, match="10 values"):
        c.decode(torch.zeros(10, dtype=torch.float64), torch.Size([40]), CTX)


def test_powersgd_rejects_non_finite_q_round():
    c = PowerSGD(rank=2)
    gen = c.exchange(torch.randn(8, 5), CTX)
    p_request = next(gen)
    q_request = gen.send(p_request.tensor.clone())
    bad = q_request.tensor.clone()
    bad[-1, -1] = float("-inf")
    with pytest.raises(WireFormatError, match="non-finite"):
        gen.send(bad)
    assert c.state_dict() == {"q": {}}


@pytest.mark.parametrize("c", COMPRESSORS, ids=repr)
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (3, 43), (129, 2), (10, 10, 10)])
def test_wire_bytes_equal_the_bytes_put_on_the_wire(c, shape):
    shape = torch.Size(shape)
    if not c.compressible(shape):
        # only TopK(k=3) on a 1-element tensor: it must say so, and the exchange then sends it dense
        assert getattr(c, "k", None) is not None and c.k > shape.numel()
        return
    n = 3
    xs = [torch.randn(shape, generator=torch.Generator().manual_seed(r)) for r in range(n)]
    logs = [[] for _ in range(n)]
    ranks = [copy.deepcopy(c) for _ in range(n)]
    pairs = enumerate(zip(ranks, xs, strict=True))
    protocols = [recorded(w.exchange(x, TensorContext("w", 5, 1, r, n)), logs[r]) for r, (w, x) in pairs]
    run_lockstep(protocols)
    for log in logs:
        assert sum(req.tensor.numel() * req.tensor.element_size() for req in log) == c.wire_bytes(shape).total


@pytest.mark.parametrize("c", COMPRESSORS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_gradient_exchange_accepts_float_dtypes(c, dtype):
    """The exchange casts 16- and 64-bit gradients to float32: same bits as exchanging the float32 cast directly."""
    n = 2
    grads = [torch.randn(12, 9, generator=torch.Generator().manual_seed(r)).to(dtype) for r in range(n)]
    config = ExchangeConfig(start_step=0, min_numel=1, min_compression_rate=0.0)
    engines = [GradientExchange(copy.deepcopy(c), r, n, config) for r in range(n)]
    results = run_lockstep([e.protocol([("layer.w", g)], step=4) for e, g in zip(engines, grads, strict=True)])
    ranks = [copy.deepcopy(c) for _ in range(n)]
    pairs = enumerate(zip(ranks, grads, strict=True))
    direct = run_lockstep([w.exchange(g.float(), TensorContext("layer.w", 4, 0, r, n)) for r, (w, g) in pairs])
    for (tensors, report), expected in zip(results, direct, strict=True):
        assert report.compressed_numel == 12 * 9
        assert tensors[0].dtype == torch.float32
        assert torch.equal(tensors[0], expected)
