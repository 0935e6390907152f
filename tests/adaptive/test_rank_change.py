"""A PowerSGD rank change keeps the old ``Q`` columns (new ones from the shared seed); error feedback persists."""

from __future__ import annotations

import copy

import torch

from commlib import rng
from commlib.adaptive import LGreCo
from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import Identity, PowerSGD, TensorContext, TopK
from commlib.feedback import EF14

SEED, KEY, SHAPE = 3, "w", (24, 40)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _exchange(compressors: list[PowerSGD], xs: list[torch.Tensor], step: int) -> torch.Tensor:
    n = len(xs)
    pairs = enumerate(zip(compressors, xs))
    outs = run_lockstep([c.exchange(x, TensorContext(KEY, step, SEED, r, n)) for r, (c, x) in pairs])
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    return outs[0]


def _after_rank_change(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run rank ``old`` at step 0, then rank ``new`` (sharing the store) at step 1; also return the stored Q."""
    xs0, xs1 = [_randn(*SHAPE, seed=s) for s in (0, 1)], [_randn(*SHAPE, seed=s) for s in (2, 3)]
    first = [PowerSGD(rank=old) for _ in xs0]
    _exchange(first, xs0, step=0)
    stored = first[0].state_dict()["q"][KEY]
    second = [c.resized(new) for c in first]
    return _exchange(second, xs1, step=1), stored, torch.stack([x for x in xs1])


def _warm_from(q: torch.Tensor, xs: torch.Tensor, step: int) -> torch.Tensor:
    """A rank-``q.shape[1]`` exchange of ``xs`` warm-started from exactly ``q``."""
    compressors = [PowerSGD(rank=q.shape[1]) for _ in range(xs.shape[0])]
    for c in compressors:
        c.load_state_dict({"q": {KEY: q}})
    return _exchange(compressors, list(xs), step)


def test_growing_the_rank_keeps_old_columns_and_draws_new_ones_from_the_shared_seed() -> None:
    out, stored, xs1 = _after_rank_change(2, 5)
    fresh = torch.randn(SHAPE[1], 5, generator=rng.generator(SEED, 1, KEY))
    expected = _warm_from(torch.cat([stored, fresh[:, 2:]], dim=1), xs1, step=1)
    assert torch.equal(out, expected)
    cold = _warm_from(fresh, xs1, step=1)  # had the old columns been dropped
    assert not torch.allclose(out, cold, atol=1e-4)


def test_shrinking_the_rank_keeps_the_first_columns() -> None:
    out, stored, xs1 = _after_rank_change(5, 2)
    assert torch.equal(out, _warm_from(stored[:, :2], xs1, step=1))


def test_resized_compressors_share_one_store_also_after_loading_a_checkpoint() -> None:
    a = PowerSGD(rank=2)
    b = a.resized(4)
    a.load_state_dict({"q": {KEY: _randn(40, 2, seed=9)}})
    assert torch.equal(b.state_dict()["q"][KEY], a.state_dict()["q"][KEY])
    assert b.rank == 4 and b.warm_start == a.warm_start


def _policy_workers(n: int, options: list[str], feedback: EF14 | None = None) -> list[GradientExchange]:
    policy = LGreCo(period=50, window=2, options=options, default_option=options[0])
    workers = [GradientExchange(Identity(), r, n, ExchangeConfig(seed=SEED, start_step=1),
                                copy.deepcopy(feedback), copy.deepcopy(policy)) for r in range(n)]
    for w in workers:
        w.register({KEY: torch.Size(SHAPE)})
    return workers


def _grads(n: int, seed: int) -> list[torch.Tensor]:
    return [_randn(*SHAPE, seed=seed + r) for r in range(n)]


def _run(workers: list[GradientExchange], step: int, seed: int) -> torch.Tensor:
    grads = [[(KEY, g)] for g in _grads(len(workers), seed)]
    results = run_lockstep([w.protocol(g, step) for w, g in zip(workers, grads)])
    return results[0][0][0]


def test_exchange_switch_warm_starts_the_new_rank_from_the_old_q() -> None:
    """Under a policy, switching a layer from rank 2 to 4 starts from [rank-2 Q, fresh columns from the seed]."""
    workers = _policy_workers(2, ["powersgd:2", "powersgd:4", "fp32"])
    for step in (1, 2):
        _run(workers, step, seed=10 * step)
    q_before = workers[0].state_dict()["options"]["powersgd:2"]["q"][KEY]
    for w in workers:
        w.policy.load_decision(torch.tensor([1]))  # powersgd:4
    out = _run(workers, 3, seed=30)
    assert workers[0].state_dict()["options"]["powersgd:4"]["q"][KEY].shape == (SHAPE[1], 4)
    fresh = torch.randn(SHAPE[1], 4, generator=rng.generator(SEED, 3, KEY))
    expected = _warm_from(torch.cat([q_before, fresh[:, 2:]], dim=1), torch.stack(_grads(2, 30)), step=3)
    assert torch.equal(out, expected)


def test_exchange_switch_keeps_the_error_feedback_buffers() -> None:
    """EF is keyed by tensor name: after a top-k density switch the message is still e + g (EF14)."""
    workers = _policy_workers(2, ["topk:0.05", "topk:0.2", "fp32"], EF14())
    for step in (1, 2):
        _run(workers, step, seed=10 * step)
    errors = [w.feedback.get(KEY)["e"].clone() for w in workers]
    assert all(float(e.norm()) > 0 for e in errors)
    for w in workers:
        w.policy.load_decision(torch.tensor([1]))  # topk:0.2
    out = _run(workers, 3, seed=30)
    messages = [e + g for e, g in zip(errors, _grads(2, 30))]
    ctxs = [TensorContext(KEY, 3, SEED, r, 2) for r in range(2)]
    expected = sum(TopK(density=0.2).compress(m, c) for m, c in zip(messages, ctxs)) / 2
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


def test_powersgd_error_feedback_option_keeps_its_error_across_a_rank_change() -> None:
    """``powersgd:r:ef`` ranks share one error store: after 2 → 4 the exchange adds the rank-2 step's error."""
    workers = _policy_workers(2, ["powersgd:2:ef", "powersgd:4:ef", "powersgd:4", "fp32"])
    for step in (1, 2):
        _run(workers, step, seed=10 * step)
    options = workers[0].state_dict()["options"]
    errors = [w.state_dict()["options"]["powersgd:2:ef"]["e"][KEY] for w in workers]
    assert all(float(e.norm()) > 0 for e in errors)
    q_before = options["powersgd:2:ef"]["q"][KEY]
    for w in workers:
        w.policy.load_decision(torch.tensor([1]))  # powersgd:4:ef
    out = _run(workers, 3, seed=30)
    fresh = torch.randn(SHAPE[1], 4, generator=rng.generator(SEED, 3, KEY))
    messages = torch.stack([e + g for e, g in zip(errors, _grads(2, 30))])
    assert torch.equal(out, _warm_from(torch.cat([q_before, fresh[:, 2:]], dim=1), messages, step=3))
    after = workers[0].state_dict()["options"]
    assert "e" in after["powersgd:4:ef"] and "powersgd:4" not in after  # the plain rank-4 store was never built
    assert torch.equal(after["powersgd:4:ef"]["e"][KEY], after["powersgd:2:ef"]["e"][KEY])  # one shared store


def test_plain_and_error_feedback_powersgd_options_keep_separate_stores() -> None:
    workers = _policy_workers(2, ["powersgd:2:ef", "powersgd:2", "fp32"])
    _run(workers, 1, seed=10)
    for w in workers:
        w.policy.load_decision(torch.tensor([1]))  # powersgd:2, no feedback: the error stays pending
    _run(workers, 2, seed=20)
    options = workers[0].state_dict()["options"]
    assert "e" not in options["powersgd:2"] and float(options["powersgd:2:ef"]["e"][KEY].norm()) > 0


class _RecordingLGreCo(LGreCo):
    """L-GreCo that also keeps what it was shown (the window's gradients and their pending feedback)."""

    def observe(self, step, grads, feedback=None):  # type: ignore[no-untyped-def]
        self.seen = ({k: v.clone() for k, v in grads.items()}, {k: v.clone() for k, v in (feedback or {}).items()})
        return super().observe(step, grads, feedback)


def test_the_policy_observes_gradients_with_powersgds_pending_error() -> None:
    """L-GreCo measures errors on ``g + e`` (the paper's accumulated gradient), PowerSGD's own ``e`` included."""
    options = ["powersgd:2:ef", "powersgd:4:ef", "fp32"]
    policy = _RecordingLGreCo(period=3, window=3, options=options, default_option=options[0])
    workers = [GradientExchange(Identity(), r, 2, ExchangeConfig(seed=SEED, start_step=1), None,
                                copy.deepcopy(policy)) for r in range(2)]
    for w in workers:
        w.register({KEY: torch.Size(SHAPE)})
    _run(workers, 1, seed=10)  # compressed from step 1: an error is pending after it
    pending = workers[0].state_dict()["options"]["powersgd:2:ef"]["e"][KEY]
    _run(workers, 2, seed=20)
    grads, errors = workers[0].policy.seen
    assert torch.equal(grads[KEY], _grads(2, 20)[0]) and torch.equal(errors[KEY], pending.view(SHAPE))
