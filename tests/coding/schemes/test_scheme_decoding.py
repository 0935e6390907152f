"""Schemes decode every job t by round t + T on conforming straggler patterns, and fail when under-provisioned.

Patterns: per-worker Gilbert–Elliott chains thinned round by round until they obey the
(B, W, λ) model (500 patterns over five parameter sets), and worst cases from the
adversary that targets the workers holding the oldest pending job. The same patterns
run with λ (M-SGC) or s (SR-SGC) one notch too small must produce failures: the tests
have power (SR-SGC: the largest λ' whose s is one smaller; M-SGC: λ − 2).
"""

from __future__ import annotations

import numpy as np
import pytest

from commlib.coding import GC, MSGC, SRSGC, FractionalRepetitionCode, Scheme
from commlib.coding.schemes import sr_sgc_s
from commlib.coding.stragglers import BurstyAdversary, BurstyModel, conforming, gilbert_elliott_pattern, iid_pattern

JOBS = 24
# (n, B, W, λ, code): 100 Gilbert–Elliott patterns each
CASES = [(12, 1, 2, 4, "crc"), (12, 2, 3, 4, "frc"), (16, 2, 5, 6, "crc"), (10, 1, 3, 6, "frc"),
         (20, 2, 5, 4, "crc")]
PATTERNS_PER_CASE = 100


def run(scheme: Scheme, pattern: np.ndarray) -> tuple[int, np.ndarray]:
    """Commit ``pattern`` round by round; (number of missed jobs, round each job was decoded in)."""
    missed = 0
    while not scheme.finished:
        missed += len(scheme.commit(pattern[scheme.round]).missed)
    return missed, scheme.decoded_at


def run_checking_decodes(scheme: Scheme, pattern: np.ndarray) -> int:
    """Like :func:`run`, and every decode, applied to the tasks' unit vectors, must give the all-ones vector."""
    vectors: dict[tuple[int, int, int], np.ndarray] = {}
    missed = 0
    while not scheme.finished:
        r = scheme.round
        for i in range(scheme.n):
            for task in scheme.tasks(i):
                vec = np.zeros(scheme.units_per_job)
                vec[list(task.units)] = task.coeffs
                vectors[(r, i, task.slot)] = (task.job, vec)
        out = scheme.commit(pattern[r])
        missed += len(out.missed)
        for t in out.decoded:
            total = np.zeros(scheme.units_per_job)
            for rr, i, slot, c in scheme.decoding(t).terms:
                job, vec = vectors[(rr, i, slot)]
                assert job == t and not scheme.history[rr, i], "decode uses a result that never arrived"
                total += c * vec
            np.testing.assert_allclose(total, 1.0, atol=1e-8)
    return missed


def smaller_lambda_for_sr(b: int, w: int, lam: int) -> int:
    """The largest λ' < λ whose SR-SGC code tolerates fewer stragglers (s' < s)."""
    s = sr_sgc_s(b, w, lam)
    return max(v for v in range(1, lam) if sr_sgc_s(b, w, v) < s)


def ge_patterns(n: int, b: int, w: int, lam: int, rounds: int) -> list[np.ndarray]:
    model = BurstyModel(b, w, lam)
    return [conforming(gilbert_elliott_pattern(rounds, n, 0.15, 0.5, seed=1000 * n + seed), model)
            for seed in range(PATTERNS_PER_CASE)]


@pytest.mark.parametrize("n, b, w, lam, code", CASES, ids=[f"n{c[0]}-{c[1]},{c[2]},{c[3]}-{c[4]}" for c in CASES])
def test_sequential_schemes_decode_every_conforming_pattern(n: int, b: int, w: int, lam: int, code: str) -> None:
    rounds = JOBS + w - 2 + b
    patterns = ge_patterns(n, b, w, lam, rounds)
    assert all(BurstyModel(b, w, lam).conforms(p) for p in patterns)
    assert np.mean([p.sum() / p.shape[0] for p in patterns]) > 0.4 * lam / w  # the patterns do straggle
    failures = {"sr": 0, "m": 0, "sr-small": 0, "m-small": 0}
    for k, pattern in enumerate(patterns):
        schemes = {"sr": SRSGC(n, b, w, lam, JOBS, code=code), "m": MSGC(n, b, w, lam, JOBS, code=code),
                   "sr-small": SRSGC(n, b, w, smaller_lambda_for_sr(b, w, lam), JOBS, code=code),
                   "m-small": MSGC(n, b, w, lam - 2, JOBS, code=code)}
        for name, scheme in schemes.items():
            if k < 10 and name in ("sr", "m"):
                missed = run_checking_decodes(scheme, pattern)
            else:
                missed, decoded_at = run(scheme, pattern)
                if name in ("sr", "m"):
                    assert (decoded_at >= 0).all() and (decoded_at <= np.arange(JOBS) + scheme.delay).all()
            failures[name] += missed > 0
    assert failures["sr"] == 0 and failures["m"] == 0, failures
    # power: the same patterns break the under-provisioned schemes
    assert failures["sr-small"] >= 5 and failures["m-small"] >= 5, failures


@pytest.mark.parametrize("n, b, w, lam, code", CASES, ids=[f"n{c[0]}-{c[1]},{c[2]},{c[3]}-{c[4]}" for c in CASES])
def test_sequential_schemes_survive_the_targeted_adversary(n: int, b: int, w: int, lam: int, code: str) -> None:
    """Each round the adversary straggles as many workers as (B, W, λ) allows, the oldest pending job's first."""
    failures = {}
    for name, make in {"sr": lambda v: SRSGC(n, b, w, v, JOBS, code=code),
                       "m": lambda v: MSGC(n, b, w, v, JOBS, code=code)}.items():
        for small in (False, True):
            v = (smaller_lambda_for_sr(b, w, lam) if name == "sr" else lam - 2) if small else lam
            count = 0
            for seed in range(6):
                scheme = make(v)
                adversary = BurstyAdversary(n, BurstyModel(b, w, lam), seed=seed)
                while not scheme.finished:
                    r = scheme.round
                    pending = [t for t in range(max(0, r - scheme.delay), min(r, JOBS - 1) + 1)
                               if scheme.status[t] == 0]
                    prefer = np.array([any(t.job == min(pending, default=-1) for t in scheme.tasks(i))
                                       for i in range(n)])
                    mask = adversary.next(scheme.history[max(0, r - w + 1): r], prefer)
                    count += len(scheme.commit(mask).missed) > 0
            failures[(name, small)] = count
    assert failures[("sr", False)] == 0 and failures[("m", False)] == 0, failures
    assert failures[("sr", True)] > 0 and failures[("m", True)] > 0, failures


@pytest.mark.parametrize("code", ["frc", "crc"])
def test_gc_decodes_at_once_with_at_most_s_stragglers(code: str) -> None:
    n, s = 12, 3
    for seed in range(20):
        pattern = conforming(iid_pattern(JOBS, n, 0.3, seed=seed), GC(n, s, 1).model)
        missed, decoded_at = run(GC(n, s, JOBS, code=code), pattern)
        assert missed == 0 and np.array_equal(decoded_at, np.arange(JOBS))


def test_gc_misses_a_job_when_a_whole_group_straggles() -> None:
    n, s = 12, 3
    group = FractionalRepetitionCode(n, s).group
    pattern = np.zeros((JOBS, n), dtype=bool)
    pattern[5, group == 1] = True  # s + 1 stragglers, all of group 1
    scheme = GC(n, s, JOBS)
    assert not scheme.model.conforms(pattern)
    missed, decoded_at = run(scheme, pattern)
    assert missed == 1 and scheme.status[5] == -1 and decoded_at[5] == -1
    spread = np.zeros((JOBS, n), dtype=bool)
    spread[5, [0, 3, 6, 9]] = True  # also s + 1, but every group keeps a survivor: FRC still decodes
    assert run(GC(n, s, JOBS), spread)[0] == 0
    assert run(GC(n, s, JOBS, code="crc"), spread)[0] == 1
