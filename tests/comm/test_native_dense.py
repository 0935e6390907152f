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
    for means, report in results:
        assert torch.isnan(means[0].reshape(-1)[5]) and not report.non_finite  # not scanned, as allreduce_hook


def test_the_all_dense_native_path_scans_the_bucket_only_when_the_policy_observes(monkeypatch) -> None:
    from commlib import ops

    scanned: list[int] = []
    real = ops.all_finite
    monkeypatch.setattr(ops, "all_finite", lambda t: scanned.append(t.numel()) or real(t))
    policy = LGreCo(period=4, window=2, options=["fp32", "topk:0.1"], default_option="fp32")
    exchange = GradientExchange(Identity(), 0, 1, ExchangeConfig(start_step=0, min_numel=16, native_dense=True),
                                policy=policy)
    exchange.register({"w": torch.Size((16, 16))})
    buffer = _buckets(4)[0]
    buffer[7] = float("inf")
    for step, observed in [(0, False), (1, False), (2, True), (3, True)]:
        scanned.clear()
        ((means, report),) = run_lockstep([exchange.protocol(_named(buffer.clone()), step, inplace=True)])
        assert bool(scanned) == observed and report.non_finite == observed
        assert torch.isinf(means[0].reshape(-1)[7])  # the value reaches the mean either way


def test_native_dense_is_part_of_the_config() -> None:
    assert not ExchangeConfig().native_dense and ExchangeConfig(native_dense=True).native_dense


def test_rank_0_notes_its_buckets_in_the_window_and_the_solve_checks_them_whole() -> None:
    """A time model that prices fp32's all-reduce at 10 all-gathers: per layer, top-k pays; in one bucket it
    only adds the all-gather to the flag's all-reduce, so the layers the exchange noted together go fp32."""
    from commlib.adaptive import TimeCost

    def workers(note: bool) -> list[GradientExchange]:
        out = []
        for r in range(N):
            cost = TimeCost(latency={"allreduce": 1e-2, "allgather": 1e-3},
                            seconds_per_byte={"allreduce": 1e-12, "allgather": 1e-12}, native_dense=True)
            policy = LGreCo(period=3, window=2, options=["topk:0.1", "fp32"], default_option="topk:0.1",
                            cost_model=cost, world_size=N)
            if not note:
                policy.note_bucket = lambda names, dense_numel=0: None
            ex = GradientExchange(Identity(), r, N, ExchangeConfig(start_step=0, min_numel=16, native_dense=True),
                                  policy=policy)
            ex.register({"w": torch.Size((16, 16))})
            out.append(ex)
        return out

    for note, expected in ((True, "fp32"), (False, "topk:0.1")):
        exchanges = workers(note)
        for step in range(3):
            run_lockstep([w.protocol(_named(b), step, last=True) for w, b in zip(exchanges, _buckets(step))])
        assert [str(w.policy.choices()["w"]) for w in exchanges] == [expected] * N
        assert exchanges[0].policy.stats.dense_buckets == int(note)
