"""``ExchangeConfig(native_dense=True)``: all-dense buckets take one native all-reduce, in place; others unchanged."""

from __future__ import annotations

import pytest
import torch
from protocol_utils import recorded

from commlib.adaptive import LGreCo
from commlib.comm.collectives import AllReduce
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import Identity, TopK

N = 3


def _buckets(seed: int) -> list[torch.Tensor]:
    """One flat buffer per rank, viewed as a 16×16 weight and a 16-element bias (DDP's bucket layout)."""
    return [torch.randn(16 * 16 + 16, generator=torch.Generator().manual_seed(seed + r)) for r in range(N)]


def _named(buffer: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    return [("w", buffer[:256].view(16, 16)), ("b", buffer[256:])]


def _step(workers: list[GradientExchange], buffers: list[torch.Tensor], step: int, inplace: bool):
    logs: list[list] = [[] for _ in workers]
    results = run_lockstep([recorded(w.protocol(_named(b), step, inplace=inplace), log)
                            for w, b, log in zip(workers, buffers, logs)])
    return results, logs[0]


@pytest.mark.parametrize("inplace", [False, True])
def test_a_warm_up_bucket_is_one_native_all_reduce_in_place(inplace: bool) -> None:
    buffers = _buckets(0)
    mean = torch.stack(buffers).sum(0) / N
    workers = [GradientExchange(TopK(0.1), r, N, ExchangeConfig(start_step=2, min_numel=16, native_dense=True))
               for r in range(N)]
    kept = [b.clone() for b in buffers]
    results, log = _step(workers, buffers, step=0, inplace=inplace)
    assert [type(r) for r in log] == [AllReduce] and not log[0].ordered and log[0].tensor.numel() == 272
    for (means, report), buf, old in zip(results, buffers, kept):
        torch.testing.assert_close(torch.cat([m.reshape(-1) for m in means]), mean)
        assert torch.equal(buf, old) != inplace  # the payload is the bucket exactly when handed over
        assert report.dense_numel == 272 and report.sent == 4 * 272 and report.compressed_numel == 0


def test_a_mixed_bucket_reduces_its_dense_part_natively_beside_the_compressed_collectives() -> None:
    ordered = [GradientExchange(TopK(0.1), r, N, ExchangeConfig(start_step=0, min_numel=16)) for r in range(N)]
    native = [GradientExchange(TopK(0.1), r, N, ExchangeConfig(start_step=0, min_numel=16, native_dense=True))
              for r in range(N)]
    ref, ref_log = _step(ordered, _buckets(1), step=0, inplace=False)
    got, log = _step(native, _buckets(1), step=0, inplace=False)
    kinds = [(type(r).__name__, getattr(r, "ordered", None)) for r in log]
    assert kinds == [("AllReduce", False), ("AllGather", None)]  # the bias (+ flag) natively, the weight gathered
    assert [(type(r).__name__, getattr(r, "ordered", None)) for r in ref_log] == [("AllReduce", True),
                                                                                  ("AllGather", None)]
    for (means, _), (refs, _) in zip(got, ref):
        assert torch.equal(means[0], refs[0])  # the compressed weight: the same bits
        torch.testing.assert_close(means[1], refs[1])  # the dense bias: the same mean, another summation


def test_a_non_finite_value_in_a_mixed_bucket_still_abandons_the_compressed_tensors() -> None:
    buffers = _buckets(4)
    buffers[2][3] = float("inf")  # in the compressed weight of rank 2
    workers = [GradientExchange(TopK(0.1), r, N, ExchangeConfig(start_step=0, min_numel=16, native_dense=True))
               for r in range(N)]
    results, log = _step(workers, buffers, step=0, inplace=False)
    assert [(type(r).__name__, getattr(r, "ordered", None)) for r in log][-1] == ("AllReduce", False)  # dense resend
    for means, report in results:
        assert report.non_finite and torch.isinf(means[0].reshape(-1)[3])


def test_a_policy_choosing_fp32_everywhere_goes_native_and_still_prices_its_bytes() -> None:
    def workers(native: bool) -> list[GradientExchange]:
        out = []
        for r in range(N):
            policy = LGreCo(period=50, window=2, options=["topk:0.1", "fp32"], default_option="topk:0.1")
            ex = GradientExchange(Identity(), r, N, ExchangeConfig(start_step=0, min_numel=16, native_dense=native),
                                  policy=policy)
            ex.register({"w": torch.Size((16, 16))})
            policy.load_decision(torch.tensor([1]))  # fp32 for the only registered layer
            out.append(ex)
        return out

    (means, report), *_ = _step(workers(True), _buckets(2), step=3, inplace=False)[0]
    _, log = _step(workers(True), _buckets(2), step=3, inplace=False)
    assert [(type(r), r.ordered) for r in log] == [(AllReduce, False)]
    torch.testing.assert_close(torch.cat([m.reshape(-1) for m in means]), torch.stack(_buckets(2)).sum(0) / N)
    assert report.policy_sent == 4 * 256 and report.policy_predicted == 4 * 256
    _, ordered_log = _step(workers(False), _buckets(2), step=3, inplace=False)
    assert [r.ordered for r in ordered_log] == [True]


def test_a_non_finite_value_reaches_every_rank_through_the_native_sum() -> None:
    buffers = _buckets(3)
    buffers[1][5] = float("nan")
    workers = [GradientExchange(TopK(0.1), r, N, ExchangeConfig(start_step=2, min_numel=16, native_dense=True))
               for r in range(N)]
    results, _ = _step(workers, buffers, step=0, inplace=True)
    for rank, (means, report) in enumerate(results):
        assert torch.isnan(means[0].reshape(-1)[5]) and report.non_finite == (rank == 1)  # only its own NaN seen


def test_native_dense_is_part_of_the_config() -> None:
    assert not ExchangeConfig().native_dense and ExchangeConfig(native_dense=True).native_dense
