"""The compressors and ops give the same bytes with the native kernels and with the pure-torch reference.

One subprocess runs :func:`compute` with ``COMMLIB_DISABLE_EXTENSION=1`` (so ``commlib.ops`` is the reference) on
inputs saved by this process, and saves its outputs with ``torch.save``; this process runs the same :func:`compute`
with the kernels and compares every tensor bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import commlib.ops as ops
from commlib.compress import QSGD, TensorContext, TopK

needs_extension = pytest.mark.skipif(ops.backend() == "reference", reason="commlib._C is not loaded")

WORLD = 3
QSGD_CONFIGS = {
    "bits2": QSGD(bits=2),
    "bits4-b7": QSGD(bits=4, bucket_size=7),
    "s5-b1000-max": QSGD(levels=5, bucket_size=1000, norm="max"),
    "bits8-b1": QSGD(bits=8, bucket_size=1),
    "s20-b128": QSGD(levels=20),
}
TOPK_CONFIGS = {"d0.01": TopK(density=0.01), "d0.1": TopK(density=0.1), "d0.5": TopK(density=0.5), "k1": TopK(k=1)}


def make_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2024)
    inputs = {
        "tiny": torch.randn(1, generator=g),
        "odd": torch.randn(7, generator=g),
        "matrix": torch.randn(40, 25, generator=g) * torch.exp(2 * torch.randn(40, 25, generator=g)),
        "ties": torch.randint(-2, 3, (1000,), generator=g).float(),
        "big": torch.randn(300_000, generator=g),  # topk_threshold's sampling path
        "zeros": torch.zeros(129),
    }
    inputs["big"][::5000] = 1e-40
    inputs["ints"] = torch.randint(-50, 51, (5000,), generator=g).float()
    inputs["rows"] = torch.randperm(64, generator=g)[:16]
    return inputs


def compute(inputs: dict[str, torch.Tensor]) -> dict[str, object]:
    """Everything compared across backends, keyed by name (run in both processes)."""
    out: dict[str, object] = {"backend": ops.backend()}
    for xname in ("tiny", "odd", "matrix", "ties", "big", "zeros"):
        x = inputs[xname]
        xs = [x * (r + 1) - r for r in range(WORLD)]  # a different tensor per rank
        for cname, c in {**TOPK_CONFIGS, **QSGD_CONFIGS}.items():
            if isinstance(c, TopK) and not c.compressible(x.shape):
                continue
            if xname == "big" and cname not in ("d0.01", "bits4-b7"):
                continue  # keep the reference run short: one config of each kind for the big tensor
            ctxs = [TensorContext(f"w.{xname}", 3, 11, r, WORLD) for r in range(WORLD)]
            parts = torch.stack([c.encode(xr, ctx) for xr, ctx in zip(xs, ctxs)])
            out[f"{cname}/{xname}/payloads"] = parts
            out[f"{cname}/{xname}/mean"] = c.decode_all(parts, x.shape, ctxs[0])
            out[f"{cname}/{xname}/compress"] = c.compress(x, ctxs[1])
    x = inputs["big"]
    values, idx = ops.topk_threshold(x, 2000, seed=5)
    out["ops/topk_threshold"] = torch.cat([values.view(torch.uint8), idx.view(torch.uint8)])
    scales, packed = ops.qsgd_encode(inputs["matrix"].reshape(-1), 33, 7, 4, False, 2**63 + 1)
    acc = torch.ones(1000)
    ops.qsgd_decode_add(acc, scales, packed, 33, 7, 4)
    out["ops/qsgd"] = torch.cat([scales.view(torch.uint8), packed, acc.view(torch.uint8)])
    table = torch.zeros(5, 97)
    ops.count_sketch_add_(table, inputs["ints"][:3000], seed=-7, offset=100)
    ops.count_sketch_add_(table, inputs["ints"][3000:], seed=-7, offset=3100)
    out["ops/sketch"] = table
    out["ops/unsketch"] = ops.count_unsketch(table, -7, 100, 5000)
    y = ops.srht(inputs["matrix"].reshape(-1), 64, inputs["rows"], 2**40 + 3)
    out["ops/srht"] = y
    out["ops/srht_transpose"] = ops.srht_transpose(y, 64, inputs["rows"], 1000, 2**40 + 3)
    return out


_SCRIPT = """
import sys
import torch
sys.path.insert(0, {here!r})
import test_backend_parity as t
inputs = torch.load({inputs!r}, weights_only=True)
torch.save(t.compute(inputs), {outputs!r})
"""


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], dict[str, object]]:
    tmp = tmp_path_factory.mktemp("parity")
    inputs = make_inputs()
    torch.save(inputs, tmp / "inputs.pt")
    script = _SCRIPT.format(here=str(Path(__file__).parent), inputs=str(tmp / "inputs.pt"), outputs=str(tmp / "out.pt"))
    env = {**os.environ, "COMMLIB_DISABLE_EXTENSION": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    reference_out = torch.load(tmp / "out.pt", weights_only=True)
    return compute(inputs), reference_out


@needs_extension
def test_backends_differ(both) -> None:
    kernel_out, reference_out = both
    assert kernel_out["backend"] == "cpp" or kernel_out["backend"] == "cpp+cuda"
    assert reference_out["backend"] == "reference"


@needs_extension
def test_same_keys(both) -> None:
    kernel_out, reference_out = both
    assert sorted(kernel_out) == sorted(reference_out)
    assert sum(k.startswith("topk") or k.startswith("d0") or k.startswith("k1") for k in kernel_out) >= 30


@needs_extension
@pytest.mark.parametrize("family", ["d0.01", "d0.1", "d0.5", "k1", *QSGD_CONFIGS, "ops"])
def test_bitwise_equal(both, family: str) -> None:
    kernel_out, reference_out = both
    keys = [k for k in kernel_out if k.startswith(family + "/")]
    assert keys
    for key in keys:
        a, b = kernel_out[key], reference_out[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)), key
