"""The L-GreCo dynamic program against brute force, and its guarantees (feasible, monotone, never worse)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commlib.adaptive.dp import discretize, pareto_mask, solve, solve_discretized

SETTINGS = settings(max_examples=150, deadline=None)
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # no silent NaN/inf arithmetic


def all_choices(layers: int, options: int) -> np.ndarray:
    """Every choice of one option per layer, as rows."""
    return np.array(list(itertools.product(range(options), repeat=layers)), dtype=np.int64).reshape(-1, layers)


def brute_discrete(cost: np.ndarray, q: np.ndarray, bins: int) -> float | None:
    """Least total cost with Σ q ≤ bins (inf costs excluded), or None."""
    layers, options = cost.shape
    if layers == 0:
        return 0.0
    choices = all_choices(layers, options)
    rows = np.arange(layers)
    totals = cost[rows, choices].sum(axis=1)
    fits = (q[rows, choices].sum(axis=1) <= bins) & np.isfinite(totals)
    return float(totals[fits].min()) if fits.any() else None


@st.composite
def tables(draw, max_layers: int = 6, max_options: int = 4):
    layers = draw(st.integers(0, max_layers))
    options = draw(st.integers(1, max_options))
    values = st.floats(0, 100, allow_nan=False) | st.sampled_from([0.0, 1.0, 2.0, np.inf])
    cost = np.array(draw(st.lists(values, min_size=layers * options, max_size=layers * options)))
    error = np.array(draw(st.lists(values, min_size=layers * options, max_size=layers * options)))
    cost, error = cost.reshape(layers, options), error.reshape(layers, options)
    default = np.array(draw(st.lists(st.integers(0, options - 1), min_size=layers, max_size=layers)), dtype=np.int64)
    rows = np.arange(layers)
    cost[rows, default] = np.where(np.isfinite(cost[rows, default]), cost[rows, default], 50.0)
    error[rows, default] = np.where(np.isfinite(error[rows, default]), error[rows, default], 5.0)
    return cost, error, default


@SETTINGS
@given(tables(), st.integers(1, 40), st.integers(0, 12))
def test_dp_equals_brute_force_on_discretized_problem(t, bins, q_max):
    cost, _, _ = t
    q = np.random.default_rng(int(cost.size + bins + q_max)).integers(0, q_max + 1, size=cost.shape)
    expected = brute_discrete(cost, q, bins)
    for prune in (True, False):  # pruning keeps the optimum
        found = solve_discretized(cost, q, bins, prune=prune)
        if expected is None:
            assert found is None
            continue
        choice, total = found
        rows = np.arange(cost.shape[0])
        assert choice.dtype == np.int64 and choice.shape == (cost.shape[0],)
        assert q[rows, choice].sum() <= bins
        assert total == pytest.approx(cost[rows, choice].sum(), rel=1e-12, abs=1e-12)
        assert total == pytest.approx(expected, rel=1e-12, abs=1e-12)


@SETTINGS
@given(tables(), st.integers(1, 6) | st.integers(1, 60))
def test_solve_is_optimal_feasible_and_never_worse_than_uniform(t, bins):
    cost, error, default = t
    for alpha in (0.0, 0.3, 0.9, 1.0, 1.5, 4.0):
        check_solution(cost, error, default, alpha, bins)


def check_solution(cost: np.ndarray, error: np.ndarray, default: np.ndarray, alpha: float, bins: int) -> None:
    sol = solve(cost, error, default, alpha=alpha, bins=bins)
    layers = cost.shape[0]
    rows = np.arange(layers)
    d_cost, d_error = cost[rows, default].sum(), error[rows, default].sum()
    budget = alpha * d_error
    assert sol.budget == pytest.approx(budget)
    assert sol.choice.shape == (layers,) and ((0 <= sol.choice) & (sol.choice < cost.shape[1])).all()
    assert sol.cost == pytest.approx(cost[rows, sol.choice].sum()) and sol.error == pytest.approx(
        error[rows, sol.choice].sum()
    )
    if sol.source == "fallback":
        assert not sol.feasible and (sol.choice == default).all() and d_error > budget
    else:
        assert sol.feasible and sol.error <= budget * (1 + 1e-12) + 1e-300  # feasible for the real errors
    if d_error <= budget:  # the uniform default is feasible: never worse than it
        assert sol.cost <= d_cost * (1 + 1e-12)
    # optimal among the choices that fit after discretizing the SAME way (or the uniform default)
    if budget > 0:
        expected = brute_discrete(cost, discretize(error, budget, bins), bins)
    else:
        zero = (error == 0) & np.isfinite(cost)
        expected = float(np.where(zero, cost, np.inf).min(axis=1).sum()) if zero.any(axis=1).all() else None
    candidates = [v for v in (expected, d_cost if d_error <= budget else None) if v is not None]
    if candidates:
        assert sol.cost == pytest.approx(min(candidates), rel=1e-12, abs=1e-12)
    else:
        assert sol.source == "fallback"


@SETTINGS
@given(tables(), st.integers(1, 60))
def test_cost_is_non_increasing_in_alpha(t, bins):
    cost, error, default = t
    alphas = [0.1, 0.5, 0.9, 1.0, 1.2, 2.0, 5.0, 50.0]
    sols = [solve(cost, error, default, alpha=a, bins=bins) for a in alphas]
    for lo, hi in itertools.pairwise(sols):
        if lo.source != "fallback":  # a fallback ignores the budget; from a feasible α on, cost only falls
            assert hi.source != "fallback"
            assert hi.cost <= lo.cost * (1 + 1e-12) + 1e-12


@SETTINGS
@given(
    st.lists(st.floats(0, 1e6, allow_nan=False) | st.just(np.inf), min_size=1, max_size=30),
    st.floats(1e-3, 1e6),
    st.integers(1, 10_000),
)
def test_discretize_rounds_up_and_marks_overflow(errors, budget, bins):
    e = np.array(errors)
    q = discretize(e, budget, bins)
    width = budget / bins
    fits = q <= bins
    assert (q[fits] * width >= e[fits]).all()
    assert (q[fits] <= np.ceil(e[fits] / width) + 1).all()
    assert (q <= bins + 1).all() and not fits[e > budget].any()
    assert fits[e <= budget * (1 - 1e-9)].all()


def test_pareto_mask_drops_dominated_and_duplicates():
    cost = np.array([[5.0, 3.0, 3.0, 9.0, 1.0, np.inf]])
    q = np.array([[1, 2, 2, 0, 9, 0]])
    keep = pareto_mask(cost, q, np.isfinite(cost) & (q <= 5))
    assert keep.tolist() == [[True, True, False, True, False, False]]


def test_uniform_default_survives_rounding_up():
    # budget 2 in 3 bins: each default error 1 rounds up to 2 bins, so the default does not fit the discrete
    # problem (4 > 3) although it fits the real budget; the cheapest discrete choice costs 6, the default 2
    cost, error = np.array([[1.0, 5.0], [1.0, 5.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])
    assert solve_discretized(cost, discretize(error, 2.0, 3), 3)[1] == 6.0
    sol = solve(cost, error, 0, alpha=1.0, bins=3)
    assert sol.source == "default" and sol.cost == 2.0 and sol.choice.tolist() == [0, 0] and sol.feasible


def test_edge_cases():
    empty = solve(np.zeros((0, 3)), np.zeros((0, 3)), 0)
    assert empty.choice.shape == (0,) and empty.cost == 0.0 and empty.feasible
    one = solve(np.array([[2.0], [3.0]]), np.array([[1.0], [4.0]]), 0)
    assert one.choice.tolist() == [0, 0] and one.cost == 5.0 and one.feasible
    # the budget below the least possible error: the uniform default, flagged infeasible
    low = solve(np.array([[1.0, 5.0]]), np.array([[2.0, 1.0]]), 0, alpha=0.1)
    assert low.source == "fallback" and low.choice.tolist() == [0] and not low.feasible
    # a zero budget takes exact zero-error options only
    zero = solve(np.array([[1.0, 5.0, 4.0]]), np.array([[0.0, 0.0, 0.0]]), 1)
    assert zero.choice.tolist() == [0] and zero.cost == 1.0
    # infinities are unavailable options, never chosen
    inf = solve(np.array([[np.inf, 1.0, 3.0]]), np.array([[0.0, np.inf, 1.0]]), 2, alpha=10)
    assert inf.choice.tolist() == [2]
    infeasible = solve_discretized(np.array([[1.0, np.inf]]), np.array([[5, 0]]), 4)
    assert infeasible is None
    # a subnormal budget still splits into bins (errors and budget are scaled by a power of two first)
    tiny = solve(np.array([[1.0, 2.0], [3.0, 1.0]]), np.array([[5e-324, 0.0], [0.0, 0.0]]), 0)
    assert tiny.choice.tolist() == [0, 1] and tiny.cost == 2.0 and tiny.feasible
    assert discretize(np.array([5e-324, 0.0, 1e-323, 1.0]), 1e-323, 10).tolist() == [5, 0, 10, 11]
    with pytest.raises(ValueError, match="budget"):
        discretize(np.array([1.0]), 0.0, 10)


@pytest.mark.parametrize(
    ("cost", "error", "default", "kwargs", "match"),
    [
        ([[np.nan]], [[1.0]], 0, {}, "NaN"),
        ([[1.0]], [[np.nan]], 0, {}, "NaN"),
        ([[-1.0]], [[1.0]], 0, {}, "negative"),
        ([[1.0]], [[-np.inf]], 0, {}, "negative"),
        ([[1.0, 2.0]], [[1.0]], 0, {}, "equal shape"),
        ([1.0], [1.0], 0, {}, "2-D"),
        ([[1.0]], [[1.0]], 1, {}, r"\[0, 1\)"),
        ([[1.0]], [[1.0]], [0, 0], {}, "one option index per layer"),
        ([[1.0]], [[1.0]], 0.5, {}, "option index"),
        ([[np.inf, 1.0]], [[1.0, 1.0]], 0, {}, "infinite"),
        ([[1.0]], [[1.0]], 0, {"bins": 0}, "bins"),
        ([[1.0]], [[1.0]], 0, {"alpha": np.inf}, "alpha"),
        ([[1.0]], [[1.0]], 0, {"budget": -1.0}, "budget"),
    ],
)
def test_bad_input_raises_value_error(cost, error, default, kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve(np.array(cost), np.array(error), default, **kwargs)
