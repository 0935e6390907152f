"""The coded runtime over gloo: 1 master + 4 workers, a sleeping straggler, malformed payloads, training.

One spawn of 5 processes runs three scenarios back to back on one process group (see
``coded_ranks.gloo_scenarios``); each test below checks one of them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coded_ranks import FAULTS, FAULTY_WORKER, SLEEP, TRAIN, gloo_scenarios, straggler_rounds, uncoded_reference
from dist_utils import run_workers

from commlib.coded.train import accuracy, build_parser, setup
from commlib.train.data import Dataset, load_digits

WORLD = 5


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def ranks(data) -> list[dict[str, dict[str, object]]]:
    return run_workers(gloo_scenarios, WORLD, data, timeout=200.0, collective_timeout=60.0)


def check_replay(ranks: list[dict[str, dict[str, object]]], scenario: str) -> None:
    """Every worker replayed exactly the master's masks."""
    masks = ranks[0][scenario]["masks"]
    for r in ranks[1:]:
        assert torch.equal(r[scenario]["masks"], masks)


def test_straggler_is_never_waited_for_and_decodes_are_exact(ranks) -> None:
    master = ranks[0]["exact"]
    durations, stragglers = master["durations"], master["stragglers"]
    rounds = len(durations)
    assert rounds == 12 and master["decode_rate"] == 1.0 and not master["missed"]
    assert straggler_rounds(stragglers, 3) == list(range(rounds)), stragglers  # worker 3 missed every cutoff
    assert float(np.max(durations)) < SLEEP / 3, durations  # and no round waited for its 1.5 s sleep
    assert float(np.median(durations)) < SLEEP / 10, durations
    errors = master["rel_errors"]
    assert sorted(errors) == list(range(12)) and max(errors.values()) <= 1e-6, errors
    assert master["late"][3] >= 1 and master["faulty"].sum() == 0
    worker3 = ranks[4]["exact"]
    assert worker3["skipped"], "the late worker should skip stale rounds instead of computing them"
    # The injector sleeps what is left of SLEEP after the round's own compute (0.17 s once on a loaded machine):
    # most of SLEEP per computed round, whatever the load.
    assert len(worker3["computed"]) < rounds / 2 and worker3["slept"] >= SLEEP * len(worker3["computed"]) * 0.5
    check_replay(ranks, "exact")


def test_malformed_payloads_are_counted_and_dropped(ranks) -> None:
    master = ranks[0]["faulty"]
    assert master["faulty"].tolist() == [0, len(FAULTS), 0, 0]
    assert set(FAULTS) <= set(straggler_rounds(master["stragglers"], FAULTY_WORKER))
    assert master["decode_rate"] == 1.0 and max(master["rel_errors"].values()) <= 1e-6
    assert ranks[1 + FAULTY_WORKER]["faulty"]["computed"] == list(range(len(master["durations"])))
    check_replay(ranks, "faulty")


def test_coded_training_matches_uncoded_training(ranks, data) -> None:
    master = ranks[0]["train"]
    assert master["decode_rate"] == 1.0 and max(master["rel_errors"].values()) <= 1e-6
    assert master["stragglers"].any(), "the run should have had stragglers"
    params, uncoded_acc = uncoded_reference(TRAIN, WORLD - 1, data)
    coded = master["parameters"]
    assert float((coded - params).norm() / params.norm()) < 1e-4
    built = setup(build_parser().parse_args(TRAIN), WORLD - 1, data)
    built.learner.load_flat_parameters(coded)
    coded_acc = [accuracy(m, built.data) for m in built.learner.models]
    assert min(uncoded_acc) > 0.7
    assert np.allclose(coded_acc, uncoded_acc, atol=0.01), (coded_acc, uncoded_acc)
    check_replay(ranks, "train")

