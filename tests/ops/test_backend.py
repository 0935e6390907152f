"""Which kernels ``commlib.ops`` uses, how bad input is rejected on every path, and the ops' torch.library contract."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch

import commlib.ops as ops
from commlib.ops import reference

DISABLED = os.environ.get("COMMLIB_DISABLE_EXTENSION", "").strip().lower() in ("1", "true", "yes", "on")
needs_extension = pytest.mark.skipif(ops.backend() == "reference", reason="commlib._C is not loaded")


def u8(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


# ---------------------------------------------------------------- backend selection


def test_backend_name() -> None:
    assert ops.backend() in ("reference", "cpp", "cpp+cuda")


@pytest.mark.skipif(DISABLED, reason="COMMLIB_DISABLE_EXTENSION is set")
def test_extension_is_loaded_in_dev_environment() -> None:
    """The dev environment builds commlib._C (``pip install --no-build-isolation -e .``); a silent fallback is a bug."""
    assert ops.backend() != "reference", f"commlib._C did not load: {ops._EXTENSION_ERROR}"
    if not torch.cuda.is_available():
        assert ops.backend() == "cpp"


def test_disable_env_var_forces_reference() -> None:
    code = (
        "import torch, commlib.ops as o\n"
        "assert o.backend() == 'reference', o.backend()\n"
        "assert o.pack_bits(torch.tensor([1, 0, 3, 2, 1], dtype=torch.uint8), 2).tolist() == [177, 1]\n"
        "print('ok')\n"
    )
    env = {**os.environ, "COMMLIB_DISABLE_EXTENSION": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ---------------------------------------------------------------- bad input: ValueError on both paths

# (pack or unpack, arguments, regex the message must match)
BAD_INPUTS: list[tuple[str, tuple, str]] = [
    ("pack", (torch.tensor([1, 0], dtype=torch.int32), 1), "1-D uint8"),
    ("pack", (torch.zeros(2, 4, dtype=torch.uint8), 1), "1-D uint8"),
    ("pack", (u8([1, 0, 1]), 3), r"bits must be one of \(1, 2, 4, 8\)"),
    ("pack", (u8([1, 0, 1]), 0), r"bits must be one of"),
    ("pack", (u8([0, 1, 2, 3, 4]), 2), "does not fit in 2 bits"),
    ("pack", (u8([0, 1, 2]), 1), "does not fit in 1 bits"),
    ("pack", (u8([0] * 9 + [16]), 4), "does not fit in 4 bits"),
    ("unpack", (u8([1, 2]), 2, 9), "9 codes of 2 bits need 3 bytes, got 2"),
    ("unpack", (u8([1, 2]), 4, 1), "1 codes of 4 bits need 1 bytes, got 2"),
    ("unpack", (u8([]), 1, -1), "non-negative"),
    ("unpack", (torch.zeros(2, dtype=torch.float32), 8, 2), "1-D uint8"),
    ("unpack", (torch.zeros(1, 2, dtype=torch.uint8), 8, 2), "1-D uint8"),
    ("unpack", (u8([1, 2]), 3, 5), r"bits must be one of"),
]


def _paths() -> list[tuple[str, Callable, Callable]]:
    paths = [("reference", reference.pack_bits, reference.unpack_bits)]
    if ops.backend() != "reference":
        paths.append(("dispatch", ops.pack_bits, ops.unpack_bits))
    return paths


@pytest.mark.parametrize("path", _paths(), ids=lambda p: p[0])
@pytest.mark.parametrize("op, args, message", BAD_INPUTS)
def test_bad_input_raises_value_error(path: tuple[str, Callable, Callable], op: str, args: tuple, message: str) -> None:
    _, pack, unpack = path
    with pytest.raises(ValueError, match=message):
        (pack if op == "pack" else unpack)(*args)


@needs_extension
@pytest.mark.parametrize("op, args, message", BAD_INPUTS)
def test_bad_input_direct_op_raises(op: str, args: tuple, message: str) -> None:
    """The raw ops check their arguments themselves (TORCH_CHECK_VALUE): a Python ValueError, no crash or wild read."""
    fn = torch.ops.commlib.pack_bits if op == "pack" else torch.ops.commlib.unpack_bits
    with pytest.raises(ValueError, match=message):
        fn(*args)


@needs_extension
def test_direct_op_rejects_non_contiguous() -> None:
    codes = torch.zeros(20, dtype=torch.uint8)[::2]
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.commlib.pack_bits(codes, 1)
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.commlib.unpack_bits(codes, 8, 10)
    assert torch.equal(ops.pack_bits(codes, 1), u8([0, 0]))  # the wrapper makes it contiguous


def test_python_level_errors_identical_on_both_paths() -> None:
    """The metadata checks run in Python before either path, so the messages are the reference's exactly."""
    for pack, unpack in [(p, u) for _, p, u in _paths()]:
        with pytest.raises(ValueError) as info:
            pack(u8([1]), 3)
        assert str(info.value) == "bits must be one of (1, 2, 4, 8), got 3"
        with pytest.raises(ValueError) as info:
            unpack(u8([1, 2]), 2, 9)
        assert str(info.value) == "9 codes of 2 bits need 3 bytes, got 2"


# ---------------------------------------------------------------- torch.library contract


@needs_extension
@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch >= 2.4")
@pytest.mark.parametrize("bits", (1, 2, 4, 8))
@pytest.mark.parametrize("n", (0, 1, 13, 1000))
def test_opcheck(bits: int, n: int) -> None:
    codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    torch.library.opcheck(torch.ops.commlib.pack_bits.default, (codes, bits))
    packed = torch.ops.commlib.pack_bits(codes, bits)
    torch.library.opcheck(torch.ops.commlib.unpack_bits.default, (packed, bits, n))


@needs_extension
def test_meta_tensors_get_shapes() -> None:
    codes = torch.empty(13, dtype=torch.uint8, device="meta")
    packed = ops.pack_bits(codes, 2)
    assert packed.device.type == "meta" and packed.shape == (4,) and packed.dtype == torch.uint8
    assert ops.unpack_bits(packed, 2, 13).shape == (13,)


@needs_extension
def test_torch_compile_fullgraph() -> None:
    def round_trip(codes: torch.Tensor) -> torch.Tensor:
        return ops.unpack_bits(ops.pack_bits(codes, 4), 4, codes.shape[0])

    compiled = torch.compile(round_trip, fullgraph=True, backend="aot_eager", dynamic=True)
    for n in (17, 33):
        codes = torch.randint(0, 16, (n,), dtype=torch.uint8)
        assert torch.equal(compiled(codes), codes)
