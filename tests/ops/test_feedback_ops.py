"""EControl's fused message and commit, and the sparse mean of top-k rows: kernels against plain torch oracles.

The oracles are the unfused steps written with separate torch ops (one rounding each, in the documented order):

* message: ``(g − h) + (η·e)``;
* commit: ``d = g − h``, ``d − Δ`` with ``Δ`` dense (zero off the kept entries), ``e + d``, ``h + Δ``;
* sparse mean: a dense zero vector, every row scattered in (``+=``) in row order, divided by ``n``.

Bits must agree exactly, but for NaN: where an input holds NaN (or ``inf − inf`` makes one) the result must be NaN
there too, with any sign and payload (x86 returns one operand's NaN, which depends on the instruction's operand order).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import commlib.ops as ops
from commlib.ops import reference

needs_extension = pytest.mark.skipif(ops.backend() == "reference", reason="commlib._C is not loaded")

SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-40, -1e-40, 3.0e38, -3.0e38, float("inf"), -float("inf"), float("nan")]
floats = st.sampled_from(SPECIAL) | st.floats(-4, 4, width=32)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """NaN where the other has NaN (a NaN's sign and payload are not specified), the same bits elsewhere."""
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and torch.equal(bits(a)[~nan], bits(b)[~nan])


def message_paths() -> list:
    out = [("reference", reference.econtrol_message), ("dispatch", ops.econtrol_message)]
    if ops.backend() != "reference":
        out.append(("kernel", lambda g, h, e, eta, o: torch.ops.commlib.econtrol_message(g, h, e, eta, o) or o))
    return out


def commit_paths() -> list:
    out = [("reference", reference.econtrol_commit_), ("dispatch", ops.econtrol_commit_)]
    if ops.backend() != "reference":
        out.append(("kernel", torch.ops.commlib.econtrol_commit_))
    return out


def mean_paths() -> list:
    out = [("reference", reference.sparse_mean_rows), ("dispatch", ops.sparse_mean_rows)]
    if ops.backend() != "reference":
        out.append(("kernel", torch.ops.commlib.sparse_mean_rows))
    return out


vectors = st.integers(0, 64).flatmap(
    lambda n: st.tuples(*(st.lists(floats, min_size=n, max_size=n) for _ in range(3)),
                        st.sampled_from([0.0, 0.005, 0.5, 1.0, 1 / 3]))
)


@settings(max_examples=100, deadline=None)
@given(vectors)
def test_message_equals_the_separate_ops(case: tuple) -> None:
    g, h, e = (torch.tensor(v, dtype=torch.float32) for v in case[:3])
    eta = case[3]
    want = (g - h) + (e * eta)
    for name, fn in message_paths():
        out = torch.full_like(g, 7.0)
        assert same(fn(g, h, e, eta, out), want), name


commits = st.integers(0, 64).flatmap(
    lambda n: st.tuples(*(st.lists(floats, min_size=n, max_size=n) for _ in range(3)),
                        st.sets(st.integers(0, max(n - 1, 0)), max_size=n) if n else st.just(set()),
                        st.lists(floats, min_size=n, max_size=n))
)


@settings(max_examples=100, deadline=None)
@given(commits)
def test_commit_equals_the_dense_update(case: tuple) -> None:
    e0, h0, g = (torch.tensor(v, dtype=torch.float32) for v in case[:3])
    idx = torch.tensor(sorted(case[3]), dtype=torch.int64)
    vals = torch.tensor(case[4][: idx.numel()], dtype=torch.float32)
    delta = torch.zeros_like(g)
    delta[idx] = vals
    want_e = e0 + ((g - h0) - delta)
    want_h = h0.clone()
    want_h[idx] = h0[idx] + vals  # the dense h + Δ but for h = −0.0 off the kept entries, kept as is
    for name, fn in commit_paths():
        e, h = e0.clone(), h0.clone()
        fn(e, h, g, idx, vals)
        assert same(e, want_e) and same(h, want_h), name


rows = st.tuples(st.integers(1, 6), st.integers(0, 40), st.integers(1, 120)).flatmap(
    lambda nkd: st.tuples(
        st.just(nkd[2]),
        st.lists(st.sets(st.integers(0, nkd[2] - 1), min_size=min(nkd[1], nkd[2]), max_size=min(nkd[1], nkd[2])),
                 min_size=nkd[0], max_size=nkd[0]),
        st.lists(st.floats(-4, 4, width=32) | st.sampled_from([0.0, -0.0, 1e-40, 3.0e38]),
                 min_size=nkd[0] * min(nkd[1], nkd[2]), max_size=nkd[0] * min(nkd[1], nkd[2])),
    )
)


def dense_mean(d: int, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(d)
    for idx, val in zip(indices, values):
        out[idx.long()] += val
    return out.div_(indices.shape[0])


@settings(max_examples=100, deadline=None)
@given(rows)
def test_sparse_mean_equals_the_dense_decode(case: tuple) -> None:
    d, sets, flat_values = case
    indices = torch.tensor([sorted(s) for s in sets], dtype=torch.int32).reshape(len(sets), -1)
    values = torch.tensor(flat_values, dtype=torch.float32).reshape(indices.shape)
    want = dense_mean(d, indices, values)
    union = sorted(set().union(*sets))
    for name, fn in mean_paths():
        got_idx, got_val = fn(indices, values, indices.shape[0])
        assert got_idx.dtype == torch.int64 and got_idx.tolist() == union, name
        assert torch.equal(bits(got_val), bits(want[got_idx])), name


@needs_extension
@pytest.mark.parametrize("n,k,d", [(4, 41_943, 4_194_304), (2, 1, 2**31 - 1), (16, 5_000, 100_000), (1, 0, 10)])
def test_sparse_mean_kernel_on_large_rows(n: int, k: int, d: int) -> None:
    gen = torch.Generator().manual_seed(n + k)
    rows_ = [torch.unique(torch.randint(0, d, (2 * k,), generator=gen))[:k] for _ in range(n)]
    if k == 1:
        rows_[1] = torch.tensor([d - 1])  # the largest index int32 holds: the radix sort's last pass
    indices = torch.stack([r.sort().values for r in rows_]).int()
    values = torch.randn(indices.shape, generator=gen)
    got = torch.ops.commlib.sparse_mean_rows(indices, values, n)
    want = reference.sparse_mean_rows(indices, values, n)
    assert torch.equal(got[0], want[0]) and torch.equal(bits(got[1]), bits(want[1]))


@needs_extension
def test_kernels_give_the_same_bits_for_any_thread_count() -> None:
    gen = torch.Generator().manual_seed(5)
    d = 700_001
    g, h0, e0 = (torch.randn(d, generator=gen) for _ in range(3))
    chunk_starts = [c + s for c in (233_334, 350_001, 466_668) for s in (-1, 0, 1)]  # 2 and 3 threads split here
    idx = torch.cat([torch.randperm(d, generator=gen)[:7_000], torch.tensor(chunk_starts)]).unique()
    vals = torch.randn(idx.numel(), generator=gen)
    want_e, want_h = e0.clone(), h0.clone()
    reference.econtrol_commit_(want_e, want_h, g, idx, vals)
    results = [(bits(reference.econtrol_message(g, h0, e0, 0.01, torch.empty(d))), bits(want_e), bits(want_h))]
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            u = ops.econtrol_message(g, h0, e0, 0.01, torch.empty(d))
            e, h = e0.clone(), h0.clone()
            ops.econtrol_commit_(e, h, g, idx, vals)
            results.append((bits(u), bits(e), bits(h)))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


@pytest.mark.parametrize("name_fn", commit_paths(), ids=lambda p: p[0])
@pytest.mark.parametrize("idx", [[2, 1], [0, 0], [-1], [6], [1, 9]], ids=str)
def test_commit_refuses_indices_that_are_not_strictly_increasing_within_range(name_fn: tuple, idx: list) -> None:
    _, fn = name_fn
    e, h, g = torch.arange(6.0), torch.ones(6), torch.full((6,), 2.0)
    before = (e.clone(), h.clone())
    with pytest.raises(ValueError, match="strictly increasing|outside"):
        fn(e, h, g, torch.tensor(idx), torch.ones(len(idx)))
    assert torch.equal(e, before[0]) and torch.equal(h, before[1])  # nothing written


@pytest.mark.parametrize("name_fn", mean_paths(), ids=lambda p: p[0])
@pytest.mark.parametrize("row", [[3, 1], [2, 2], [-1, 4]], ids=str)
def test_sparse_mean_refuses_rows_that_are_not_strictly_increasing(name_fn: tuple, row: list) -> None:
    _, fn = name_fn
    indices = torch.tensor([[0, 5], row], dtype=torch.int32)
    with pytest.raises(ValueError, match="strictly increasing|negative"):
        fn(indices, torch.ones(2, 2), 2)


def test_dispatch_checks_shapes_dtypes_and_aliasing() -> None:
    g = torch.ones(5)
    with pytest.raises(ValueError, match="like the first"):
        ops.econtrol_message(g, torch.ones(4), g.clone(), 0.1, torch.empty(5))
    with pytest.raises(ValueError, match="like the first"):
        ops.econtrol_message(g, g.double(), g.clone(), 0.1, torch.empty(5))
    with pytest.raises(ValueError, match="like the first"):
        ops.econtrol_commit_(torch.zeros(5), torch.zeros(5), torch.ones(6), torch.tensor([1]), torch.ones(1))
    with pytest.raises(ValueError, match="one per index"):
        ops.econtrol_commit_(torch.zeros(5), torch.zeros(5), g, torch.tensor([1, 2]), torch.ones(1))
    with pytest.raises(ValueError, match="contiguous"):
        ops.econtrol_commit_(torch.zeros(4, 2).t(), torch.zeros(2, 4), torch.ones(2, 4), torch.tensor([1]),
                             torch.ones(1))
    with pytest.raises(ValueError, match="divisor"):
        ops.sparse_mean_rows(torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, 1), 0)
    with pytest.raises(ValueError):
        ops.sparse_mean_rows(torch.zeros(1, 1, dtype=torch.int64), torch.ones(1, 1), 1)


@needs_extension
def test_kernels_refuse_shared_memory() -> None:
    e = torch.zeros(10)
    with pytest.raises(ValueError, match="share memory"):
        torch.ops.commlib.econtrol_message(e, torch.ones(10), torch.ones(10), 0.1, e)
    with pytest.raises(ValueError, match="share memory"):
        torch.ops.commlib.econtrol_commit_(e, e, torch.ones(10), torch.tensor([1]), torch.ones(1))
    buf = torch.zeros(15)
    with pytest.raises(ValueError, match="share memory"):  # overlapping views of one buffer
        torch.ops.commlib.econtrol_commit_(buf[:10], buf[5:], torch.ones(10), torch.tensor([1]), torch.ones(1))


def test_float64_takes_the_reference_with_the_same_formula() -> None:
    gen = torch.Generator().manual_seed(2)
    g, h, e = (torch.randn(33, generator=gen, dtype=torch.float64) for _ in range(3))
    assert torch.equal(ops.econtrol_message(g, h, e, 0.25, torch.empty_like(g)), (g - h) + (e * 0.25))
    e2, h2 = e.clone(), h.clone()
    idx, vals = torch.tensor([3, 30]), torch.tensor([1.5, -2.0], dtype=torch.float64)
    ops.econtrol_commit_(e2, h2, g, idx, vals)
    delta = torch.zeros_like(g)
    delta[idx] = vals
    assert torch.equal(e2, e + ((g - h) - delta)) and torch.equal(h2, h + delta)


@needs_extension
@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch >= 2.4")
def test_opcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    g, h, e = (torch.randn(40, generator=gen) for _ in range(3))
    torch.library.opcheck(torch.ops.commlib.econtrol_message.default, (g, h, e, 0.1, torch.empty(40)))
    torch.library.opcheck(torch.ops.commlib.econtrol_commit_.default,
                          (e.clone(), h.clone(), g, torch.tensor([0, 7, 39]), torch.ones(3)))
    indices = torch.tensor([[1, 4, 9], [0, 4, 8]], dtype=torch.int32)
    torch.library.opcheck(torch.ops.commlib.sparse_mean_rows.default, (indices, torch.ones(2, 3), 2),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
