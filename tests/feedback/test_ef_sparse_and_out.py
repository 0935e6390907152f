"""Error feedback with sparse messages (top-k) and with ``commit(out=)``: the same bits as the dense path.

The exchange hands the built-in methods top-k's own message and the ranks' mean as
:class:`SparseDelta` (``sparse_deltas``), so their buffers are updated at the kept
entries only, and writes the commit's result into DDP's bucket (``out=``, which may be
the gradient itself); both must leave every buffer and every output bit-identical to
the plain dense path, step after step.
"""

from __future__ import annotations

import copy

import pytest
import torch

from commlib.comm.exchange import ExchangeConfig, GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import QSGD, LazyDelta, RandK, Sign, Sketch, SparseDelta, TensorContext, TopK
from commlib.errors import WireFormatError
from commlib.feedback import EF14, EF21, EF21SGDM, EControl, NoFeedback
from commlib.feedback.base import ErrorFeedback

METHODS = [NoFeedback(), EF14(), EF21(), EF21SGDM(beta=0.3), EControl(eta=0.2)]
SHAPES = [(37,), (6, 11), (3, 4, 5)]


def _ctx(rank: int = 0, n: int = 1, step: int = 0) -> TensorContext:
    return TensorContext("w", step, 5, rank, n)


def _grad(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _assert_same_states(ours: list[GradientExchange], theirs: list[GradientExchange], keys) -> None:
    """Every rank's feedback state, key by key: present on both sides or neither, every buffer bit for bit."""
    for a, b in zip(ours, theirs):
        for key in keys:
            state_a, state_b = a.feedback.get(key), b.feedback.get(key)
            assert (state_a is None) == (state_b is None)
            if state_a is not None:
                assert all(_same_bits(state_a[k], state_b[k]) for k in state_a), key


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_topk_sparse_local_message_is_the_dense_one(shape) -> None:
    topk = TopK(density=0.2)
    x = _grad(shape, 0)
    payload = topk.encode(x, _ctx())
    dense = topk.decode_local(payload, x.shape, _ctx())
    sparse = topk.decode_local(payload, x.shape, _ctx(), sparse=True)
    assert isinstance(sparse, SparseDelta) and sparse.shape == x.shape
    assert sparse.indices.numel() == topk.count(x.numel()) and bool((sparse.indices.diff() > 0).all())
    assert torch.equal(sparse.to_dense(), dense) and torch.equal(dense, topk.compress(x, _ctx()))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_topk_sparse_mean_has_the_bits_of_the_dense_decode(shape, n: int) -> None:
    """Overlapping and disjoint kept sets, cancelling values: every bit of decode_all, zeros off the union."""
    topk = TopK(density=0.3)
    xs = [_grad(shape, 7 * r) for r in range(n)]
    xs[-1].view(-1)[:3] = -xs[0].view(-1)[:3] * 100  # the same entries kept by two ranks, summing to zero
    parts = torch.stack([topk.encode(x, _ctx(r, n)) for r, x in enumerate(xs)])
    dense = topk.decode_all(parts, torch.Size(shape), _ctx())
    sparse = topk.sparse_mean(parts, torch.Size(shape), _ctx())
    assert isinstance(sparse, SparseDelta) and bool((sparse.indices.diff() > 0).all())
    assert _same_bits(sparse.to_dense(), dense)
    off_union = torch.ones(dense.numel(), dtype=torch.bool)
    off_union[sparse.indices] = False
    assert not bool(dense.view(-1)[off_union].any())


def test_a_malformed_row_raises_in_the_sparse_mean() -> None:
    topk = TopK(density=0.25)
    parts = torch.stack([topk.encode(_grad((4, 4), r), _ctx()) for r in range(3)])
    bad = parts.clone()
    bad[1, -8:-4] = torch.tensor([3, 0, 0, 0], dtype=torch.uint8)  # index 3 before a later smaller index
    with pytest.raises(WireFormatError, match="strictly increasing"):
        topk.sparse_mean(bad, torch.Size((4, 4)), _ctx())
    with pytest.raises(WireFormatError, match="expected uint8 payloads"):
        topk.sparse_mean(parts[:, :-1], torch.Size((4, 4)), _ctx())


def test_a_malformed_payload_raises_on_the_sparse_path_too() -> None:
    topk = TopK(density=0.25)
    payload = topk.encode(_grad((4, 4), 1), _ctx()).clone()
    payload[-4:] = torch.tensor([255, 255, 0, 0], dtype=torch.uint8)  # last index 65535 ≥ 16
    with pytest.raises(WireFormatError, match="strictly increasing"):
        topk.decode_local(payload, torch.Size((4, 4)), _ctx(), sparse=True)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_commit_with_sparse_deltas_and_out_keeps_the_dense_bits(method: ErrorFeedback, shape) -> None:
    """Three workers, five steps: (dense deltas, fresh output) vs (SparseDelta local and mean, output into g)."""
    n, topk = 3, TopK(density=0.3)
    dense_ws = [copy.deepcopy(method) for _ in range(n)]
    fast_ws = [copy.deepcopy(method) for _ in range(n)]
    for step in range(5):
        grads = [_grad(shape, 10 * step + r) for r in range(n)]
        payloads = [topk.encode(w.message("w", g), _ctx(r, n, step)) for r, (w, g) in enumerate(zip(dense_ws, grads))]
        fast_payloads = [topk.encode(w.message("w", g), _ctx(r, n, step)) for r, (w, g) in enumerate(zip(fast_ws,
                                                                                                           grads))]
        assert all(torch.equal(a, b) for a, b in zip(payloads, fast_payloads))
        parts = torch.stack(payloads)
        dm = topk.decode_all(parts, grads[0].shape, _ctx())
        sparse_dm = topk.sparse_mean(parts, grads[0].shape, _ctx())
        for r in range(n):
            local = topk.decode_local(payloads[r], grads[r].shape, _ctx())
            ref = dense_ws[r].commit("w", grads[r], local, dm)
            g = grads[r].clone()
            sparse = topk.decode_local(payloads[r], g.shape, _ctx(), sparse=True)
            out = fast_ws[r].commit("w", g, sparse, sparse_dm, out=g)
            assert out.data_ptr() == g.data_ptr() and _same_bits(out, ref)
            for name in method.buffers:
                assert _same_bits(fast_ws[r].get("w")[name], dense_ws[r].get("w")[name]), (step, r, name)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_a_sparse_coo_delta_is_taken_as_the_same_sparse_delta(method: ErrorFeedback) -> None:
    topk, shape = TopK(density=0.25), (3, 4, 5)
    coo_w, flat_w = copy.deepcopy(method), copy.deepcopy(method)
    for step in range(3):
        g = _grad(shape, step)
        payload = topk.encode(coo_w.message("w", g), _ctx(step=step))
        flat_w.message("w", g)
        dense = topk.decode_local(payload, g.shape, _ctx())
        sparse = topk.decode_local(payload, g.shape, _ctx(), sparse=True)
        a = coo_w.commit("w", g, dense.to_sparse(), (dense * 0.5).to_sparse())
        b = flat_w.commit("w", g, sparse, SparseDelta(sparse.indices, sparse.values * 0.5, sparse.shape))
        assert _same_bits(a, b)
        for name in method.buffers:
            assert _same_bits(coo_w.get("w")[name], flat_w.get("w")[name])


def test_sparse_delta_checks_its_parts() -> None:
    with pytest.raises(ValueError, match="int64"):
        SparseDelta(torch.tensor([0, 1], dtype=torch.int32), torch.ones(2), torch.Size((4,)))
    with pytest.raises(ValueError, match="one per index"):
        SparseDelta(torch.tensor([0, 1]), torch.ones(3), torch.Size((4,)))
    delta = SparseDelta(torch.tensor([0, 3]), torch.tensor([1.0, -2.0]), torch.Size((2, 2)))
    with pytest.raises(ValueError, match="alpha must be 1 or -1"):
        delta.add_to_(torch.zeros(2, 2), alpha=2.0)
    with pytest.raises(ValueError, match="contiguous tensor of shape"):
        delta.add_to_(torch.zeros(2, 2).t())
    assert torch.equal(delta.add_to_(torch.ones(2, 2), alpha=-1.0), torch.tensor([[0.0, 1.0], [1.0, 3.0]]))


def test_sparse_deltas_are_refused_where_the_method_needs_dense_ones() -> None:
    class DenseOnly(EF14):
        sparse_deltas = False

    g = torch.ones(4)
    local = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.tensor([1.0]), (4,), check_invariants=True)
    with pytest.raises(ValueError, match="delta_local must be dense"):
        DenseOnly().commit("w", g, local, g)
    with pytest.raises(ValueError, match="delta_mean must be dense"):
        DenseOnly().commit("w", g, g, SparseDelta.from_coo(local))
    with pytest.raises(ValueError, match="delta_mean has shape"):
        EF14().commit("w", g, g, SparseDelta(torch.tensor([1]), torch.ones(1), torch.Size((5,))))


def test_out_must_have_the_gradient_shape() -> None:
    with pytest.raises(ValueError, match="out must be a tensor of g's shape"):
        EF14().commit("w", torch.ones(4), torch.ones(4), torch.ones(4), out=torch.empty(5))
    with pytest.raises(ValueError, match="out must be a tensor"):
        EF14().commit("w", torch.ones(4), torch.ones(4), torch.ones(4), out=[0.0] * 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("compressor", [TopK(density=0.1), QSGD(bits=4, bucket_size=16)], ids=lambda c: c.name)
@pytest.mark.parametrize("method", [EF14(), EControl(eta=0.1)], ids=lambda m: m.name)
def test_handed_over_bucket_receives_the_result_with_the_same_bits(compressor, method) -> None:
    """GradientExchange with feedback: ``inplace=True`` writes the commit's result into the gradient tensor."""
    n, shapes = 2, {"a": (12, 10), "b": (30,)}

    def workers() -> list[GradientExchange]:
        return [GradientExchange(copy.deepcopy(compressor), r, n, ExchangeConfig(seed=3, start_step=0, min_numel=1),
                                 feedback=copy.deepcopy(method)) for r in range(n)]

    plain, handed = workers(), workers()
    for step in range(3):
        grads = [[(name, _grad(shape, 100 * step + 10 * r + i)) for i, (name, shape) in enumerate(shapes.items())]
                 for r in range(n)]
        kept = [[(name, g.clone()) for name, g in named] for named in grads]
        ref = run_lockstep([w.protocol(named, step) for w, named in zip(plain, kept)])
        assert all(torch.equal(k, g) for named_k, named_g in zip(kept, grads)
                   for (_, k), (_, g) in zip(named_k, named_g))  # not handed over: never written
        got = run_lockstep([w.protocol(named, step, inplace=True) for w, named in zip(handed, grads)])
        for (outs, _), (refs, _), named in zip(got, ref, grads):
            compressed = [o for o, (name, g) in zip(outs, named) if g.dim() >= 2]
            assert compressed and all(o.data_ptr() == g.data_ptr() for o, (name, g) in zip(outs, named)
                                      if g.dim() >= 2)
            assert all(_same_bits(o, r) for o, r in zip(outs, refs))
        _assert_same_states(plain, handed, shapes)


DECODED_ON_USE = [Sketch(ratio=4, block=16, mode="projection"), Sketch(ratio=4, family="countsketch", rows=3),
                  RandK(0.3), QSGD(bits=4, bucket_size=16), Sign()]


@pytest.mark.parametrize("compressor", DECODED_ON_USE, ids=lambda c: f"{c.name}-{getattr(c, 'family', '')}")
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_deltas_decoded_on_use_keep_the_dense_bits(compressor, method: ErrorFeedback) -> None:
    """A linear compressor's mean, and a gather compressor's local ``C(u)``, reach the feedback as
    :class:`LazyDelta` objects (decoded into the bucket, or into the buffer being updated): every output and buffer
    keeps the bits of a method that takes dense deltas only."""
    n, shapes = 3, {"a": (12, 10), "b": (7, 9)}
    dense_method = copy.deepcopy(method)
    dense_method.sparse_deltas = False  # the exchange then hands it the mean as a dense tensor

    def workers(feedback: ErrorFeedback) -> list[GradientExchange]:
        return [GradientExchange(copy.deepcopy(compressor), r, n, ExchangeConfig(seed=3, start_step=0, min_numel=1),
                                 feedback=copy.deepcopy(feedback)) for r in range(n)]

    lazy, dense = workers(method), workers(dense_method)
    for step in range(4):
        grads = [[(name, _grad(shape, 100 * step + 10 * r + i)) for i, (name, shape) in enumerate(shapes.items())]
                 for r in range(n)]
        copies = [[(name, g.clone()) for name, g in named] for named in grads]
        got = run_lockstep([w.protocol(named, step, inplace=True) for w, named in zip(lazy, grads)])
        ref = run_lockstep([w.protocol(named, step, inplace=True) for w, named in zip(dense, copies)])
        for (outs, _), (refs, _), named in zip(got, ref, grads):
            assert all(o.data_ptr() == g.data_ptr() for o, (_, g) in zip(outs, named))
            assert all(_same_bits(o, r) for o, r in zip(outs, refs))
        _assert_same_states(lazy, dense, shapes)


def test_lazy_delta_writes_in_place_or_copies() -> None:
    calls: list[torch.Tensor | None] = []

    def decode(into: torch.Tensor | None) -> torch.Tensor:
        calls.append(into)
        out = torch.empty(6) if into is None else into
        return out.copy_(torch.arange(6.0))

    mean = LazyDelta(decode, torch.Size((2, 3)))
    out = torch.full((2, 3), float("nan"))
    assert mean.write_to(out) is out and calls[-1].data_ptr() == out.data_ptr()
    assert torch.equal(out, torch.arange(6.0).view(2, 3))
    strided = torch.zeros(3, 2).t()
    assert torch.equal(mean.write_to(strided), torch.arange(6.0).view(2, 3)) and calls[-1] is None
    as_double = mean.write_to(torch.zeros(2, 3, dtype=torch.float64))
    assert as_double.dtype == torch.float64 and calls[-1] is None
    assert torch.equal(mean.add_to_(torch.ones(2, 3), alpha=-1.0), 1 - torch.arange(6.0).view(2, 3))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3\)"):
        mean.write_to(torch.zeros(6))
    with pytest.raises(ValueError, match="delta_mean has shape"):
        EF14().commit("w", torch.ones(4), torch.ones(4), LazyDelta(decode, torch.Size((6,))))


class _EControlFresh(EControl):
    """EControl in plain torch ops on dense deltas: ``g − hᵢ`` a fresh tensor in message and commit."""

    scratch = False

    def _message(self, s, g):
        return (g - s["h_local"]).add_(s["e"] * self.eta)

    def _commit(self, s, g, dl, dm):
        dl, dm = (d.to_dense() if isinstance(d, SparseDelta) else d for d in (dl, dm))
        s["e"].add_((g - s["h_local"]).sub_(dl))
        s["h_local"].add_(dl)
        s["h"].add_(dm)
        return s["h"]


@pytest.mark.parametrize("local", ["topk sparse", "qsgd dense", "identity: C(u) is u"])
def test_econtrol_s_work_buffer_keeps_every_bit_and_survives_a_message_that_is_its_own_compression(local) -> None:
    ours, fresh = EControl(eta=0.2), _EControlFresh(eta=0.2)
    topk, qsgd = TopK(density=0.2), QSGD(bits=4, bucket_size=8)
    scratch = None
    for step in range(6):
        g = _grad((6, 11), step)
        outs = []
        for method in (ours, fresh):
            u = method.message("w", g)
            if local == "topk sparse":
                dl = SparseDelta.from_coo(topk.compress(u, _ctx(step=step)).to_sparse())
            elif local == "qsgd dense":
                dl = qsgd.compress(u, _ctx(step=step))
            else:
                dl = u  # a compressor returning its input: the message buffer itself
            dense = dl.to_dense() if isinstance(dl, SparseDelta) else dl
            outs.append(method.commit("w", g, dl, dense * 0.5))
        assert _same_bits(outs[0], outs[1]), step
        for name in ("e", "h_local", "h"):
            assert _same_bits(ours.get("w")[name], fresh.get("w")[name]), (step, name)
        buf = ours._scratch["w"]
        assert scratch is None or buf.data_ptr() == scratch  # the same buffer, step after step
        scratch = buf.data_ptr()
    assert ours.state_bytes() == fresh.state_bytes() and "scratch" not in ours.get("w")
    assert set(ours.state_dict()) == set(fresh.state_dict())
