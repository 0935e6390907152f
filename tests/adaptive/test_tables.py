"""Error tables equal what the real compressors do (top-k exactly, QSGD in expectation, PowerSGD vs SVD)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from commlib.adaptive.options import Option, option_grid
from commlib.adaptive.tables import (
    ErrorAccumulator,
    cast_errors,
    error_table,
    powersgd_errors,
    qsgd_errors,
    topk_errors,
)
from commlib.comm.local import run_lockstep
from commlib.compress import QSGD, PowerSGD, TensorContext, TopK


def gaussian(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def sq_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().sum())


@pytest.mark.parametrize("density", [1e-4, 0.003, 0.1, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("case", ["gauss", "ties", "tiny", "huge", "zeros"])
def test_topk_errors_equal_the_compressor_exactly(density, case):
    x = {
        "gauss": gaussian(300, 77, seed=1),
        "ties": torch.randint(-3, 4, (5000,), generator=torch.Generator().manual_seed(2)).float(),
        "tiny": gaussian(4000, seed=3, scale=1e-30),
        "huge": gaussian(64, 64, seed=4, scale=1e18),
        "zeros": torch.zeros(1000),
    }[case]
    comp = TopK(density=density)
    got = topk_errors(x, [comp.count(x.numel())])[0]
    assert got == pytest.approx(sq_error(comp.compress(x), x), rel=1e-9, abs=0.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-20, 20), min_size=1, max_size=300), st.data())
def test_topk_errors_equal_the_sorted_tail(values, data):
    x = torch.tensor(values, dtype=torch.float32) * 0.37
    counts = data.draw(st.lists(st.integers(0, len(values)), min_size=1, max_size=5))
    mags = np.sort(np.abs(x.double().numpy()))
    expected = [float(np.square(mags[: len(values) - k]).sum()) for k in counts]
    assert topk_errors(x, counts) == pytest.approx(expected, rel=1e-12, abs=0.0)


def test_topk_errors_reject_bad_input():
    with pytest.raises(ValueError, match="inf or NaN"):
        topk_errors(torch.tensor([1.0, float("nan"), 2.0]), [1])
    with pytest.raises(ValueError, match="counts"):
        topk_errors(torch.ones(4), [5])


@pytest.mark.parametrize(
    ("bits", "bucket", "norm", "numel"),
    [(2, 64, "l2", 3000), (4, 128, "l2", 2000), (8, 512, "l2", 1500), (4, 100, "max", 1234), (2, 7, "max", 500)],
)
def test_qsgd_expected_error_matches_monte_carlo(bits, bucket, norm, numel):
    x = gaussian(numel, seed=5) * torch.linspace(0.1, 3.0, numel)
    comp = QSGD(bits=bits, bucket_size=bucket, norm=norm)
    expected = qsgd_errors(x, [(comp.s, bucket, norm)])[0]
    draws = np.array(
        [sq_error(comp.compress(x, TensorContext("mc", step, 0, 0, 1)), x) for step in range(300)]
    )
    stderr = draws.std(ddof=1) / np.sqrt(len(draws))
    assert abs(draws.mean() - expected) <= 4 * stderr + 1e-12 * expected


def test_qsgd_errors_share_one_pass_per_bucket_and_handle_zeros():
    x = torch.cat([torch.zeros(300), gaussian(700, seed=6)])
    specs = [(1, 128, "l2"), (7, 128, "l2"), (127, 128, "l2"), (7, 64, "max")]
    together = qsgd_errors(x, specs)
    alone = [qsgd_errors(x, [s])[0] for s in specs]
    assert together == pytest.approx(alone, rel=1e-12)
    assert (np.diff(together[:3]) < 0).all()  # more levels, less variance
    assert qsgd_errors(torch.zeros(50), specs).tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="QSGD spec"):
        qsgd_errors(x, [(7, 0, "l2")])


def low_rank_plus_noise(n: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.logspace(1, -2, min(n, m))
    u = torch.linalg.qr(torch.randn(n, min(n, m), generator=g)).Q
    v = torch.linalg.qr(torch.randn(m, min(n, m), generator=g)).Q
    return (u * spectrum) @ v.t()


def svd_tails(x: torch.Tensor, ranks: list[int]) -> np.ndarray:
    s = torch.linalg.svdvals(x.reshape(x.shape[0], -1).double()).square().numpy()
    return np.array([s[r:].sum() for r in ranks])


def test_powersgd_exact_path_equals_svd_tails():
    x = low_rank_plus_noise(60, 90, seed=7).reshape(60, 9, 10)  # a conv-like shape: matrix view 60 x 90
    ranks = [1, 2, 5, 30, 60, 100]
    assert powersgd_errors(x, ranks) == pytest.approx(svd_tails(x, ranks), rel=1e-9, abs=1e-12)


def test_powersgd_randomized_path_bounds_and_approximates_svd_tails():
    x = low_rank_plus_noise(240, 180, seed=8)
    ranks = [1, 4, 8, 16]
    got = powersgd_errors(x, ranks, exact_limit=50)
    exact = svd_tails(x, ranks)
    assert (got >= exact * (1 - 1e-5)).all()  # never below the true tail
    assert got == pytest.approx(exact, rel=1e-2)  # a slowly decaying spectrum: the hard case


def test_powersgd_one_iteration_matches_the_real_cold_started_compressor():
    x = low_rank_plus_noise(80, 120, seed=9) + gaussian(80, 120, seed=10, scale=0.02)
    rank = 4
    ours = [
        powersgd_errors(x, [rank], power_iterations=1, generator=torch.Generator().manual_seed(s))[0]
        for s in range(40)
    ]
    comp = PowerSGD(rank=rank, warm_start=False)
    real = [
        sq_error(run_lockstep([comp.exchange(x, TensorContext("w", step, 0, 0, 1))])[0], x) for step in range(40)
    ]
    tail = svd_tails(x, [rank])[0]
    assert min(ours) >= tail * (1 - 1e-6) and min(real) >= tail * (1 - 1e-6)  # one step is worse than SVD
    assert np.mean(ours) == pytest.approx(np.mean(real), rel=0.1)  # the same distribution
    assert np.mean(ours) > 1.2 * tail


def test_powersgd_errors_reject_bad_input():
    with pytest.raises(ValueError, match="2 dimensions"):
        powersgd_errors(torch.ones(5), [1])
    with pytest.raises(ValueError, match="ranks"):
        powersgd_errors(torch.ones(5, 5), [0])


def test_cast_errors_measure_rounding_at_the_wire_scale():
    x = gaussian(10_000, seed=11)
    assert cast_errors(x, torch.float16) == pytest.approx(sq_error(x.half(), x), rel=1e-6)  # float32 sums
    assert cast_errors(x, torch.bfloat16) == pytest.approx(sq_error(x.bfloat16(), x), rel=1e-6)
    big = x * 1e5  # overflows fp16 unless brought back to one rank's scale
    assert cast_errors(big, torch.float16) == float("inf")
    scaled = cast_errors(big, torch.float16, scale=1e4)
    reference = sq_error((big / 1e4).half().float() * 1e4, big)  # adds float32 rounding of the rescale
    assert np.isfinite(scaled) and scaled == pytest.approx(reference, rel=1e-5)


def test_error_table_layout_and_inapplicable_options():
    options = option_grid(topk=(0.1,), qsgd_bits=(4,), powersgd=(2,), casts=("fp16", "fp32"))
    tensors = {"w": low_rank_plus_noise(30, 40, seed=12), "b": gaussian(30, seed=13)}
    timings: dict[str, float] = {}
    table = error_table(tensors, options, timings=timings)
    assert table.shape == (2, 5)
    assert np.isinf(table[1, 2]) and np.isfinite(np.delete(table, [7])).all()  # no PowerSGD for a bias
    assert table[0, 4] == 0.0 and table[1, 4] == 0.0
    assert table[0, 2] == pytest.approx(svd_tails(tensors["w"], [2])[0], rel=1e-9)
    assert table[0, 0] == pytest.approx(sq_error(TopK(density=0.1).compress(tensors["w"]), tensors["w"]))
    assert set(timings) == {"topk", "qsgd", "powersgd", "fp16", "fp32"}
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="'w' holds inf or NaN"):
            error_table({"w": torch.tensor([[1.0, bad]])}, [Option("fp32")])


def test_accumulator_sums_gradients_and_feedback_over_the_window():
    acc = ErrorAccumulator(window=3)
    g = [gaussian(4, 5, seed=s) for s in range(3)]
    e = gaussian(4, 5, seed=9)
    assert acc.add({"w": g[0]}, {"w": e})
    assert not acc.add({"w": g[1] * float("nan")})  # skipped, state untouched
    assert acc.add({"w": g[1]}) and acc.add({"w": g[2], "v": g[0]})  # layers may come in any subsets
    assert acc.steps() == {"w": 3, "v": 1}
    torch.testing.assert_close(acc.sums()["w"], g[0] + e + g[1] + g[2])
    with pytest.raises(ValueError, match="full"):
        acc.add({"w": g[0]})
    buf = io.BytesIO()
    torch.save(acc.state_dict(), buf)
    buf.seek(0)
    other = ErrorAccumulator(window=3)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.steps() == {"w": 3, "v": 1} and torch.equal(other.sums()["w"], acc.sums()["w"])
    acc.reset()
    assert acc.steps() == {} and acc.sums() == {}


def test_accumulator_rejects_bad_input():
    acc = ErrorAccumulator(window=2)
    with pytest.raises(ValueError, match="window"):
        ErrorAccumulator(window=0)
    with pytest.raises(ValueError, match="unknown layers"):
        acc.add({"w": torch.ones(2)}, {"v": torch.ones(2)})
    with pytest.raises(ValueError, match="feedback for 'w'"):
        acc.add({"w": torch.ones(2)}, {"w": torch.ones(3)})
    acc.add({"w": torch.ones(2)})
    with pytest.raises(ValueError, match="does not match"):
        acc.add({"w": torch.ones(3)})
    with pytest.raises(ValueError, match="steps must map"):
        ErrorAccumulator(window=2).load_state_dict({"window": 2, "steps": {"w": 3}, "sums": acc.sums()})
    with pytest.raises(ValueError, match="window 2"):
        ErrorAccumulator(window=3).load_state_dict(acc.state_dict())
