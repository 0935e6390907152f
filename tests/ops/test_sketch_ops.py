"""Count sketch and blockwise SRHT: the native kernels against the reference and against plain-Python oracles."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pytest
import torch
from hash_oracle import py_hash32
from hypothesis import given, settings
from hypothesis import strategies as st

import commlib.ops as ops
from commlib.ops import reference

needs_extension = pytest.mark.skipif(ops.backend() == "reference", reason="commlib._C is not loaded")

P = 2**31 - 1


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


# ---------------------------------------------------------------- plain-Python oracles of csrc/hash.h, csrc/sketch.h


def py_row(seed: int, j: int) -> tuple[int, ...]:
    w = [py_hash32(seed, 8 * j + 1 + t) for t in range(6)]
    return 1 + w[0] % (P - 1), w[1] % P, w[2] % P, w[3] % P, w[4] % P, w[5] % P


def py_bucket_sign(seed: int, j: int, cols: int, i: int) -> tuple[int, float]:
    a, b, c0, c1, c2, c3 = py_row(seed, j)
    bucket = (((a * i + b) % P) * cols) >> 31
    g = (((c3 * i + c2) % P * i + c1) % P * i + c0) % P
    return bucket, -1.0 if g & 1 else 1.0


def sketchers() -> list[tuple[str, object]]:
    paths = [("reference", reference.count_sketch_add_)]
    if ops.backend() != "reference":
        paths.append(("kernel", lambda t, x, s, o: torch.ops.commlib.count_sketch_add_(t, x, ops._as_int64(s), o)))
    return paths


def unsketchers() -> list[tuple[str, object]]:
    paths = [("reference", reference.count_unsketch)]
    if ops.backend() != "reference":
        paths.append(("kernel", lambda t, s, o, n: torch.ops.commlib.count_unsketch(t, ops._as_int64(s), o, n)))
    return paths


SKETCH = sketchers()
UNSKETCH = unsketchers()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def int_data(n: int, seed: int, high: int = 100) -> torch.Tensor:
    return torch.randint(-high, high + 1, (n,), generator=torch.Generator().manual_seed(seed)).float()


# ---------------------------------------------------------------- hashes


def test_reference_hash32_matches_python() -> None:
    counters = [0, 1, 2, 12345, 2**31 - 1, 2**32 - 1, 2**32, 2**32 + 5, 2**40 + 3, 2**62 + 1]
    for key in (0, 1, 2**32 - 1, 2**32, 2**63 + 12345, 2**64 - 1, -1):
        got = reference.hash32(key, torch.tensor(counters)).tolist()
        assert got == [py_hash32(key, i) for i in counters]


@pytest.mark.parametrize("sketch", [p[1] for p in SKETCH], ids=[p[0] for p in SKETCH])
@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 7), (5, 1000), (2, 2**16 + 1)])
def test_one_hot_sketch_matches_python_oracle(sketch, rows: int, cols: int) -> None:
    """The sketch of e_i has exactly sign_j(i) at bucket_j(i) in every row j (the formulas of csrc/sketch.h)."""
    for seed in (0, 7, -3, 2**63 + 99):
        for i in (0, 1, 2, 1000, 65_537, P - 2):
            table = torch.zeros(rows, cols)
            sketch(table, torch.ones(1), seed, i)
            expected = torch.zeros(rows, cols)
            for j in range(rows):
                bucket, sign = py_bucket_sign(seed, j, cols, i)
                expected[j, bucket] = sign
            assert torch.equal(table, expected), (seed, i)


@pytest.mark.parametrize("sketch", [p[1] for p in SKETCH], ids=[p[0] for p in SKETCH])
def test_every_row_spreads_consecutive_indices(sketch) -> None:
    """Seed 0 included: 4096 consecutive ones land in most of 64 buckets in every row (a = 1 would use one)."""
    for seed in (0, 1, 2**63 + 99):
        table = torch.zeros(5, 64)
        sketch(table, torch.ones(4096), seed, 0)
        assert int((table != 0).sum(dim=1).min()) >= 48, seed


# ---------------------------------------------------------------- count sketch: kernel == reference


@needs_extension
@pytest.mark.parametrize("rows", [1, 2, 5, 64])
@pytest.mark.parametrize("cols", [1, 7, 1000])
def test_sketch_kernel_equals_reference_integer_data(rows: int, cols: int) -> None:
    """Integer-valued data: every partial sum is exact, so the order of the sums cannot matter: bit for bit."""
    for n, offset, seed in ((0, 0, 1), (1, 5, 2), (2047, 0, -1), (2049, 123_456, 2**40), (10_000, P - 1 - 10_000, 9)):
        x = int_data(n, seed=n)
        start = int_data(rows * cols, seed=rows + cols).view(rows, cols)
        k_table, r_table = start.clone(), start.clone()
        torch.ops.commlib.count_sketch_add_(k_table, x, seed, offset)
        reference.count_sketch_add_(r_table, x, seed, offset)
        assert torch.equal(bits_of(k_table), bits_of(r_table)), (n, offset, seed)


@needs_extension
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 5000),
    rows=st.integers(1, 9),
    cols=st.integers(1, 300),
    offset=st.integers(0, 10**6),
    seed=st.integers(-(2**63), 2**63 - 1),
)
def test_sketch_kernel_equals_reference_float_data(n: int, rows: int, cols: int, offset: int, seed: int) -> None:
    """Arbitrary floats: the same sums (both accumulate each row in index order), so close; halves stay bitwise."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    k_table, r_table = torch.zeros(rows, cols), torch.zeros(rows, cols)
    torch.ops.commlib.count_sketch_add_(k_table, x, seed, offset)
    reference.count_sketch_add_(r_table, x, seed, offset)
    torch.testing.assert_close(k_table, r_table, rtol=1e-5, atol=1e-5 * max(1.0, float(x.abs().sum())))
    split = n // 3
    parts = torch.zeros(rows, cols)
    torch.ops.commlib.count_sketch_add_(parts, x[:split], seed, offset)
    torch.ops.commlib.count_sketch_add_(parts, x[split:], seed, offset + split)
    assert torch.equal(bits_of(parts), bits_of(k_table))  # the same additions in the same order


# ---------------------------------------------------------------- linearity and offsets


def test_linearity_reference_float64() -> None:
    """With a float64 table and dyadic data (multiples of 2**-10 below 2**20) every sum is exact: linear exactly."""
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-(2**30), 2**30, (5000,), generator=g).double() / 1024
    y = torch.randint(-(2**30), 2**30, (5000,), generator=g).double() / 1024
    both, separate = torch.zeros(5, 211, dtype=torch.float64), torch.zeros(5, 211, dtype=torch.float64)
    reference.count_sketch_add_(both, x + y, 17, 3)
    reference.count_sketch_add_(separate, x, 17, 3)
    reference.count_sketch_add_(separate, y, 17, 3)
    assert torch.equal(both, separate)
    scaled = torch.zeros(5, 211, dtype=torch.float64)
    reference.count_sketch_add_(scaled, -2 * x, 17, 3)
    alone = torch.zeros(5, 211, dtype=torch.float64)
    reference.count_sketch_add_(alone, x, 17, 3)
    assert torch.equal(scaled, -2 * alone)


@pytest.mark.parametrize("sketch", [p[1] for p in SKETCH], ids=[p[0] for p in SKETCH])
def test_linearity_integer_data(sketch) -> None:
    x, y = int_data(9000, seed=1, high=1000), int_data(9000, seed=2, high=1000)
    both, separate = torch.zeros(4, 97), torch.zeros(4, 97)
    sketch(both, x + y, 23, 0)
    sketch(separate, x, 23, 0)
    sketch(separate, y, 23, 0)
    assert torch.equal(both, separate)


@pytest.mark.parametrize("sketch", [p[1] for p in SKETCH], ids=[p[0] for p in SKETCH])
@settings(max_examples=12, deadline=None)
@given(n=st.integers(0, 6000), cuts=st.lists(st.floats(0, 1), max_size=3), offset=st.integers(0, 10**9))
def test_pieces_at_offsets_equal_concatenation(sketch, n: int, cuts: list[float], offset: int) -> None:
    x = int_data(n, seed=n)
    whole = torch.zeros(3, 50)
    sketch(whole, x, 99, offset)
    bounds = [0, *sorted(round(c * n) for c in cuts), n]
    pieces = torch.zeros(3, 50)
    for lo, hi in zip(bounds, bounds[1:]):
        sketch(pieces, x[lo:hi], 99, offset + lo)
    assert torch.equal(pieces, whole)
    shifted = torch.zeros(3, 50)  # the global index matters: the same data at another offset sketches differently
    sketch(shifted, x, 99, offset + 1)
    assert n < 5 or not torch.equal(shifted, whole)


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@needs_extension
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("offset", [0, 12_345, P - 1 - 300_007])
def test_large_inputs_same_bits_for_every_thread_count(rows: int, offset: int) -> None:
    """Past the parallel cut-off (many chunks, ragged end, column-partitioned rows): integer data equals the
    reference bit for bit, float data gives the same bits on 1, 2 and 3 threads, and so does unsketch."""
    n, cols = 300_007, 4099
    ints = int_data(n, seed=rows)
    floats = torch.randn(n, generator=torch.Generator().manual_seed(offset % 1000))
    expected = torch.zeros(rows, cols)
    reference.count_sketch_add_(expected, ints, 7, offset)
    float_tables, estimates = [], []
    for count in (1, 2, 3):
        with threads(count):
            table = torch.zeros(rows, cols)
            torch.ops.commlib.count_sketch_add_(table, ints, 7, offset)
            assert torch.equal(bits_of(table), bits_of(expected)), count
            table = torch.zeros(rows, cols)
            torch.ops.commlib.count_sketch_add_(table, floats, 7, offset)
            float_tables.append(table)
            estimates.append(torch.ops.commlib.count_unsketch(table, 7, offset, n))
    assert all(torch.equal(bits_of(t), bits_of(float_tables[0])) for t in float_tables)
    assert all(torch.equal(bits_of(e), bits_of(estimates[0])) for e in estimates)
    assert torch.equal(bits_of(estimates[0]), bits_of(reference.count_unsketch(float_tables[0], 7, offset, n)))


# ---------------------------------------------------------------- unsketch


@needs_extension
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 64])
def test_unsketch_kernel_equals_reference(rows: int) -> None:
    """Medians select an element, and sign·value is exact: bit for bit for any finite table (non-finite tables are
    rejected: test_decoder_fuzz.py)."""
    g = torch.Generator().manual_seed(rows)
    for cols, length, offset, seed in ((1, 10, 0, 0), (97, 2047, 3, -5), (1000, 4099, P - 1 - 4099, 2**50)):
        table = torch.randn(rows, cols, generator=g) * torch.exp(4 * torch.randn(rows, cols, generator=g))
        table[0, 0] = 3.4e38
        k = torch.ops.commlib.count_unsketch(table, seed, offset, length)
        r = reference.count_unsketch(table, seed, offset, length)
        assert k.shape == (length,)
        assert torch.equal(bits_of(k), bits_of(r))


@pytest.mark.parametrize("unsketch", [p[1] for p in UNSKETCH], ids=[p[0] for p in UNSKETCH])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 6])
def test_unsketch_is_lower_median_of_votes(unsketch, rows: int) -> None:
    """Against the Python oracle; with distinct votes an even row count must give the lower middle one."""
    cols, seed, offset = 53, 41, 1000
    table = torch.randperm(rows * cols, generator=torch.Generator().manual_seed(rows)).float().view(rows, cols) + 1
    est = unsketch(table, seed, offset, 300)
    for t in range(300):
        votes = []
        for j in range(rows):
            bucket, sign = py_bucket_sign(seed, j, cols, offset + t)
            votes.append(sign * float(table[j, bucket]))
        votes.sort()
        assert float(est[t]) == votes[(rows - 1) // 2], t


@pytest.mark.parametrize("path", [(s[1], u[1]) for s, u in zip(SKETCH, UNSKETCH)], ids=[p[0] for p in SKETCH])
def test_heavy_hitters_recovered(path) -> None:
    sketch, unsketch = path
    g = torch.Generator().manual_seed(8)
    d = 20_000
    x = torch.randn(d, generator=g) * 0.01
    heavy = torch.tensor([3, 777, 5000, 12_345, 19_999])
    x[heavy] = torch.tensor([1000.0, -800.0, 650.0, -1200.0, 900.0])
    table = torch.zeros(5, 256)
    sketch(table, x[:7000], 3, 0)  # in two pieces, as two ranks' shards would be
    sketch(table, x[7000:], 3, 7000)
    est = unsketch(table, 3, 0, d)
    # noise ‖x_tail‖₂ ≈ 1.4 spreads over 256 columns: each estimate is off by well under 1
    assert torch.allclose(est[heavy], x[heavy], atol=1.0)
    light = torch.ones(d, dtype=torch.bool)
    light[heavy] = False
    assert float(est[light].abs().max()) < 5.0
    assert float(est[light].abs().median()) < 0.2


# ---------------------------------------------------------------- SRHT

SRHT_BLOCKS = [1, 2, 8, 64, 1024]


def srht_paths() -> list[tuple[str, object, object]]:
    paths = [("reference", reference.srht, reference.srht_transpose), ("wrapper", ops.srht, ops.srht_transpose)]
    if ops.backend() != "reference":
        k = torch.ops.commlib
        paths.append(("kernel", lambda *a: k.srht(*a), lambda *a: k.srht_transpose(*a)))
    return paths


SRHT_PATHS = srht_paths()


def row_sets(block: int, g: torch.Generator) -> list[torch.Tensor]:
    sets = [torch.arange(block), torch.arange(block).flip(0), torch.tensor([block - 1])]
    if block > 2:
        sets.append(torch.randperm(block, generator=g)[: max(1, block // 4)])
    return sets


@needs_extension
@pytest.mark.parametrize("block", SRHT_BLOCKS)
def test_srht_kernel_equals_reference(block: int) -> None:
    g = torch.Generator().manual_seed(block)
    for d in sorted({0, 1, 5, max(0, block - 1), block, block + 1, 3 * block + 7}):
        x = torch.randn(d, generator=g) * torch.exp(2 * torch.randn(d, generator=g))
        for rows in row_sets(block, g):
            for seed in (-1, 2**62 + 5):
                k = torch.ops.commlib.srht(x, block, rows, seed)
                r = reference.srht(x, block, rows, seed)
                assert k.shape == (-(-d // block), rows.numel())
                assert torch.equal(bits_of(k), bits_of(r))
                y = torch.randn(k.shape, generator=g)
                kt = torch.ops.commlib.srht_transpose(y, block, rows, d, seed)
                rt = reference.srht_transpose(y, block, rows, d, seed)
                assert kt.shape == (d,)
                assert torch.equal(bits_of(kt), bits_of(rt))


@pytest.mark.parametrize("path", SRHT_PATHS, ids=[p[0] for p in SRHT_PATHS])
@pytest.mark.parametrize("block", SRHT_BLOCKS)
def test_srht_full_rows_is_orthonormal(path, block: int) -> None:
    _, srht, srht_t = path
    g = torch.Generator().manual_seed(block + 1)
    for d in sorted({1, block, 2 * block + 3}):
        x = torch.randn(d, generator=g)
        rows = torch.randperm(block, generator=g)
        y = srht(x, block, rows, 77)
        assert float(y.double().norm()) == pytest.approx(float(x.double().norm()), rel=1e-5)
        back = srht_t(y, block, rows, d, 77)
        torch.testing.assert_close(back, x, rtol=0, atol=1e-5 * float(x.abs().max()))


@pytest.mark.parametrize("path", SRHT_PATHS, ids=[p[0] for p in SRHT_PATHS])
@settings(max_examples=20, deadline=None)
@given(log_block=st.integers(0, 9), d=st.integers(0, 3000), frac=st.floats(0, 1), seed=st.integers(0, 2**64 - 1))
def test_srht_adjoint_identity(path, log_block: int, d: int, frac: float, seed: int) -> None:
    """<S x, y> = <x, Sᵀ y> for any row subset."""
    _, srht, srht_t = path
    block = 2**log_block
    g = torch.Generator().manual_seed(d)
    rows = torch.randperm(block, generator=g)[: max(1, round(frac * block))]
    seed = seed if path[0] != "kernel" else ops._as_int64(seed)
    x = torch.randn(d, generator=g)
    y = torch.randn(-(-d // block), rows.numel(), generator=g)
    lhs = float((srht(x, block, rows, seed).double() * y.double()).sum())
    rhs = float((x.double() * srht_t(y, block, rows, d, seed).double()).sum())
    assert abs(lhs - rhs) <= 1e-5 * float(x.double().norm() * y.double().norm()) + 1e-12


@pytest.mark.parametrize("path", SRHT_PATHS[1:], ids=[p[0] for p in SRHT_PATHS[1:]])
def test_srht_sketch_is_unbiased_over_seeds(path) -> None:
    """E over the random signs of (block/m)·SᵀS x = x for a fixed row subset: SᵀS = D H RᵀR H D / block and
    E[d_i d_j] = δ_ij, so only the diagonal Σ_{r∈rows} H_ri² / block = m / block survives."""
    _, srht, srht_t = path
    block, m, d, seeds = 32, 8, 100, 300
    g = torch.Generator().manual_seed(0)
    x = torch.randn(d, generator=g)
    rows = torch.randperm(block, generator=g)[:m]
    total = torch.zeros(d, dtype=torch.float64)
    with one_thread():  # hundreds of tiny calls: spare them the thread pool's wake-ups
        for seed in range(seeds):
            total += srht_t(srht(x, block, rows, seed), block, rows, d, seed).double()
    mean = total * (block / m) / seeds
    # one seed's relative error is about √(block/m) (its variance ~ (block/m − 1)·‖x‖²); the mean's shrinks by √seeds
    rel = float((mean - x.double()).norm() / x.double().norm())
    assert rel < 3 * math.sqrt(block / m / seeds), rel


@pytest.mark.parametrize("path", SRHT_PATHS, ids=[p[0] for p in SRHT_PATHS])
def test_srht_block_one_is_a_sign_flip(path) -> None:
    """block = 1 is inside the documented range [1, 2**24] (reference.py, sketch.h): H = [1], so only the signs act."""
    _, srht, srht_t = path
    x = torch.randn(50, generator=torch.Generator().manual_seed(1))
    y = srht(x, 1, torch.tensor([0]), 3)
    assert y.shape == (50, 1)
    assert torch.equal(y.squeeze(1).abs(), x.abs())
    assert torch.equal(srht_t(y, 1, torch.tensor([0]), 50, 3), x)


# ---------------------------------------------------------------- torch.library contract


@needs_extension
@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch >= 2.4")
def test_opcheck() -> None:
    k = torch.ops.commlib
    x = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    torch.library.opcheck(k.count_sketch_add_.default, (torch.zeros(5, 64), x, 3, 10))
    torch.library.opcheck(k.count_sketch_add_.default, (torch.zeros(1, 1), x[:0], 3, 0))
    torch.library.opcheck(k.count_unsketch.default, (torch.randn(5, 64), 3, 10, 100))
    torch.library.opcheck(k.count_unsketch.default, (torch.randn(4, 64), 3, 0, 0))
    rows = torch.tensor([0, 5, 3])
    torch.library.opcheck(k.srht.default, (x, 8, rows, 3))
    torch.library.opcheck(k.srht_transpose.default, (torch.randn(126, 3), 8, rows, 1001, 3))


@needs_extension
def test_meta_shapes() -> None:
    x = torch.empty(1001, device="meta")
    rows = torch.tensor([0, 5, 3], device="meta")
    table = torch.empty(5, 64, device="meta")
    ops.count_sketch_add_(table, x, 1, 0)
    assert ops.count_unsketch(table, 1, 0, 77).shape == (77,)
    y = ops.srht(x, 8, rows, 3)
    assert y.device.type == "meta" and y.shape == (126, 3) and y.dtype == torch.float32
    assert ops.srht_transpose(y, 8, rows, 1001, 3).shape == (1001,)


@needs_extension
def test_torch_compile_fullgraph() -> None:
    rows = torch.tensor([0, 5, 3])

    def pipeline(x: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ops.count_sketch_add_(table, x, 3, 10)
        est = ops.count_unsketch(table, 3, 10, x.shape[0])
        y = ops.srht(x, 8, rows, 4)
        return est, y, ops.srht_transpose(y, 8, rows, x.shape[0], 4)

    compiled = torch.compile(pipeline, fullgraph=True, backend="aot_eager", dynamic=True)
    for n in (100, 333):
        x = int_data(n, seed=n)
        t_c, t_e = torch.zeros(5, 32), torch.zeros(5, 32)
        got, expected = compiled(x, t_c), pipeline(x, t_e)
        assert torch.equal(t_c, t_e) and bool(t_c.abs().sum() > 0)
        assert all(torch.equal(bits_of(a), bits_of(b)) for a, b in zip(got, expected))


# ---------------------------------------------------------------- decoding into a given buffer (out=)


def out_decoders() -> list[tuple[str, object, object]]:
    """(name, unsketch into out, srht_transpose into out), each returning what it wrote into."""
    paths: list[tuple[str, object, object]] = [
        ("wrapper", lambda t, s, o, out: ops.count_unsketch(t, s, o, out.numel(), out=out),
         lambda y, b, r, s, out: ops.srht_transpose(y, b, r, out.numel(), s, out=out)),
    ]
    if ops.backend() != "reference":
        k = torch.ops.commlib

        def unsketch_out(t, s, o, out):
            k.count_unsketch_out(t, ops._as_int64(s), o, out)
            return out

        def srht_t_out(y, b, r, s, out):
            k.srht_transpose_out(y, b, r, ops._as_int64(s), out)
            return out

        paths.append(("kernel", unsketch_out, srht_t_out))
    return paths


OUT_DECODERS = out_decoders()


@pytest.mark.parametrize("path", OUT_DECODERS, ids=[p[0] for p in OUT_DECODERS])
@settings(max_examples=25, deadline=None)
@given(d=st.integers(0, 5000), rows=st.integers(1, 5), log_block=st.integers(0, 10),
       seed=st.integers(-(2**63), 2**63 - 1))
def test_decoding_into_out_equals_a_fresh_result(path, d: int, rows: int, log_block: int, seed: int) -> None:
    """Every element of out is written (it starts as NaN), with the bits of the functional op, and out is returned."""
    _, unsketch_out, srht_t_out = path
    g = torch.Generator().manual_seed(d)
    table = torch.randn(rows, 1 + d // 7, generator=g)
    out = torch.full((d,), float("nan"))
    assert unsketch_out(table, seed, 11, out) is out
    assert torch.equal(bits_of(out), bits_of(reference.count_unsketch(table, seed, 11, d)))
    block = 2**log_block
    picked = torch.randperm(block, generator=g)[: max(1, block // 3)]
    y = torch.randn(-(-d // block), picked.numel(), generator=g)
    out = torch.full((d,), float("nan"))
    assert srht_t_out(y, block, picked, seed, out) is out
    assert torch.equal(bits_of(out), bits_of(reference.srht_transpose(y, block, picked, d, seed)))


def bad_outs() -> list[tuple[str, torch.Tensor]]:
    return [
        ("float64", torch.zeros(100, dtype=torch.float64)),
        ("too short", torch.zeros(99)),
        ("too long", torch.zeros(101)),
        ("2-D", torch.zeros(2, 50)),
        ("strided", torch.zeros(200)[::2]),
    ]


@pytest.mark.parametrize("case", bad_outs(), ids=[c[0] for c in bad_outs()])
def test_bad_out_is_rejected_by_the_wrappers(case) -> None:
    _, out = case
    table, rows = torch.randn(3, 20), torch.tensor([0, 5, 3])
    with pytest.raises(ValueError, match="count_unsketch: out must"):
        ops.count_unsketch(table, 1, 0, 100, out=out)
    with pytest.raises(ValueError, match="srht_transpose: out must"):
        ops.srht_transpose(torch.randn(13, 3), 8, rows, 100, 1, out=out)


@needs_extension
@pytest.mark.parametrize("case", bad_outs()[:1] + bad_outs()[3:], ids=[c[0] for c in bad_outs()[:1] + bad_outs()[3:]])
def test_bad_out_is_rejected_by_the_kernels(case) -> None:
    _, out = case
    k = torch.ops.commlib
    with pytest.raises(ValueError, match="count_unsketch_out: out must be a contiguous 1-D float32"):
        k.count_unsketch_out(torch.randn(3, 20), 1, 0, out)
    with pytest.raises(ValueError, match="srht_transpose_out: out must be a contiguous 1-D float32"):
        k.srht_transpose_out(torch.randn(13, 3), 8, torch.tensor([0, 5, 3]), 1, out)


@needs_extension
def test_out_sharing_memory_with_the_input_is_rejected() -> None:
    """An out overlapping the coefficients (or the table) would be read after being written: refused, untouched."""
    k = torch.ops.commlib
    storage = torch.arange(150, dtype=torch.float32)
    y, out = storage[:39].view(13, 3), storage[30:130]
    with pytest.raises(ValueError, match="srht_transpose_out: out must not share memory with the input"):
        k.srht_transpose_out(y, 8, torch.tensor([0, 5, 3]), 1, out)
    table, out = storage[:60].view(3, 20), storage[50:150]
    with pytest.raises(ValueError, match="count_unsketch_out: out must not share memory with the input"):
        k.count_unsketch_out(table, 1, 0, out)
    assert torch.equal(storage, torch.arange(150, dtype=torch.float32))
    # adjacent but disjoint is fine
    k.srht_transpose_out(storage[:39].view(13, 3), 8, torch.tensor([0, 5, 3]), 1, storage[39:139])


@pytest.mark.parametrize("path", OUT_DECODERS, ids=[p[0] for p in OUT_DECODERS])
def test_malformed_input_leaves_out_untouched(path) -> None:
    _, unsketch_out, srht_t_out = path
    out = torch.full((100,), 7.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        unsketch_out(torch.tensor([[1.0, float("inf")]]), 1, 0, out)
    with pytest.raises(ValueError, match="y must"):
        srht_t_out(torch.randn(12, 3), 8, torch.tensor([0, 5, 3]), 1, out)  # 13 blocks needed
    with pytest.raises(ValueError, match="distinct"):
        srht_t_out(torch.randn(13, 3), 8, torch.tensor([0, 5, 5]), 1, out)
    assert torch.equal(out, torch.full((100,), 7.0))


@needs_extension
@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch >= 2.4")
def test_opcheck_out_variants() -> None:
    k = torch.ops.commlib
    torch.library.opcheck(k.count_unsketch_out.default, (torch.randn(5, 64), 3, 10, torch.empty(100)))
    torch.library.opcheck(k.count_unsketch_out.default, (torch.randn(4, 64), 3, 0, torch.empty(0)))
    torch.library.opcheck(k.srht_transpose_out.default, (torch.randn(126, 3), 8, torch.tensor([0, 5, 3]), 3,
                                                         torch.empty(1001)))


@needs_extension
def test_torch_compile_fullgraph_out_variants() -> None:
    rows = torch.tensor([0, 5, 3])

    def decode(table: torch.Tensor, y: torch.Tensor, est: torch.Tensor, back: torch.Tensor) -> None:
        ops.count_unsketch(table, 3, 10, est.shape[0], out=est)
        ops.srht_transpose(y, 8, rows, back.shape[0], 4, out=back)

    compiled = torch.compile(decode, fullgraph=True, backend="aot_eager", dynamic=True)
    for n in (100, 333):
        table, y = torch.randn(5, 32), torch.randn(-(-n // 8), 3)
        got = torch.full((n,), float("nan")), torch.full((n,), float("nan"))
        compiled(table, y, *got)
        assert torch.equal(bits_of(got[0]), bits_of(ops.count_unsketch(table, 3, 10, n)))
        assert torch.equal(bits_of(got[1]), bits_of(ops.srht_transpose(y, 8, rows, n, 4)))
