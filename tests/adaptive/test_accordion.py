"""Accordion switches layers to light compression in critical regimes and back to heavy outside them."""

from __future__ import annotations

import io

import pytest
import torch

from commlib.adaptive.accordion import HEAVY, LIGHT, Accordion
from commlib.adaptive.options import Option


def feed(acc: Accordion, steps: range, scales: dict[str, float]) -> torch.Tensor:
    """Run the runtime's loop over ``steps``: decide, then observe gradients of the given norm scale."""
    decision = acc.decide(steps[0])
    for step in steps:
        decision = acc.decide(step)
        grads = {name: torch.full((8, 8), scale) for name, scale in scales.items()}
        acc.observe(step, grads)
    return decision


def test_switches_on_the_relative_change_of_accumulated_norms():
    acc = Accordion("powersgd:4", "powersgd:1", interval=10, window=4)
    acc.register(["a", "b"])
    assert acc.decide(0).tolist() == [LIGHT, LIGHT]  # low compression before the first check
    feed(acc, range(0, 10), {"a": 1.0, "b": 1.0})
    assert acc.decide(10).tolist() == [LIGHT, LIGHT]  # the first check has no previous norm
    feed(acc, range(10, 20), {"a": 0.2, "b": 1.1})  # a: norm fell by 80 % (critical), b: 10 % (not)
    assert acc.decide(20).tolist() == [LIGHT, HEAVY]
    assert acc.critical() == {"a": True, "b": False}
    assert acc.choices() == {"a": Option.powersgd(4), "b": Option.powersgd(1)}
    feed(acc, range(20, 30), {"a": 0.25, "b": 1.1})  # both settled: a changed by 25 % < η
    assert acc.decide(30).tolist() == [HEAVY, HEAVY]
    feed(acc, range(30, 40), {"a": 0.25, "b": 0.5})  # b: 55 % change ≥ η = 0.5
    assert acc.decide(40).tolist() == [HEAVY, LIGHT]
    feed(acc, range(40, 50), {"a": 0.4, "b": 0.5})  # a rose by 60 % of its previous norm (37.5 % of the new)
    assert acc.decide(50).tolist() == [LIGHT, HEAVY]


def test_only_the_window_before_a_check_counts_and_lr_decay_forces_light():
    acc = Accordion(Option.topk(0.99), Option.topk(0.1), interval=10, window=2)
    acc.register(["w"])
    assert [s for s in range(25) if acc.wants_gradients(s)] == [8, 9]
    feed(acc, range(0, 8), {"w": 100.0})  # outside the window: ignored
    feed(acc, range(8, 10), {"w": 1.0})
    feed(acc, range(10, 20), {"w": 1.0})
    assert acc.decide(20).tolist() == [HEAVY]
    acc.notify_lr_decay()
    assert acc.decide(21).tolist() == [LIGHT]
    feed(acc, range(21, 30), {"w": 1.0})
    assert acc.decide(30).tolist() == [HEAVY]  # back to the norm rule at the next check


def test_a_missed_check_happens_at_the_next_decide_and_empty_windows_keep_the_decision():
    acc = Accordion("powersgd:4", "powersgd:1", interval=5, window=2)
    acc.register(["w"])
    feed(acc, range(0, 5), {"w": 1.0})
    acc.decide(5)
    feed(acc, range(5, 10), {"w": 1.0})
    assert acc.should_solve(12) and acc.decide(12).tolist() == [HEAVY]  # the check due at 10, done at 12
    assert not acc.should_solve(14) and acc.should_solve(15)
    assert acc.decide(15).tolist() == [HEAVY]  # nothing observed for this check: unchanged


def test_layers_fed_by_bucket_and_unseen_layers_keep_their_decision():
    acc = Accordion("powersgd:4", "powersgd:1", interval=4, window=2)
    acc.register(["a", "b"])
    feed(acc, range(0, 4), {"a": 1.0, "b": 1.0})
    feed(acc, range(4, 8), {"a": 1.0, "b": 1.0})
    assert acc.decide(8).tolist() == [HEAVY, HEAVY]
    for step in range(8, 12):  # only "a", in its own call (one bucket): it jumps; "b" is not seen
        acc.decide(step)
        acc.observe(step, {"a": torch.full((8, 8), 3.0)})
    assert acc.decide(12).tolist() == [LIGHT, HEAVY]
    with pytest.raises(ValueError, match="unregistered"):
        acc.observe(14, {"c": torch.ones(2)})


def test_state_dict_round_trips_through_weights_only_load():
    acc = Accordion("powersgd:4", "powersgd:1", interval=10, window=4)
    acc.register(["a", "b"])
    feed(acc, range(0, 10), {"a": 1.0, "b": 1.0})
    feed(acc, range(10, 18), {"a": 0.1, "b": 1.0})  # mid-window: the accumulator holds two steps
    buf = io.BytesIO()
    torch.save(acc.state_dict(), buf)
    buf.seek(0)
    other = Accordion("powersgd:4", "powersgd:1", interval=10, window=4)
    other.load_state_dict(torch.load(buf, weights_only=True))
    for a in (acc, other):
        feed(a, range(18, 20), {"a": 0.1, "b": 1.0})
    assert other.decide(20).tolist() == acc.decide(20).tolist() == [LIGHT, HEAVY]
    with pytest.raises(ValueError, match="options"):
        Accordion("powersgd:8", "powersgd:1", interval=10).load_state_dict(acc.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interval": 0}, "interval"),
        ({"interval": 10, "eta": 0.0}, "eta"),
        ({"interval": 10, "eta": float("nan")}, "eta"),
        ({"interval": 10, "window": 11}, "window"),
    ],
)
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Accordion("powersgd:4", "powersgd:1", **kwargs)


def test_observe_checks_layers():
    acc = Accordion("powersgd:4", "powersgd:1", interval=2, window=2)
    acc.register(["w"])
    with pytest.raises(ValueError, match="unregistered"):
        acc.observe(0, {"v": torch.ones(2)})
    with pytest.raises(ValueError, match="distinct"):
        acc.register(["w", "w"])
