"""Normalized loads and delays equal the implementation notes' table exactly (fractions.Fraction)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from commlib.coding import GC, MSGC, SRSGC, NoCoding, make_scheme
from commlib.coding.schemes import sr_sgc_s

# (spec, n, code, T, load as printed in the notes' oracle table)
TABLE = [
    ("none", 256, "frc", 0, 0.00390625),
    ("gc:6", 256, "crc", 0, 0.02734375),
    ("gc:15", 256, "frc", 0, 0.0625),
    ("sr-sgc:2,3,23", 256, "crc", 2, 0.05078125),
    ("sr-sgc:4,9,22", 256, "crc", 4, 0.03515625),
    ("m-sgc:1,2,27", 256, "crc", 1, 0.007543103448275862),
    ("m-sgc:1,2,9", 256, "crc", 1, 0.007102272727272727),
    ("m-sgc:2,3,23", 256, "crc", 3, 0.0075),
    ("sr-sgc:2,5,4", 20, "crc", 2, 0.15),
    ("m-sgc:2,5,4", 20, "frc", 5, 0.06818181818181818),
]


def paper_load(spec: str, n: int) -> Fraction:
    """The notes' formulas, written out independently of the schemes."""
    kind, _, rest = spec.partition(":")
    p = [int(v) for v in rest.split(",")] if rest else []
    if kind == "none":
        return Fraction(1, n)
    if kind == "gc":
        return Fraction(p[0] + 1, n)
    b, w, lam = p
    if kind == "sr-sgc":
        return Fraction(-(-b * lam // (w - 1 + b)) + 1, n)
    if lam == n:
        return Fraction(w - 1 + b, n * (w - 1))
    return Fraction((lam + 1) * (w - 1 + b), n * (b + (w - 1) * (lam + 1)))


@pytest.mark.parametrize("spec, n, code, delay, printed", TABLE, ids=[f"{t[0]}@{t[1]}" for t in TABLE])
def test_loads_match_the_table(spec: str, n: int, code: str, delay: int, printed: float) -> None:
    scheme = make_scheme(spec, n, jobs=4, code=code)
    assert isinstance(scheme.load, Fraction)
    assert scheme.load == paper_load(spec, n)
    assert float(scheme.load) == pytest.approx(printed, rel=1e-15)
    assert scheme.delay == delay


def test_table_spot_values_exactly() -> None:
    assert GC(256, 15, 1).load == Fraction(1, 16)
    assert SRSGC(256, 2, 3, 23, 1, code="crc").load == Fraction(13, 256)
    assert MSGC(256, 1, 2, 27, 1, code="crc").load == Fraction(7, 928)  # = 0.007543103448275862…
    assert SRSGC(20, 2, 5, 4, 1, code="crc").load == Fraction(3, 20)
    assert MSGC(20, 2, 5, 4, 1).load == Fraction(3, 44)  # = 0.0681818…
    assert sr_sgc_s(2, 3, 23) == 12 and sr_sgc_s(4, 9, 22) == 8 and sr_sgc_s(2, 5, 4) == 2


@pytest.mark.parametrize("spec", ["gc:12", "sr-sgc:2,3,23", "m-sgc:1,2,27", "m-sgc:2,3,23"])
def test_uneven_fractional_repetition_costs_slightly_more(spec: str) -> None:
    frc, crc = make_scheme(spec, 256, 2, code="frc"), make_scheme(spec, 256, 2, code="crc")
    assert crc.load == paper_load(spec, 256) < frc.load < paper_load(spec, 256) * Fraction(11, 10)


@pytest.mark.parametrize("n, b, w, lam", [(8, 1, 2, 8), (6, 2, 4, 6)])
def test_m_sgc_with_lambda_n_has_no_coded_part(n: int, b: int, w: int, lam: int) -> None:
    scheme = MSGC(n, b, w, lam, 3)
    assert scheme.code is None and scheme.units_per_job == n * (w - 1)
    assert scheme.load == paper_load(f"m-sgc:{b},{w},{lam}", n)


@pytest.mark.parametrize("spec, n, code", [(t[0], t[1], t[2]) for t in TABLE if t[1] == 20]
                         + [("gc:3", 12, "frc"), ("m-sgc:1,3,2", 9, "crc"), ("sr-sgc:1,3,5", 10, "frc")])
def test_the_load_is_what_the_busiest_worker_computes(spec: str, n: int, code: str) -> None:
    """Run a few clean rounds: no worker ever computes more than load × units, and some worker reaches it."""
    scheme = make_scheme(spec, n, jobs=10, code=code)
    peak = 0
    while scheme.round < 6:
        units = scheme.round_units()
        assert units.max() <= scheme.load * scheme.units_per_job
        peak = max(peak, int(units.max()))
        total = sum(len(t.units) for i in range(n) for t in scheme.tasks(i))
        assert total == units.sum()
        scheme.commit(np.zeros(n, dtype=bool))
    assert peak == scheme.load * scheme.units_per_job


def test_no_coding_is_gc_zero() -> None:
    a, b = NoCoding(5, 2), GC(5, 0, 2)
    assert a.load == b.load == Fraction(1, 5) and a.label == "none" and b.label == "gc(0)"
    assert [a.tasks(i) for i in range(5)] == [b.tasks(i) for i in range(5)]
