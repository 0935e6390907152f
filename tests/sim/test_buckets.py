"""The simulator's bucket layout: per-tensor results unchanged, per-bucket decisions as DDP's; DDP's own layout."""

from __future__ import annotations

import pytest
import torch
from dist_utils import run_workers

from commlib.compress import QSGD, PowerSGD, TopK
from commlib.feedback import EControl
from commlib.sim import Simulator, ddp_bucket_layout
from commlib.train import mlp

WORKERS = 3
SHAPES = {"a.weight": (32, 24), "a.bias": (32,), "b.weight": (24, 40), "b.bias": (24,), "c.weight": (16, 32)}
LAYOUT = [["c.weight", "b.bias"], ["b.weight"], ["a.bias", "a.weight"]]


def _grads(step: int, poison: str | None = None) -> list[list[tuple[str, torch.Tensor]]]:
    """Each worker's gradients of step ``step``, in registration order; ``poison``: worker 1's NaN there."""
    out = []
    for r in range(WORKERS):
        g = torch.Generator().manual_seed(1000 * step + r)
        named = [(name, torch.randn(*shape, generator=g)) for name, shape in SHAPES.items()]
        if r == 1 and poison is not None:
            dict(named)[poison].view(-1)[3] = float("nan")
        out.append(named)
    return out


@pytest.mark.parametrize("compressor, feedback", [
    (TopK(density=0.1), EControl(eta=0.05)),
    (QSGD(bits=4), None),
    (PowerSGD(rank=2, error_feedback=True), None),
], ids=["topk+econtrol", "qsgd", "powersgd+ef"])
def test_a_layout_leaves_every_tensor_s_mean_bitwise_the_same(compressor, feedback) -> None:
    one = Simulator(compressor, WORKERS, feedback=feedback, min_numel=16)
    laid_out = Simulator(compressor, WORKERS, feedback=feedback, min_numel=16, buckets=LAYOUT)
    for step in range(6):
        for a, b in zip(one.exchange(_grads(step)), laid_out.exchange(_grads(step))):
            assert torch.equal(a, b)
    assert one.stats.total.buckets == 6 and laid_out.stats.total.buckets == 6 * len(LAYOUT)
    assert one.stats.total.compressed_numel == laid_out.stats.total.compressed_numel
    extra_flags = 6 * (len(LAYOUT) - 1)  # every bucket sends its own one-element non-finite flag
    assert laid_out.stats.total.sent_bytes - one.stats.total.sent_bytes == 4 * extra_flags


def test_a_non_finite_gradient_abandons_only_its_bucket() -> None:
    """One bucket holds the NaN: it falls back to dense (the NaN reaches its mean); the others stay compressed."""
    clean = Simulator(TopK(density=0.1), WORKERS, min_numel=16, start_step=0, buckets=LAYOUT)
    laid_out = Simulator(TopK(density=0.1), WORKERS, min_numel=16, start_step=0, buckets=LAYOUT)
    one = Simulator(TopK(density=0.1), WORKERS, min_numel=16, start_step=0)
    expected = dict(zip(SHAPES, clean.exchange(_grads(0))))
    ours = dict(zip(SHAPES, laid_out.exchange(_grads(0, poison="b.weight"))))
    whole = dict(zip(SHAPES, one.exchange(_grads(0, poison="b.weight"))))
    assert laid_out.stats.last.non_finite_buckets == 1 and one.stats.last.non_finite_buckets == 1
    assert torch.isnan(ours["b.weight"]).any()
    for name in ("a.weight", "c.weight"):  # compressed as without the NaN, in their own buckets
        assert torch.equal(ours[name], expected[name])
        assert not torch.equal(whole[name], expected[name])  # one bucket: everything went dense
    assert laid_out.stats.last.compressed_numel == 32 * 24 + 16 * 32 and one.stats.last.compressed_numel == 0


@pytest.mark.parametrize("buckets, match", [
    ("a.weight", "sequence of sequences"),
    (["a.weight"], "sequence of sequences"),
    ([], "non-empty"),
    ([["a.weight"], []], "non-empty"),
    ([["a.weight", 3]], r"names \(str\)"),
    ([["a.weight", "b.bias"], ["b.bias"]], r"one bucket only; \['b.bias'\]"),
])
def test_a_malformed_layout_is_rejected(buckets, match) -> None:
    with pytest.raises(ValueError, match=match):
        Simulator(TopK(density=0.1), WORKERS, buckets=buckets)


@pytest.mark.parametrize("layout, match", [
    (LAYOUT[:2], r"not in any bucket \['a.bias', 'a.weight'\]"),
    (LAYOUT + [["d.weight"]], r"not among the gradients \['d.weight'\]"),
])
def test_a_layout_that_does_not_fit_the_gradients_is_rejected_before_any_exchange(layout, match) -> None:
    sim = Simulator(TopK(density=0.1), WORKERS, min_numel=16, buckets=layout)
    with pytest.raises(ValueError, match=match):
        sim.exchange(_grads(0))
    assert sim.step == 0 and sim.stats.total.buckets == 0


@pytest.mark.parametrize("cap", [0, -1.0, True, "25", float("nan")])
def test_ddp_bucket_layout_rejects_a_bad_cap(cap) -> None:
    with pytest.raises(ValueError, match="bucket_cap_mb must be a positive number"):
        ddp_bucket_layout(mlp(hidden=16), cap)


class _Mixed(torch.nn.Module):
    """Float32 and float64 layers, and a frozen one: DDP buckets by dtype and skips the frozen."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(64, 300)
        self.frozen = torch.nn.Linear(300, 300)
        self.frozen.requires_grad_(False)
        self.b = torch.nn.Linear(300, 200).double()
        self.c = torch.nn.Linear(200, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.frozen(self.a(x)).double()).float())


_MODELS = {"mlp256": lambda: mlp(hidden=256), "mlp1024": lambda: mlp(hidden=1024), "mixed": _Mixed}
_CASES = [("mlp256", 0.05), ("mlp256", 0.01), ("mlp256", None), ("mlp1024", None), ("mlp1024", 0.5),
          ("mlp1024", 1.3), ("mixed", 0.2), ("mixed", 0.05)]


def _record(state: tuple[dict, dict], bucket):  # no return annotation: DDP checks it as an object
    """A DDP hook that notes each bucket's parameter names and returns the bucket as it is."""
    names, seen = state
    seen[bucket.index()] = [names[p] for p in bucket.parameters()]
    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def _ddp_layouts(rank: int, world: int) -> list[list[list[str]]]:
    """The buckets a DDP model hands its hook at step 2 (after the rebuild), per case."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = []
    for model_name, cap in _CASES:
        model = _MODELS[model_name]()
        names = {p: n for n, p in model.named_parameters()}
        wrapped = DDP(model) if cap is None else DDP(model, bucket_cap_mb=cap)
        seen: dict[int, list[str]] = {}
        wrapped.register_comm_hook((names, seen), _record)
        for _ in range(3):
            seen.clear()
            wrapped(torch.randn(8, 64)).sum().backward()
        out.append([seen[i] for i in sorted(seen)])
    return out


@pytest.mark.timeout(300)
def test_ddp_bucket_layout_is_the_layout_ddp_rebuilds() -> None:
    seen = run_workers(_ddp_layouts, 1, timeout=240)[0]
    for (model_name, cap), layout in zip(_CASES, seen):
        assert ddp_bucket_layout(_MODELS[model_name](), cap) == layout, (model_name, cap)
    assert len(seen[0]) == 2 and len(seen[1]) == 3  # the caps did split the digits MLP
    assert not any("frozen" in name for bucket in seen[-1] for name in bucket)
