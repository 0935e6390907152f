"""The local launcher runs a gloo group, returns results in rank order and never hangs on a failure."""

from __future__ import annotations

import time

import pytest
from train.spawn_workers import die_without_report, fail_on_rank_one, rank_sum, sleep_long

from commlib.train.spawn import LaunchError, launch


def test_results_come_back_in_rank_order_from_one_group():
    results = launch(rank_sum, 3, 10, timeout=120)
    assert [r[0] for r in results] == [0, 1, 2]
    assert all(r[1] == 3 and r[2] == 0 + 1 + 2 + 3 * 10 and r[3] == "127.0.0.1" for r in results)


def test_a_failing_rank_is_named_with_its_traceback_and_the_others_are_stopped():
    start = time.monotonic()
    with pytest.raises(LaunchError, match=r"(?s)rank 1 failed:.*ValueError: rank one says no"):
        launch(fail_on_rank_one, 2, timeout=120, collective_timeout=100)
    assert time.monotonic() - start < 60  # did not wait for the peer's collective timeout


def test_timeout_and_silent_death_are_errors():
    with pytest.raises(LaunchError, match=r"did not finish within 3 s"):
        launch(sleep_long, 1, timeout=3)
    with pytest.raises(LaunchError, match="died with exit code 3"):
        launch(die_without_report, 1, timeout=120)


@pytest.mark.parametrize("world, timeout", [(0, 1.0), (True, 1.0), (2, 0.0)])
def test_bad_arguments(world, timeout):
    with pytest.raises(ValueError):
        launch(rank_sum, world, 0, timeout=timeout)
