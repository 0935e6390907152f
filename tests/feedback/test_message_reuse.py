"""EF14 keeps its intact message as the new error: ``e' = u − Δ`` in ``u``'s buffer, same bits, no pass over e and g.

The message ``u = e + g`` is reused only when it is exactly ``message(key, g)`` of the committed ``g``: the same
tensor object, neither it nor the message written since (torch's version counters), and no state change between
(``load_state_dict``, ``reset``, ``warm_start``). Otherwise the commit recomputes ``e + g − Δ``.
"""

from __future__ import annotations

import pytest
import torch

from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import QSGD, TensorContext, TopK
from commlib.feedback import EF14


def _ctx(step: int = 0) -> TensorContext:
    return TensorContext("w", step, 5, 0, 1)


def _grad(seed: int, shape: tuple[int, ...] = (6, 11)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


@pytest.mark.parametrize("compressor", [TopK(density=0.2), QSGD(bits=4, bucket_size=8)], ids=lambda c: c.name)
def test_ef14_keeps_its_intact_message_as_the_error_with_the_same_bits(compressor) -> None:
    reused, recomputed = EF14(), EF14()
    for step in range(5):
        g = _grad(step)
        u = reused.message("w", g)
        u_other = recomputed.message("w", g.clone())  # another tensor than the one committed: not reused
        assert torch.equal(_bits(u), _bits(u_other))
        dl = compressor.compress(u, _ctx(step))
        dm = dl * 0.5
        if isinstance(compressor, TopK):
            dl = dl.to_sparse()
        before = recomputed.get("w")["e"].data_ptr() if recomputed.get("w") else None
        out_a = reused.commit("w", g, dl, dm)
        out_b = recomputed.commit("w", g, dl, dm)
        assert torch.equal(_bits(out_a), _bits(out_b))
        assert torch.equal(_bits(reused.get("w")["e"]), _bits(recomputed.get("w")["e"]))
        assert reused.get("w")["e"].data_ptr() == u.data_ptr()  # the message's buffer became the error
        if before is not None:
            assert recomputed.get("w")["e"].data_ptr() == before  # recomputed in place


@pytest.mark.parametrize("write", ["gradient", "message"])
def test_a_tensor_written_between_message_and_commit_is_not_reused(write: str) -> None:
    method, oracle = EF14(), EF14()
    g0 = _grad(0)
    method.commit("w", g0, torch.zeros_like(g0), torch.zeros_like(g0))  # some error to carry
    oracle.commit("w", g0, torch.zeros_like(g0), torch.zeros_like(g0))
    g = _grad(1)
    u = method.message("w", g)
    if write == "gradient":
        g.add_(1.0)  # a new gradient in the same tensor: commit must use it
    else:
        u.mul_(2.0)  # the message changed under the method: it no longer is e + g
    delta = torch.zeros_like(g)
    delta.view(-1)[:5] = 1.0
    oracle.message("w", g)
    want = oracle.commit("w", g.clone(), delta, delta)  # another object: recomputed from e and g
    got = method.commit("w", g, delta, delta)
    assert torch.equal(_bits(got), _bits(want))
    assert torch.equal(_bits(method.get("w")["e"]), _bits(oracle.get("w")["e"]))
    assert method.get("w")["e"].data_ptr() != u.data_ptr()


@pytest.mark.parametrize("change", ["load_state_dict", "reset", "warm_start"])
def test_a_state_change_between_message_and_commit_voids_the_message(change: str) -> None:
    method = EF14()
    g = _grad(2)
    method.commit("w", g, torch.zeros_like(g), torch.zeros_like(g))
    saved = method.state_dict()
    method.commit("w", g, torch.zeros_like(g), torch.zeros_like(g))  # e = 2g now
    u = method.message("w", g)  # 3g
    if change == "load_state_dict":
        method.load_state_dict(saved)  # e = g
        want_e = g + g
    elif change == "reset":
        method.reset("w")
        want_e = g.clone()
    else:
        method.warm_start("w", g, g)  # EF14: zeros
        want_e = g.clone()
    method.commit("w", g, torch.zeros_like(g), torch.zeros_like(g))
    assert torch.equal(method.get("w")["e"], want_e)
    assert method.get("w")["e"].data_ptr() != u.data_ptr()


def test_the_exchange_commits_ef14_from_its_intact_message() -> None:
    ex = GradientExchange(TopK(density=0.1), 0, 1, ExchangeConfig(seed=1, start_step=0, min_numel=1),
                          feedback=EF14())
    pointers = []
    for step in range(4):
        run_lockstep([ex.protocol([("w", _grad(step, (20, 10)))], step)])
        pointers.append(ex.feedback.get("w")["e"].data_ptr())
    assert pointers[0] != pointers[1] and pointers[0] == pointers[2] and pointers[1] == pointers[3]  # two buffers swap
