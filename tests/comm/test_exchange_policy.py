"""The gradient exchange with an L-GreCo policy: per-tensor compressors, rank 0's decision broadcast, checkpoints."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from commlib.adaptive import LGreCo, Option
from commlib.comm.collectives import Broadcast
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import Identity, TopK

OPTIONS = ["topk:0.05", "topk:0.2", "fp32"]
SHAPES = {"a": torch.Size([32, 32]), "b": torch.Size([64, 16]), "bias": torch.Size([32])}


def _workers(n: int, policy: LGreCo, start_step: int = 2) -> list[GradientExchange]:
    workers = [GradientExchange(Identity(), r, n, ExchangeConfig(start_step=start_step), policy=copy.deepcopy(policy))
               for r in range(n)]
    for w in workers:
        w.register(SHAPES)
    return workers


def _grads(n: int, seed: int) -> list[list[tuple[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    return [[(name, torch.randn(shape, generator=g)) for name, shape in SHAPES.items()] for _ in range(n)]


def test_each_tensor_uses_its_chosen_option() -> None:
    """a → topk:0.2, b → fp32 (dense): bitwise what a plain exchange with those settings computes."""
    workers = _workers(2, LGreCo(period=4, window=2, options=OPTIONS, default_option="topk:0.05"))
    assert workers[0].policy.layer_names == ["a", "b"]  # the 1-D bias is never the policy's
    for w in workers:
        w.policy.load_decision(torch.tensor([OPTIONS.index("topk:0.2"), OPTIONS.index("fp32")]))
    grads = _grads(2, 0)
    (means, report), _ = run_lockstep([w.protocol(g, step=3) for w, g in zip(workers, grads)])
    plain = [GradientExchange(TopK(density=0.2), r, 2) for r in range(2)]
    (expected, _), _ = run_lockstep([w.protocol(g[:1], step=3) for w, g in zip(plain, grads)])
    assert torch.equal(means[0], expected[0])
    assert torch.equal(means[1], (grads[0][1][1] + grads[1][1][1]) / 2)
    a_bytes = Option.parse("topk:0.2").wire_bytes(SHAPES["a"])
    assert report.policy_sent == a_bytes + 4 * SHAPES["b"].numel()
    assert report.policy_predicted == report.policy_sent
    assert report.compressed_numel == SHAPES["a"].numel()


def test_warm_up_is_dense_and_counted_as_sent() -> None:
    workers = _workers(2, LGreCo(period=4, window=2, options=OPTIONS, default_option="topk:0.05"))
    (means, report), _ = run_lockstep([w.protocol(g, step=1) for w, g in zip(workers, _grads(2, 1))])
    assert report.compressed_numel == 0
    assert report.policy_sent == 4 * (SHAPES["a"].numel() + SHAPES["b"].numel())
    assert report.policy_predicted < report.policy_sent


def _train(workers: list[GradientExchange], steps: range) -> list[list[torch.Tensor]]:
    out = []
    for step in steps:
        results = run_lockstep([w.protocol(g, step, last=True) for w, g in zip(workers, _grads(len(workers), step))])
        out.append(results[0][0])
    return out


def test_rank_zero_decides_and_every_rank_loads_the_broadcast() -> None:
    """After the window, rank 0 re-solves; the others observed nothing, and still end with its decision."""
    policy = LGreCo(period=4, window=2, options=OPTIONS, default_option="topk:0.2", alpha=4.0)
    workers = _workers(3, policy)
    _train(workers, range(2 + 4))  # τ = 0…3: observed at τ = 2, 3; re-solved for τ = 4 after the step τ = 3
    first = workers[0].policy
    assert first.stats.solves == 1 and not torch.equal(first.decision(), first.default_decision())
    for w in workers[1:]:
        assert w.policy.stats.solves == 0 and w.policy.stats.skipped == 1
        assert torch.equal(w.policy.decision(), first.decision())


def _recorded(protocol, log: list):
    """Pass ``protocol``'s requests through, appending each to ``log``."""
    value = None
    while True:
        try:
            request = protocol.send(value)
        except StopIteration as stop:
            return stop.value
        log.append(request)
        value = yield request


def test_the_decision_is_an_int64_broadcast_from_rank_zero_after_the_last_bucket() -> None:
    workers = _workers(2, LGreCo(period=1, window=1, options=OPTIONS, default_option="topk:0.05"))
    logs: list[list] = [[], []]
    run_lockstep([_recorded(w.protocol(g, step=2, last=True), log) for w, g, log in zip(workers, _grads(2, 0), logs)])
    last = logs[0][-1]
    assert isinstance(last, Broadcast) and last.src == 0 and last.tensor.dtype == torch.int64
    logs = [[], []]
    run_lockstep([_recorded(w.protocol(g, step=3), log) for w, g, log in zip(workers, _grads(2, 0), logs)])
    assert not any(isinstance(r, Broadcast) for r in logs[0])  # not the last bucket: no decision


@pytest.mark.parametrize("stop", [5, 7])
def test_checkpoint_resumes_bitwise(stop: int) -> None:
    """Resume mid-window (stop 5: one step of sums held) or right after a solve (stop 7)."""
    policy = LGreCo(period=3, window=2, options=["powersgd:1", "powersgd:2", "fp32"], default_option="powersgd:1")
    straight = _workers(2, policy)
    expected = _train(straight, range(12))
    first = _workers(2, policy)
    _train(first, range(stop))
    resumed = _workers(2, policy)
    for w, old in zip(resumed, first):
        buf = io.BytesIO()
        torch.save(old.state_dict(), buf)
        w.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    got = _train(resumed, range(stop, 12))
    for a, b in zip(got[-1], expected[-1]):
        assert torch.equal(a, b)
    assert torch.equal(resumed[0].policy.decision(), straight[0].policy.decision())
    assert resumed[0].policy.stats.solves == straight[0].policy.stats.solves == 3


def test_checkpoint_must_agree_on_the_policy() -> None:
    with_policy = _workers(1, LGreCo(period=3, window=2, options=OPTIONS, default_option="topk:0.05"))[0]
    without = GradientExchange(Identity(), 0, 1)
    with pytest.raises(ValueError, match="policy"):
        without.load_state_dict(with_policy.state_dict())
    with pytest.raises(ValueError, match="policy"):
        with_policy.load_state_dict(without.state_dict())
