"""The scheduler API: replay from masks, checkpoints, admissibility, idle workers, decode records, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from commlib.coding import GC, MSGC, SRSGC, NoCoding, make_scheme
from commlib.coding.stragglers import BurstyModel, conforming, gilbert_elliott_pattern

SPECS = ["none", "gc:2", "sr-sgc:2,3,4", "m-sgc:1,2,3", "m-sgc:2,3,4"]
N, JOBS = 9, 12


def pattern(spec: str, seed: int = 0) -> np.ndarray:
    scheme = make_scheme(spec, N, JOBS)
    return conforming(gilbert_elliott_pattern(scheme.rounds, N, 0.2, 0.5, seed), scheme.model)


def all_tasks(scheme):
    return [scheme.tasks(i) for i in range(scheme.n)]


@pytest.mark.parametrize("spec", SPECS)
def test_tasks_are_a_pure_function_of_past_masks(spec: str) -> None:
    """A scheme driven online and one rebuilt from the masks (and from a checkpoint) plan identical rounds."""
    pat = pattern(spec, seed=3)
    online = make_scheme(spec, N, JOBS)
    plans, outcomes = [], []
    while not online.finished:
        plans.append(all_tasks(online))
        outcomes.append(online.commit(pat[online.round]))
    for r in range(len(plans)):
        replay = make_scheme(spec, N, JOBS)
        for row in pat[:r]:
            replay.commit(row)
        assert all_tasks(replay) == plans[r]
    buf = io.BytesIO()
    torch.save(online.state_dict(), buf)
    restored = make_scheme(spec, N, JOBS)
    restored.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert restored.round == online.round and np.array_equal(restored.decoded_at, online.decoded_at)
    assert [restored.decoding(t) for t in range(JOBS)] == [online.decoding(t) for t in range(JOBS)]
    assert [o.decoded for o in outcomes if o.decoded]  # jobs were decoded along the way


def test_load_state_dict_rejects_another_configuration() -> None:
    state = SRSGC(N, 2, 3, 4, JOBS).state_dict()
    with pytest.raises(ValueError, match="state is for"):
        SRSGC(N, 2, 3, 5, JOBS).load_state_dict(state)
    with pytest.raises(ValueError, match="bool tensor"):
        SRSGC(N, 2, 3, 4, JOBS).load_state_dict({**state, "masks": torch.zeros(2, N)})


def test_sr_sgc_repeats_the_lowest_missing_workers() -> None:
    n, s = 9, 2  # SR-SGC(2, 3, 4): s = 2, T = 2
    scheme = SRSGC(n, 2, 3, 4, JOBS, code="crc")  # CRC: decodable iff n − s results
    assert scheme.code.s == s
    scheme.commit(np.isin(np.arange(n), [1, 4, 7, 8]))  # round 0: four workers lose job 0
    scheme.commit(np.zeros(n, dtype=bool))
    jobs = [scheme.tasks(i)[0].job for i in range(n)]  # round 2: 4 − s = 2 repeats of job 0
    assert jobs == [2, 0, 2, 2, 0, 2, 2, 2, 2]
    out = scheme.commit(np.zeros(n, dtype=bool))
    assert out.decoded == (0, 2) and scheme.decoded_at[0] == 2


def test_m_sgc_reattempts_missing_chunks_instead_of_coding() -> None:
    scheme = MSGC(6, 1, 3, 2, JOBS, code="crc")  # K = 3 slots: chunks 0, 1, then D2 group 0 or a re-attempt
    scheme.commit(np.isin(np.arange(6), [2]))  # worker 2 loses chunk 0 of job 0
    scheme.commit(np.zeros(6, dtype=bool))
    tasks = all_tasks(scheme)
    slot2 = [next(t for t in ts if t.slot == 2) for ts in tasks]
    assert all(t.job == 0 for t in slot2)
    assert [t.kind for t in slot2] == ["coded", "coded", "uncoded", "coded", "coded", "coded"]
    assert slot2[2].units == tuple(range((2 * 2 + 0) * 3, (2 * 2 + 0) * 3 + 3))  # worker 2's chunk 0 (3 units)
    out = scheme.commit(np.zeros(6, dtype=bool))
    assert out.decoded == (0,) and scheme.delay == 2


def test_idle_workers_are_never_stragglers_and_tail_rounds_are_idle() -> None:
    scheme = SRSGC(N, 1, 2, 4, 2)  # s = 2, T = 1, two jobs
    scheme.commit(np.zeros(N, dtype=bool))
    scheme.commit(np.arange(N) < 4)  # round 1: job 1 loses four workers
    assert scheme.round == 2 and scheme.round < scheme.rounds
    active = scheme.active()
    assert active.sum() == 2 and list(np.flatnonzero(active)) == [0, 1]  # 4 − s repeats of job 1
    assert scheme.admissible(np.ones(N, dtype=bool)) == scheme.admissible(active)
    out = scheme.commit(np.arange(N) >= 2)  # only the idle workers "straggle": nothing is lost
    assert out.decoded == (1,) and scheme.finished
    assert not scheme.history[2].any()
    with pytest.raises(ValueError, match="has run all its 3 rounds"):
        scheme.commit(np.zeros(N, dtype=bool))


def test_admissible_follows_the_model() -> None:
    gc = GC(N, 2, JOBS)
    assert gc.admissible(np.arange(N) < 2) and not gc.admissible(np.arange(N) < 3)
    none = NoCoding(N, JOBS)
    assert none.admissible(np.zeros(N, dtype=bool)) and not none.admissible(np.arange(N) < 1)
    sr = SRSGC(N, 1, 2, 3, JOBS)
    sr.commit(np.arange(N) == 0)
    assert not sr.admissible(np.arange(N) == 0)  # a burst of 2 > B = 1 inside a window of 2
    assert sr.admissible((np.arange(N) == 1) | (np.arange(N) == 2))
    assert not sr.admissible(np.isin(np.arange(N), [1, 2, 3]))  # 4 distinct > λ = 3
    assert isinstance(sr.model, BurstyModel) and (sr.model.burst, sr.model.window, sr.model.lam) == (1, 2, 3)


def test_decoding_requires_a_decoded_job() -> None:
    scheme = GC(N, 1, JOBS)
    with pytest.raises(ValueError, match="not decoded yet"):
        scheme.decoding(0)
    scheme.commit(np.arange(N) < 3)  # FRC(9, 1): groups {0,1}, … — group 0 lost
    with pytest.raises(ValueError, match="missed"):
        scheme.decoding(0)
    with pytest.raises(ValueError, match="job must be in"):
        scheme.decoding(JOBS)


@pytest.mark.parametrize("call, message", [
    (lambda: SRSGC(9, 2, 4, 4, 5), "B to divide W - 1"),
    (lambda: SRSGC(4, 1, 2, 8, 5), "needs s = 4 <= n - 1 = 3"),
    (lambda: MSGC(4, 1, 2, 5, 5), "lambda must be in \\[1, 4\\]"),
    (lambda: MSGC(9, 2, 2, 3, 5), "W \\(window\\) must be >= 3"),
    (lambda: GC(4, 4, 5), "s \\(tolerated stragglers\\) must be in"),
    (lambda: GC(4, 1, 0), "jobs must be >= 1"),
    (lambda: make_scheme("gc", 4, 5), "takes 1 parameter"),
    (lambda: make_scheme("m-sgc:1,x,3", 4, 5), "integers separated by commas"),
    (lambda: make_scheme("mds:3", 4, 5), "unknown scheme"),
    (lambda: make_scheme("gc:1", 4, 5, code="mds"), "unknown code kind"),
    (lambda: GC(4, 1, 5).commit([True, False]), "shape \\(4,\\)"),
    (lambda: GC(4, 1, 5).tasks(-1), "worker must be in"),
])
def test_bad_input_is_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_make_scheme_builds_each_kind() -> None:
    assert make_scheme(" M-SGC:1,2,27 ", 256, 3, code="crc").label == "m-sgc(1,2,27)"
    assert make_scheme("sr-sgc:2,3,23", 256, 3).label == "sr-sgc(2,3,23)"
    assert make_scheme("gc:15", 256, 3).label == "gc(15)"
    assert make_scheme("none", 256, 3).label == "none"
