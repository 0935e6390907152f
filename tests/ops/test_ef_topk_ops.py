"""Fused error-feedback top-k (``ef_topk_``): the kernel against the unfused sequence and the reference.

The oracle is the unfused EF14 step written with plain torch ops: ``u = e + g``; the top-k set of ``|u|`` from a
stable descending sort (ties to the lower index); ``e = u`` with the selected entries zeroed.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import commlib.ops as ops
from commlib.ops import reference

needs_extension = pytest.mark.skipif(ops.backend() == "reference", reason="commlib._C is not loaded")

SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 1e-40, -1e-40, 3.0e38, -3.0e38, float("inf"), -float("inf")]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def unfused(e: torch.Tensor, g: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, int64 indices, new e) of the EF step, from a stable sort: no kthvalue, no radix, no threshold."""
    u = e + g
    idx = torch.sort(u.abs(), descending=True, stable=True).indices[:k].sort().values
    residual = u.clone()
    residual[idx] = 0.0
    return u[idx], idx, residual


def assert_step(got: tuple[torch.Tensor, torch.Tensor], e_after: torch.Tensor, want: tuple) -> None:
    values, indices = got
    want_values, want_idx, want_e = want
    assert indices.dtype == torch.int32 and values.dtype == torch.float32
    assert torch.equal(indices.long(), want_idx), "selected set differs"
    assert torch.equal(bits(values), bits(want_values)), "values are not u[indices] bit for bit"
    assert torch.equal(bits(e_after), bits(want_e)), "residual differs"


def paths() -> list:
    out = [("reference", reference.ef_topk_), ("dispatch", ops.ef_topk_)]
    if ops.backend() != "reference":
        out.append(("kernel", lambda e, g, k, seed=0: torch.ops.commlib.ef_topk_(e, g, k, seed)))
    return out


vectors = st.integers(0, 300).flatmap(
    lambda n: st.tuples(
        st.lists(st.sampled_from(SPECIAL[:10]) | st.floats(-4, 4, width=32), min_size=n, max_size=n),
        st.lists(st.sampled_from(SPECIAL[:10]) | st.floats(-4, 4, width=32), min_size=n, max_size=n),
        st.integers(0, n),
        st.integers(0, 2**63 - 1),
    )
)


@settings(max_examples=150, deadline=None)
@given(vectors)
def test_every_path_matches_the_unfused_step(case: tuple) -> None:
    e_list, g_list, k, seed = case
    for name, fn in paths():
        e = torch.tensor(e_list, dtype=torch.float32)
        g = torch.tensor(g_list, dtype=torch.float32)
        want = unfused(e, g, k)
        got = fn(e, g, k, seed)
        assert_step(got, e, want), name


@needs_extension
@pytest.mark.parametrize("d,k", [(200_000, 2_000), (200_000, 1), (70_000, 69_999), (100_003, 0), (100_003, 100_003)])
def test_kernel_on_large_vectors_with_ties(d: int, k: int) -> None:
    gen = torch.Generator().manual_seed(d + k)
    e = torch.randint(-50, 50, (d,), generator=gen).float() / 8  # many equal magnitudes
    g = torch.randint(-50, 50, (d,), generator=gen).float() / 8
    want = unfused(e, g, k)
    e_kernel = e.clone()
    got = torch.ops.commlib.ef_topk_(e_kernel, g, k, 11)
    assert_step(got, e_kernel, want)
    # and the unfused kernel sequence it replaces
    u = e + g
    tv, ti = torch.ops.commlib.topk_threshold(u, k, 11)
    assert torch.equal(ti, got[1]) and torch.equal(bits(tv), bits(got[0]))


@needs_extension
def test_kernel_same_bits_for_any_thread_count() -> None:
    gen = torch.Generator().manual_seed(3)
    e0, g = torch.randn(300_000, generator=gen), torch.randn(300_000, generator=gen)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            e = e0.clone()
            v, i = torch.ops.commlib.ef_topk_(e, g, 3_000, 5)
            results.append((bits(v), i, bits(e)))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


@pytest.mark.parametrize("name_fn", paths(), ids=lambda p: p[0])
def test_nan_raises_after_the_add(name_fn: tuple) -> None:
    _, fn = name_fn
    e = torch.tensor([1.0, float("inf"), 2.0])
    g = torch.tensor([0.0, -float("inf"), 1.0])  # inf - inf = nan
    with pytest.raises(ValueError, match="NaN"):
        fn(e, g, 1)


@pytest.mark.parametrize("name_fn", paths(), ids=lambda p: p[0])
def test_bad_arguments_raise_and_leave_e_untouched(name_fn: tuple) -> None:
    _, fn = name_fn
    e = torch.arange(6, dtype=torch.float32)
    before = e.clone()
    with pytest.raises(ValueError):
        fn(e, torch.ones(5), 2)
    with pytest.raises(ValueError):
        fn(e, torch.ones(6), 7)
    with pytest.raises(ValueError):
        fn(e, torch.ones(6), -1)
    assert torch.equal(e, before)


@needs_extension
def test_kernel_rejects_bad_tensors() -> None:
    e = torch.zeros(8)
    with pytest.raises(ValueError, match="float32"):
        torch.ops.commlib.ef_topk_(e, torch.zeros(8, dtype=torch.float64), 2, 0)
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.commlib.ef_topk_(e, torch.zeros(16)[::2], 2, 0)
    buf = torch.zeros(12)
    with pytest.raises(ValueError, match="overlap"):
        torch.ops.commlib.ef_topk_(buf[:8], buf[4:], 2, 0)


@needs_extension
def test_g_may_be_e_itself() -> None:
    e = torch.tensor([1.0, -3.0, 2.0, 0.5])
    values, indices = torch.ops.commlib.ef_topk_(e, e, 2, 0)
    assert indices.tolist() == [1, 2] and values.tolist() == [-6.0, 4.0]
    assert e.tolist() == [2.0, 0.0, 0.0, 1.0]


@needs_extension
@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch >= 2.4")
def test_opcheck() -> None:
    for d, k in ((0, 0), (1, 1), (1000, 17)):
        gen = torch.Generator().manual_seed(d)
        torch.library.opcheck(torch.ops.commlib.ef_topk_.default,
                              (torch.randn(d, generator=gen), torch.randn(d, generator=gen), k, 3))


@needs_extension
def test_meta_shapes() -> None:
    values, indices = ops.ef_topk_(torch.empty(100, device="meta"), torch.empty(100, device="meta"), 7)
    assert values.shape == indices.shape == (7,) and indices.dtype == torch.int32 and values.device.type == "meta"
