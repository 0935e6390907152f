"""The gradient exchange shared by DDP and the simulator: dense rules, warm-up, non-finite pass-through."""

from __future__ import annotations

import pytest
import torch

from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import Identity, TopK


def _run(compressor, grads_per_worker, step=5, **config):
    n = len(grads_per_worker)
    workers = [GradientExchange(compressor, r, n, ExchangeConfig(**config)) for r in range(n)]
    return run_lockstep([w.protocol(g, step) for w, g in zip(workers, grads_per_worker)])


def _grads(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [[("w", torch.randn(32, 32, generator=g)), ("b", torch.randn(32, generator=g)),
             ("small", torch.randn(4, 4, generator=g))] for _ in range(n)]


def test_dense_rules() -> None:
    ex = GradientExchange(TopK(density=0.1), 0, 2)
    assert ex.compresses("w", torch.Size([32, 32]))
    assert not ex.compresses("b", torch.Size([1024]))  # 1-D
    assert not ex.compresses("small", torch.Size([4, 4]))  # under min_numel
    assert not GradientExchange(TopK(density=0.9), 0, 2).compresses("w", torch.Size([32, 32]))  # rate < 2


def test_dense_tensors_are_exact_means_and_compressed_are_not() -> None:
    grads = _grads(3)
    (means, report), *_ = _run(TopK(density=0.1), grads)
    exact = [sum(g[i][1] for g in grads) / 3 for i in range(3)]
    torch.testing.assert_close(means[1], exact[1])
    torch.testing.assert_close(means[2], exact[2])
    assert not torch.allclose(means[0], exact[0])
    assert report.compressed_numel == 32 * 32 and report.dense_numel == 32 + 16
    assert report.sent == 8 * round(0.1 * 1024) + 4 * (32 + 16 + 1)


def test_warm_up_steps_are_dense() -> None:
    grads = _grads(2)
    (means, report), _ = _run(TopK(density=0.1), grads, step=1, start_step=2)
    torch.testing.assert_close(means[0], (grads[0][0][1] + grads[1][0][1]) / 2)
    assert report.compressed_numel == 0


def test_identity_is_exact() -> None:
    grads = _grads(4)
    (means, _), *_ = _run(Identity(), grads)
    for i in range(3):
        torch.testing.assert_close(means[i], sum(g[i][1] for g in grads) / 4)


def test_non_finite_passes_through_dense() -> None:
    grads = _grads(2)
    grads[1][0] = ("w", grads[1][0][1].clone())
    grads[1][0][1][3, 3] = float("inf")
    (means, report), (means1, _) = _run(TopK(density=0.1), grads)
    assert report.non_finite
    assert torch.isinf(means[0][3, 3]) and torch.equal(means[0], means1[0])
    torch.testing.assert_close(means[1], (grads[0][1][1] + grads[1][1][1]) / 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_accepted(dtype: torch.dtype) -> None:
    grads = [[(name, t.to(dtype)) for name, t in g] for g in _grads(2)]
    (means, _), _ = _run(TopK(density=0.1), grads)
    assert all(m.dtype == torch.float32 for m in means)


def test_non_float_gradients_are_rejected() -> None:
    grads = [[("w", torch.ones(32, 32, dtype=torch.int32))] for _ in range(2)]
    with pytest.raises(TypeError, match="floating-point"):
        _run(TopK(density=0.1), grads)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one tensor"):
        next(GradientExchange(TopK(density=0.1), 0, 2).protocol([], step=3))
    with pytest.raises(TypeError, match="Compressor"):
        GradientExchange("topk", 0, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank"):
        GradientExchange(TopK(density=0.1), 2, 2)
    with pytest.raises(ValueError, match="start_step"):
        ExchangeConfig(start_step=-1)
    with pytest.raises(ValueError, match="check_every"):
        ExchangeConfig(check_every=-1)


def test_bucket_views_are_exchanged_without_a_copy() -> None:
    from commlib.comm.exchange import adjacent_view

    buffer = torch.arange(10, dtype=torch.float32)
    views = [buffer[:6].view(2, 3), buffer[6:]]
    flat = adjacent_view(views)
    assert flat is not None and flat.data_ptr() == buffer.data_ptr() and torch.equal(flat, buffer)
    assert adjacent_view([buffer[:3], buffer[4:]]) is None
    assert adjacent_view([buffer[:3], buffer[3:].clone()]) is None


@pytest.mark.parametrize("inplace", [False, True])
def test_casts_write_their_input_only_when_handed_over(inplace: bool) -> None:
    buffers = [torch.arange(10, dtype=torch.float32), torch.arange(10, dtype=torch.float32) + 1]
    grads = [[("w", b[:6].view(2, 3)), ("b", b[6:])] for b in buffers]
    before = [b.clone() for b in buffers]
    workers = [GradientExchange(Identity(), r, 2) for r in range(2)]
    results = run_lockstep([w.protocol(g, 5, inplace=inplace) for w, g in zip(workers, grads)])
    for (means, _), buf, old in zip(results, buffers, before):
        torch.testing.assert_close(means[1], torch.arange(6, 10, dtype=torch.float32) + 0.5)
        assert torch.equal(buf, old) != inplace  # reduced in place exactly when handed over


def test_error_feedback_through_the_exchange_matches_the_math_layer() -> None:
    """EControl around TopK in the exchange equals message → local C → rank-order mean → commit by hand."""
    import copy

    from commlib.compress.base import TensorContext
    from commlib.feedback import EControl

    n, steps = 3, 4
    fb, comp = EControl(eta=0.1), TopK(density=0.1)
    config = ExchangeConfig(start_step=0)
    workers = [GradientExchange(comp, r, n, config, copy.deepcopy(fb)) for r in range(n)]
    by_hand = [copy.deepcopy(fb) for _ in range(n)]
    for step in range(steps):
        grads = [[("w", torch.randn(32, 32, generator=torch.Generator().manual_seed(10 * step + r)))] for r in range(n)]
        results = run_lockstep([w.protocol(g, step) for w, g in zip(workers, grads)])
        ctxs = [TensorContext("w", step, 0, r, n) for r in range(n)]
        locals_ = [comp.compress(f.message("w", g[0][1], c), c) for f, g, c in zip(by_hand, grads, ctxs)]
        mean = locals_[0].clone()
        for d in locals_[1:]:
            mean += d
        mean /= n
        expected = [f.commit("w", g[0][1], d, mean) for f, g, d in zip(by_hand, grads, locals_)]
        for (means, _), want in zip(results, expected):
            torch.testing.assert_close(means[0], want, rtol=0, atol=1e-6)
    assert workers[0].feedback.keys() == ["w"]


def test_non_finite_step_leaves_feedback_state_untouched() -> None:
    import copy

    from commlib.feedback import EF21

    n = 2
    workers = [GradientExchange(TopK(density=0.1), r, n, ExchangeConfig(start_step=0), EF21()) for r in range(n)]
    grads = _grads(n)
    run_lockstep([w.protocol(g, 0) for w, g in zip(workers, grads)])
    before = [copy.deepcopy(w.feedback.state_dict()) for w in workers]
    bad = _grads(n, seed=1)
    bad[0][0] = ("w", torch.full((32, 32), float("nan")))
    (means, report), _ = run_lockstep([w.protocol(g, 1) for w, g in zip(workers, bad)])
    assert report.non_finite and bool(means[0].isnan().all())
    for w, old in zip(workers, before):
        new = w.feedback.state_dict()
        assert all(torch.equal(old["state"][k][b], new["state"][k][b]) for k in old["state"] for b in old["state"][k])


def test_feedback_needs_a_local_compressor() -> None:
    from commlib.compress import PowerSGD
    from commlib.feedback import EF14

    with pytest.raises(ValueError, match="PowerSGD"):
        GradientExchange(PowerSGD(rank=2), 0, 2, feedback=EF14())
    with pytest.raises(TypeError, match="ErrorFeedback"):
        GradientExchange(TopK(density=0.1), 0, 2, feedback="ef14")  # type: ignore[arg-type]


def test_feedback_warm_start_on_the_last_dense_step() -> None:
    from commlib.feedback import EControl

    n = 2
    config = ExchangeConfig(start_step=2, feedback_warm_start=True)
    workers = [GradientExchange(TopK(density=0.1), r, n, config, EControl(eta=0.1)) for r in range(n)]
    grads = _grads(n)
    run_lockstep([w.protocol(g, 0) for w, g in zip(workers, grads)])
    assert workers[0].feedback.keys() == []  # step 0 is not the last dense step
    results = run_lockstep([w.protocol(g, 1) for w, g in zip(workers, grads)])
    mean = results[0][0][0]
    for r, w in enumerate(workers):
        assert w.feedback.keys() == ["w"]  # only the tensor that will be compressed
        assert torch.equal(w.feedback.get("w")["h"], mean)
        assert torch.equal(w.feedback.get("w")["h_local"], grads[r][0][1])


def test_consistency_check_catches_diverged_feedback_state() -> None:
    from commlib.errors import StateDivergenceError
    from commlib.feedback import EF21

    n = 2
    config = ExchangeConfig(start_step=0, check_every=2)
    workers = [GradientExchange(TopK(density=0.1), r, n, config, EF21()) for r in range(n)]
    for step in range(3):  # steps 0 and 2 are checked and pass
        run_lockstep([w.protocol(g, step) for w, g in zip(workers, _grads(n, seed=step))])
    workers[1].feedback.get("w")["h"][0, 0] += 1e-6
    run_lockstep([w.protocol(g, 3) for w, g in zip(workers, _grads(n, seed=3))])  # step 3: not checked
    with pytest.raises(StateDivergenceError, match="ranks \\[1\\]"):
        run_lockstep([w.protocol(g, 4) for w, g in zip(workers, _grads(n, seed=4))])


def _bucket(buffer: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """DDP's layout: views of one flat buffer (a 32×32 weight, its bias, a small 4×4 tensor)."""
    return [("w", buffer[:1024].view(32, 32)), ("b", buffer[1024:1056]), ("small", buffer[1056:].view(4, 4))]


@pytest.mark.parametrize("native", [False, True])
def test_a_handed_over_mixed_bucket_gets_its_dense_means_in_place_with_the_same_bits(native: bool) -> None:
    n = 3
    buffers = [torch.randn(1072, generator=torch.Generator().manual_seed(r)) for r in range(n)]

    def exchange(handed: list[torch.Tensor], inplace: bool):
        workers = [GradientExchange(TopK(density=0.1), r, n, ExchangeConfig(native_dense=native)) for r in range(n)]
        return run_lockstep([w.protocol(_bucket(b), 5, inplace=inplace) for w, b in zip(workers, handed)])

    reference = exchange([b.clone() for b in buffers], inplace=False)
    results = exchange(buffers, inplace=True)
    for (expected, _), (means, _), buffer in zip(reference, results, buffers):
        assert all(torch.equal(a, b) for a, b in zip(expected, means))
        for mean, (_, view) in zip(means[1:], _bucket(buffer)[1:]):  # the dense ones
            assert mean.data_ptr() == view.data_ptr() and torch.equal(mean, view)


def test_a_handed_over_bucket_keeps_its_gradients_for_the_feedback_warm_start() -> None:
    from commlib.feedback import EControl

    n = 2
    buffers = [torch.randn(1072, generator=torch.Generator().manual_seed(r)) for r in range(n)]
    gradients = [b[:1024].view(32, 32).clone() for b in buffers]
    config = ExchangeConfig(start_step=2, feedback_warm_start=True)
    workers = [GradientExchange(TopK(density=0.1), r, n, config, EControl(eta=0.1)) for r in range(n)]
    run_lockstep([w.protocol(_bucket(b), 1, inplace=True) for w, b in zip(workers, buffers)])
    for w, g in zip(workers, gradients):
        assert torch.equal(w.feedback.get("w")["h_local"], g)
