"""Parametric delays, load scaling, trace files (CSV / NumPy) and patterns as delays."""

from __future__ import annotations

import numpy as np
import pytest

from commlib.coding.stragglers import DelayTrace, Noise, ParametricDelays, load_trace


def test_parametric_trace_follows_the_formula() -> None:
    model = ParametricDelays(1.2, 2.2, Noise("exponential", 0.3), Noise("lognormal", 0.5, 0.8))
    trace = model.trace(3000, 40, seed=5)
    assert (trace.rounds, trace.n) == (3000, 40)
    e_o = trace.base / 1.2 - 1.0
    e_c = trace.slope / 2.2 - 1.0
    assert e_o.min() >= 0 and abs(e_o.mean() - 0.3) < 0.01  # shifted exponential overhead
    assert abs(np.median(e_c) - 0.5) < 0.02 and abs(np.std(np.log(e_c)) - 0.8) < 0.02  # lognormal excess
    load = np.linspace(0, 1, 40)
    np.testing.assert_allclose(trace.durations(7, load), trace.base[7] + trace.slope[7] * load)
    assert np.array_equal(trace.base, model.trace(3000, 40, seed=5).base)
    assert not np.array_equal(trace.base, model.trace(3000, 40, seed=6).base)


def test_noise_free_model_is_deterministic() -> None:
    trace = ParametricDelays(1.0, 2.0).trace(2, 3)
    np.testing.assert_allclose(trace.durations(1, np.full(3, 0.25)), 1.5)


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_trace_files_round_trip(tmp_path, suffix: str) -> None:
    data = np.random.default_rng(0).uniform(1.0, 3.0, (5, 4))
    path = tmp_path / f"trace{suffix}"
    if suffix == ".csv":
        path.write_text("# rounds x workers, seconds\n" + "\n".join(",".join(f"{v:.17g}" for v in row) for row in data))
    else:
        np.save(path, data)
    trace = load_trace(path, reference_load=0.25, slope=2.0)
    np.testing.assert_array_equal(trace.base, data)
    np.testing.assert_allclose(trace.durations(2, np.full(4, 0.5)), data[2] + 0.5)  # + (0.5 − 0.25)·2
    np.testing.assert_allclose(trace.durations(2, np.zeros(4)), np.maximum(data[2] - 0.5, 0))


def test_bad_trace_files(tmp_path) -> None:
    np.save(tmp_path / "flat.npy", np.ones(4))
    with pytest.raises(ValueError, match="2-D"):
        load_trace(tmp_path / "flat.npy")
    np.save(tmp_path / "neg.npy", -np.ones((2, 2)))
    with pytest.raises(ValueError, match="finite and >= 0"):
        load_trace(tmp_path / "neg.npy")
    (tmp_path / "nan.csv").write_text("1,2\n3,nan\n")
    with pytest.raises(ValueError, match="finite"):
        load_trace(tmp_path / "nan.csv")
    with pytest.raises(ValueError, match=".csv or .npy"):
        load_trace(tmp_path / "trace.pkl")
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="expected numbers"):
        load_trace(tmp_path / "str.npy")


def test_from_pattern_and_segment() -> None:
    pattern = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    trace = DelayTrace.from_pattern(pattern, fast=1.0, slow=4.0)
    np.testing.assert_array_equal(trace.durations(0, np.full(3, 0.9)), [1.0, 4.0, 1.0])  # load-independent
    seg = trace.segment(1, 2)
    assert seg.rounds == 2 and np.array_equal(seg.base, trace.base[1:])
    with pytest.raises(ValueError, match="exceeds"):
        trace.segment(2, 2)
    with pytest.raises(ValueError, match="slow .* must exceed fast"):
        DelayTrace.from_pattern(pattern, fast=2.0, slow=2.0)


@pytest.mark.parametrize("call, message", [
    (lambda: Noise("pareto"), "noise kind must be one of"),
    (lambda: Noise("exponential", -1.0), "noise scale must be"),
    (lambda: Noise("lognormal", 1.0, 0.0), "noise sigma must be"),
    (lambda: ParametricDelays(overhead=float("nan")), "overhead must be"),
    (lambda: ParametricDelays().trace(0, 3), "rounds must be >= 1"),
    (lambda: DelayTrace(np.ones((2, 2)), np.ones(3)), "broadcast"),
])
def test_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
