"""Malformed input to every decoder (and the ops' argument checks): a ValueError naming the problem, never a crash,
another exception or a silently wrong result; ``qsgd_decode_add`` leaves ``out`` untouched when it raises.

Each case runs on the reference, the dispatching wrapper and (when built) the raw ``torch.ops.commlib`` kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import commlib.ops as ops
from commlib.ops import reference

HAVE_KERNEL = ops.backend() != "reference"
needs_extension = pytest.mark.skipif(not HAVE_KERNEL, reason="commlib._C is not loaded")
P = 2**31 - 1


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t``: equality is bitwise (NaN payloads and the sign of zero included)."""
    return t.contiguous().view(torch.uint8)


def _kernel(name: str) -> Callable:
    return lambda *args: getattr(torch.ops.commlib, name)(*args)


def paths(name: str, wrapper_too: bool = True) -> list[tuple[str, Callable]]:
    found = [("reference", getattr(reference, name))]
    if wrapper_too:
        found.append(("wrapper", getattr(ops, name)))
    if HAVE_KERNEL:
        found.append(("kernel", _kernel(name)))
    return found


def ids(found: list[tuple[str, Callable]]) -> list[str]:
    return [p[0] for p in found]


# ---------------------------------------------------------------- qsgd_decode_add

N, BS, LEVELS, BITS = 1001, 7, 3, 4  # 143 scales, 501 bytes, codes in [0, 6]


def valid_payload(n: int = N, bs: int = BS, levels: int = LEVELS, bits: int = BITS) -> tuple[torch.Tensor, ...]:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    scales, packed = reference.qsgd_encode(x, bs, levels, bits, False, 3)
    return scales, packed


def with_code(code: int, where: int, n: int = N, bs: int = BS, levels: int = LEVELS, bits: int = BITS):
    scales, packed = valid_payload(n, bs, levels, bits)
    codes = reference.unpack_bits(packed, bits, n)
    codes[where] = code
    return scales, reference.pack_bits(codes, bits)


def set_at(t: torch.Tensor, where: int, value: float) -> torch.Tensor:
    t = t.clone()
    t[where] = value
    return t


S, PK = valid_payload()
OUT = torch.randn(N, generator=torch.Generator().manual_seed(99))

# (id, out, scales, packed, bucket_size, levels, bits, regex); every path must raise ValueError matching the regex
DECODE_CASES: list[tuple] = [
    ("one-scale-short", OUT, S[:-1], PK, BS, LEVELS, BITS, "need 143 scales, got 142"),
    ("one-scale-extra", OUT, torch.cat([S, S[:1]]), PK, BS, LEVELS, BITS, "need 143 scales, got 144"),
    ("no-scales", OUT, S[:0], PK, BS, LEVELS, BITS, "need 143 scales, got 0"),
    ("other-bucket-size", OUT, S, PK, 8, LEVELS, BITS, "need 126 scales, got 143"),
    ("one-byte-short", OUT, S, PK[:-1], BS, LEVELS, BITS, "need 501 bytes, got 500"),
    ("one-byte-extra", OUT, S, torch.cat([PK, PK[:1]]), BS, LEVELS, BITS, "need 501 bytes, got 502"),
    ("no-bytes", OUT, S, PK[:0], BS, LEVELS, BITS, "need 501 bytes, got 0"),
    ("other-bits", OUT, S, PK, BS, LEVELS, 8, "need 1001 bytes, got 501"),
    ("negative-scale", OUT, set_at(S, 5, -1.0), PK, BS, LEVELS, BITS, "finite and non-negative"),
    ("tiny-negative-scale", OUT, set_at(S, 0, -1e-45), PK, BS, LEVELS, BITS, "finite and non-negative"),
    ("nan-scale", OUT, set_at(S, 142, float("nan")), PK, BS, LEVELS, BITS, "finite and non-negative"),
    ("inf-scale", OUT, set_at(S, 70, float("inf")), PK, BS, LEVELS, BITS, "finite and non-negative"),
    ("-inf-scale", OUT, set_at(S, 1, -float("inf")), PK, BS, LEVELS, BITS, "finite and non-negative"),
    ("code-7-first", OUT, *with_code(7, 0), BS, LEVELS, BITS, r"exceeds 2 \* levels = 6"),
    ("code-15-last", OUT, *with_code(15, N - 1), BS, LEVELS, BITS, r"exceeds 2 \* levels = 6"),
    ("code-9-middle", OUT, *with_code(9, 500), BS, LEVELS, BITS, r"exceeds 2 \* levels = 6"),
    ("scales-float64", OUT, S.double(), PK, BS, LEVELS, BITS, "scales must be (a 1-D )?float32"),
    ("scales-float16", OUT, S.half(), PK, BS, LEVELS, BITS, "scales must be (a 1-D )?float32"),
    ("packed-int8", OUT, S, PK.to(torch.int8), BS, LEVELS, BITS, "uint8"),
    ("packed-float32", OUT, S, PK.float(), BS, LEVELS, BITS, "uint8"),
    ("out-float64", OUT.double(), S, PK, BS, LEVELS, BITS, "out must be (a contiguous 1-D |a 1-D )?float32"),
    ("out-int32", OUT.int(), S, PK, BS, LEVELS, BITS, "out must be (a contiguous 1-D |a 1-D )?float32"),
    ("out-2d", OUT[:1000].view(10, 100), S, PK, BS, LEVELS, BITS, "1-D"),
    ("scales-2d", OUT, S.view(11, 13), PK, BS, LEVELS, BITS, "1-D"),
    ("packed-2d", OUT, S, PK[:500].view(2, 250), BS, LEVELS, BITS, "1-D"),
    ("scales-0d", OUT, S[0], PK, BS, LEVELS, BITS, "1-D"),
    ("bits-3", OUT, S, PK, BS, LEVELS, 3, r"bits must be one of \(2, 4, 8\)"),
    ("bits-1", OUT, S, PK, BS, LEVELS, 1, r"bits must be one of \(2, 4, 8\)"),
    ("levels-0", OUT, S, PK, BS, 0, BITS, r"levels must be in \[1, 7\]"),
    ("levels-8", OUT, S, PK, BS, 8, BITS, r"levels must be in \[1, 7\]"),
    ("levels-negative", OUT, S, PK, BS, -3, BITS, r"levels must be in \[1, 7\]"),
    ("bucket-0", OUT, S, PK, 0, LEVELS, BITS, "bucket_size must be positive"),
    ("bucket-negative", OUT, S, PK, -7, LEVELS, BITS, "bucket_size must be positive"),
]
for _bits, _levels, _code in ((2, 1, 3), (8, 5, 11), (8, 5, 255), (8, 127, 255)):
    _payload = with_code(_code, 777, bits=_bits, levels=_levels)
    DECODE_CASES.append((f"bits{_bits}-s{_levels}-code{_code}", OUT, *_payload, BS, _levels, _bits, "exceeds"))
# a bad code far into the last of several parallel blocks
_BIG_OUT = torch.randn(70_001, generator=torch.Generator().manual_seed(5))
DECODE_CASES.append(("big-code-late", _BIG_OUT, *with_code(8, 69_998, n=70_001), BS, LEVELS, BITS, "exceeds"))
DECODE_CASES.append(
    (
        "big-scale-late",
        _BIG_OUT,
        set_at(valid_payload(70_001)[0], 9_999, -2.0),
        valid_payload(70_001)[1],
        BS,
        LEVELS,
        BITS,
        "finite and non-negative",
    )
)

DECODERS = paths("qsgd_decode_add")


@pytest.mark.parametrize("decode", [p[1] for p in DECODERS], ids=ids(DECODERS))
@pytest.mark.parametrize("case", DECODE_CASES, ids=[c[0] for c in DECODE_CASES])
def test_qsgd_decode_rejects_malformed_payload(decode, case) -> None:
    _, out, scales, packed, bucket_size, levels, bits, message = case
    target = out.clone()
    with pytest.raises(ValueError, match=message):
        decode(target, scales, packed, bucket_size, levels, bits)
    assert torch.equal(bits_of(target), bits_of(out)), "out was modified by a rejected payload"


@needs_extension
@pytest.mark.parametrize("levels", [2**31, 2**32 + 1, 2**62, 2**63 - 1])
def test_qsgd_huge_levels_rejected(levels: int) -> None:
    """levels far out of range are rejected like levels = 8 (reference and kernel alike).

    Fails for 2**62 and 2**63 - 1: ``check_qsgd_config`` in csrc/qsgd.h computes ``2 * levels + 1`` in int64, which
    overflows, so the kernel encodes (garbage codes) and decodes instead of raising; the wrapper passes it through.
    """
    x = torch.randn(10)
    out = torch.zeros(10)
    for name, encode, decode in (
        ("reference", reference.qsgd_encode, reference.qsgd_decode_add),
        ("wrapper", ops.qsgd_encode, ops.qsgd_decode_add),
        ("kernel", _kernel("qsgd_encode"), _kernel("qsgd_decode_add")),
    ):
        with pytest.raises(ValueError, match=r"levels must be in \[1, 127\]"):
            encode(x, 4, levels, 8, False, 0)
        with pytest.raises(ValueError, match=r"levels must be in \[1, 127\]"):
            decode(out, torch.ones(3), torch.zeros(10, dtype=torch.uint8), 4, levels, 8)
        assert torch.equal(out, torch.zeros(10)), name


@needs_extension
def test_qsgd_raw_kernel_rejects_non_contiguous() -> None:
    kernel = torch.ops.commlib.qsgd_decode_add
    out = torch.zeros(2 * N)
    with pytest.raises(ValueError, match="out must be contiguous"):
        kernel(out[::2], S, PK, BS, LEVELS, BITS)
    assert torch.equal(out, torch.zeros(2 * N))
    with pytest.raises(ValueError, match="scales must be contiguous"):
        kernel(OUT.clone(), torch.stack([S, S], 1).reshape(-1)[::2], PK, BS, LEVELS, BITS)
    with pytest.raises(ValueError, match="packed must be contiguous"):
        kernel(OUT.clone(), S, torch.stack([PK, PK], 1).reshape(-1)[::2], BS, LEVELS, BITS)
    with pytest.raises(ValueError, match="x must be contiguous"):
        torch.ops.commlib.qsgd_encode(torch.randn(20)[::2], 7, 3, 4, False, 0)


def test_qsgd_wrapper_non_contiguous() -> None:
    """The wrapper rejects a strided ``out`` (it writes in place) and copies strided scales and codes."""
    out = torch.zeros(2 * N)
    with pytest.raises(ValueError, match="contiguous"):
        ops.qsgd_decode_add(out[::2], S, PK, BS, LEVELS, BITS)
    assert torch.equal(out, torch.zeros(2 * N))
    expected, got = OUT.clone(), OUT.clone()
    reference.qsgd_decode_add(expected, S, PK, BS, LEVELS, BITS)
    strided_s = torch.stack([S, S], 1).reshape(-1)[::2]
    strided_p = torch.stack([PK, PK], 1).reshape(-1)[::2]
    ops.qsgd_decode_add(got, strided_s, strided_p, BS, LEVELS, BITS)
    assert torch.equal(bits_of(got), bits_of(expected))


@pytest.mark.parametrize("decode", [p[1] for p in DECODERS], ids=ids(DECODERS))
def test_qsgd_padding_bits_are_ignored(decode) -> None:
    """Garbage in the unused high bits of the last byte is not a code: decoding is unchanged."""
    for n, bits, levels in ((1001, 4, 3), (999, 2, 1), (5, 4, 7)):
        scales, packed = valid_payload(n, BS, levels, bits)
        dirty = packed.clone()
        used = n * bits % 8
        dirty[-1] |= (0xFF << used) & 0xFF
        assert not torch.equal(dirty, packed)
        clean_out, dirty_out = OUT[:n].clone(), OUT[:n].clone()
        decode(clean_out, scales, packed, BS, levels, bits)
        decode(dirty_out, scales, dirty, BS, levels, bits)
        assert torch.equal(bits_of(clean_out), bits_of(dirty_out))


@st.composite
def decode_inputs(draw: st.DrawFn) -> tuple:
    """A payload that is valid, or nearly so: wrong lengths, scale bit patterns of any kind, codes out of range."""
    bits, levels = draw(st.sampled_from([(2, 1), (4, 1), (4, 3), (4, 7), (8, 1), (8, 5), (8, 127)]))
    bs = draw(st.sampled_from([1, 3, 7, 8, 128]))
    n = draw(st.integers(0, 300))
    n_buckets = -(-n // bs)
    need = (n * bits + 7) // 8
    scale_count = n_buckets + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
    if draw(st.booleans()):  # arbitrary bit patterns: NaN, negative, inf, subnormal
        scales = torch.tensor(
            draw(st.lists(st.integers(0, 2**32 - 1), min_size=max(scale_count, 0), max_size=max(scale_count, 0))),
            dtype=torch.int64,
        )
        scales = scales.to(torch.int32).view(torch.float32) if scales.numel() else torch.zeros(0)
    else:
        scales = torch.tensor(
            draw(
                st.lists(st.floats(0, 2.0**100, width=32), min_size=max(scale_count, 0), max_size=max(scale_count, 0))
            ),
            dtype=torch.float32,
        )
    byte_count = max(0, need + draw(st.sampled_from([0, 0, 0, 0, -1, 1])))
    if draw(st.booleans()):  # random bytes: codes > 2s are likely
        packed = torch.tensor(list(draw(st.binary(min_size=byte_count, max_size=byte_count))), dtype=torch.uint8)
    else:  # valid codes, then maybe one corrupted
        codes = torch.tensor(draw(st.lists(st.integers(0, 2 * levels), min_size=n, max_size=n)), dtype=torch.uint8)
        if n and draw(st.booleans()):
            codes[draw(st.integers(0, n - 1))] = draw(st.integers(2 * levels, 2**bits - 1))
        packed = reference.pack_bits(codes, bits)
        if byte_count != need:
            packed = torch.cat([packed, packed.new_zeros(1)]) if byte_count > need else packed[:-1]
    return n, bs, levels, bits, scales, packed


@settings(max_examples=100, deadline=None)
@given(case=decode_inputs())
def test_qsgd_decode_fuzz(case) -> None:
    """Every path agrees: the same clean result bit for bit, or ValueError on all with ``out`` untouched."""
    n, bs, levels, bits, scales, packed = case
    start = torch.randn(n, generator=torch.Generator().manual_seed(n))
    outcomes = []
    for name, decode in DECODERS:
        out = start.clone()
        try:
            decode(out, scales, packed, bs, levels, bits)
        except ValueError:
            assert torch.equal(bits_of(out), bits_of(start)), f"{name} modified out before raising"
            outcomes.append(None)
        else:
            outcomes.append(bits_of(out))
    if any(o is None for o in outcomes):
        assert all(o is None for o in outcomes), f"some paths raised, some did not: {ids(DECODERS)} {outcomes}"
    else:
        assert all(torch.equal(o, outcomes[0]) for o in outcomes)


# ---------------------------------------------------------------- unpack_bits

UNPACKERS = [("reference", reference.unpack_bits), ("wrapper", ops.unpack_bits)]
if HAVE_KERNEL:
    UNPACKERS.append(("kernel", _kernel("unpack_bits")))


@pytest.mark.parametrize("unpack", [p[1] for p in UNPACKERS], ids=ids(UNPACKERS))
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_unpack_wrong_lengths(unpack, bits: int) -> None:
    for n in (0, 1, 7, 9, 1001):
        need = (n * bits + 7) // 8
        for length in {need - 1, need + 1, need + 8} - {-1}:
            packed = torch.zeros(length, dtype=torch.uint8)
            with pytest.raises(ValueError, match=f"{n} codes of {bits} bits need {need} bytes, got {length}"):
                unpack(packed, bits, n)
    with pytest.raises(ValueError, match="non-negative"):
        unpack(torch.zeros(0, dtype=torch.uint8), bits, -1)


@settings(max_examples=100, deadline=None)
@given(bits=st.sampled_from([0, 1, 2, 3, 4, 8]), data=st.binary(max_size=64), n=st.integers(-2, 600))
def test_unpack_fuzz(bits: int, data: bytes, n: int) -> None:
    packed = torch.tensor(list(data), dtype=torch.uint8)
    outcomes = []
    for _, unpack in UNPACKERS:
        try:
            outcomes.append(unpack(packed, bits, n))
        except ValueError:
            outcomes.append(None)
    if any(o is None for o in outcomes):
        assert all(o is None for o in outcomes)
    else:
        assert all(torch.equal(o, outcomes[0]) for o in outcomes) and outcomes[0].shape == (n,)


# ---------------------------------------------------------------- topk arguments

TOPK = paths("topk_magnitude") + [(f"{n}-threshold", f) for n, f in paths("topk_threshold", wrapper_too=True)[:2]]
if HAVE_KERNEL:
    TOPK.append(("kernel-threshold", lambda x, k: torch.ops.commlib.topk_threshold(x, k, 0)))


@pytest.mark.parametrize("topk", [p[1] for p in TOPK], ids=ids(TOPK))
def test_topk_bad_arguments(topk) -> None:
    x = torch.randn(10)
    for k in (-1, 11, 2**40):
        with pytest.raises(ValueError, match=r"k must be in \[0, 10\]"):
            topk(x, k)
    for bad in (torch.randn(2, 5), torch.tensor(1.0)):
        with pytest.raises(ValueError, match="1-D"):
            topk(bad, 1)


@needs_extension
@pytest.mark.parametrize("op", ["topk_magnitude", "topk_threshold"])
def test_topk_raw_kernel_rejects_other_dtypes(op: str) -> None:
    args = () if op == "topk_magnitude" else (0,)
    fn = getattr(torch.ops.commlib, op)
    for dtype in (torch.float64, torch.float16, torch.int32, torch.uint8):
        with pytest.raises(ValueError, match="x must be float32"):
            fn(torch.zeros(10, dtype=dtype), 3, *args)
    with pytest.raises(ValueError, match="contiguous"):
        fn(torch.randn(20)[::2], 3, *args)
    with pytest.raises(ValueError, match=r"k must be in \[0, 10\]"):
        fn(torch.randn(10), -1, *args)


@pytest.mark.parametrize("fn", [ops.topk_magnitude, ops.topk_threshold])
def test_topk_wrapper_other_dtypes_fall_back(fn) -> None:
    for dtype in (torch.float64, torch.float16, torch.int32):
        x = torch.tensor([3, -7, 1, 7, 0, -2], dtype=dtype)
        values, idx = fn(x, 2)
        assert idx.tolist() == [1, 3] and values.dtype == dtype and values.tolist() == [-7, 7]


# ---------------------------------------------------------------- count sketch arguments and tables

UNSKETCH = paths("count_unsketch")
SKETCH = paths("count_sketch_add_")
RANGES = [
    (-1, 5, "non-negative"),
    (0, -1, "non-negative"),
    (P - 10, 11, "below 2"),
    (P + 5, 0, "below 2"),
    (2**62, 2**62, "below 2"),
    (2**63 - 1, 1, "below 2"),
]


@pytest.mark.parametrize("unsketch", [p[1] for p in UNSKETCH], ids=ids(UNSKETCH))
@pytest.mark.parametrize("offset, length, message", RANGES)
def test_unsketch_bad_range(unsketch, offset: int, length: int, message: str) -> None:
    """Fails for the kernel at (2**62, 2**62) and (2**63 - 1, 1): ``check_sketch_range`` in csrc/sketch.h adds
    offset + length in int64, which overflows, so the check passes (a wrong estimate, or a RuntimeError)."""
    with pytest.raises(ValueError, match=message):
        unsketch(torch.ones(3, 8), 0, offset, length)


@pytest.mark.parametrize("sketch", [p[1] for p in SKETCH], ids=ids(SKETCH))
@pytest.mark.parametrize("offset, length, message", [r for r in RANGES if r[1] in (1, 5, 11)])
def test_sketch_bad_range_leaves_table(sketch, offset: int, length: int, message: str) -> None:
    """Fails for the kernel at offset 2**63 - 1: the same int64 overflow; the kernel then adds into the table."""
    table = torch.ones(3, 8)
    with pytest.raises(ValueError, match=message):
        sketch(table, torch.ones(length), 0, offset)
    assert torch.equal(table, torch.ones(3, 8))


BAD_TABLES = [
    ("65-rows", torch.zeros(65, 4), "at most 64 rows"),
    ("1-d", torch.zeros(8), "2-D"),
    ("3-d", torch.zeros(2, 3, 4), "2-D"),
    ("no-rows", torch.zeros(0, 4), "2-D"),
    ("no-cols", torch.zeros(3, 0), "2-D"),
    ("int", torch.zeros(3, 4, dtype=torch.int32), "float"),
]


@pytest.mark.parametrize("unsketch", [p[1] for p in UNSKETCH], ids=ids(UNSKETCH))
@pytest.mark.parametrize("case", BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
def test_unsketch_bad_table(unsketch, case) -> None:
    _, table, message = case
    with pytest.raises(ValueError, match=message):
        unsketch(table, 0, 0, 5)


@pytest.mark.parametrize("sketch", [p[1] for p in SKETCH], ids=ids(SKETCH))
@pytest.mark.parametrize("case", BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
def test_sketch_bad_table(sketch, case) -> None:
    _, table, message = case
    before = table.clone()
    with pytest.raises(ValueError, match=message):
        sketch(table, torch.ones(5), 0, 0)
    assert torch.equal(table, before)


@pytest.mark.parametrize("unsketch", [p[1] for p in UNSKETCH], ids=ids(UNSKETCH))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_unsketch_non_finite_table(unsketch, bad: float) -> None:
    """A table that summed a NaN or overflowed: rejected on every path (the kernel's sort would hide a NaN)."""
    for rows in (1, 2, 5):
        table = torch.randn(rows, 16)
        table[rows - 1, 9] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            unsketch(table, 5, 0, 100)


@pytest.mark.parametrize("sketch", [p[1] for p in SKETCH], ids=ids(SKETCH))
def test_sketch_bad_x(sketch) -> None:
    table = torch.zeros(3, 8)
    with pytest.raises(ValueError, match="1-D"):
        sketch(table, torch.ones(2, 3), 0, 0)
    assert torch.equal(table, torch.zeros(3, 8))


@needs_extension
def test_sketch_raw_kernel_dtype_and_layout() -> None:
    k = torch.ops.commlib
    with pytest.raises(ValueError, match="table must be float32"):
        k.count_sketch_add_(torch.zeros(3, 8, dtype=torch.float64), torch.ones(4), 0, 0)
    with pytest.raises(ValueError, match="x must be float32"):
        k.count_sketch_add_(torch.zeros(3, 8), torch.ones(4, dtype=torch.float64), 0, 0)
    with pytest.raises(ValueError, match="contiguous"):
        k.count_sketch_add_(torch.zeros(8, 3).t(), torch.ones(4), 0, 0)
    with pytest.raises(ValueError, match="contiguous"):
        k.count_sketch_add_(torch.zeros(3, 8), torch.ones(8)[::2], 0, 0)
    with pytest.raises(ValueError, match="table must be float32"):
        k.count_unsketch(torch.zeros(3, 8, dtype=torch.float64), 0, 0, 4)
    with pytest.raises(ValueError, match="contiguous"):
        k.count_unsketch(torch.zeros(8, 3).t(), 0, 0, 4)


# ---------------------------------------------------------------- SRHT arguments

SRHT_T = paths("srht_transpose")
SRHT = paths("srht")
ROWS = torch.tensor([0, 5, 3])
LENGTH = 1001  # 126 blocks of 8


@pytest.mark.parametrize("transpose", [p[1] for p in SRHT_T], ids=ids(SRHT_T))
def test_srht_transpose_wrong_y(transpose) -> None:
    bad_ys = [
        torch.zeros(127, 3),
        torch.zeros(125, 3),
        torch.zeros(126, 2),
        torch.zeros(126, 4),
        torch.zeros(378),
        torch.zeros(126, 3, 1),
        torch.zeros(126, 3, dtype=torch.float64),
        torch.zeros(126, 3, dtype=torch.int32),
    ]
    for y in bad_ys:
        with pytest.raises(ValueError, match="y must"):
            transpose(y, 8, ROWS, LENGTH, 0)
    with pytest.raises(ValueError, match="length must be non-negative"):
        transpose(torch.zeros(0, 3), 8, ROWS, -1, 0)
    with pytest.raises(ValueError, match="y must"):  # length and y disagree
        transpose(torch.zeros(126, 3), 8, ROWS, 1008 + 1, 0)


BAD_ROWS = [
    (8, torch.tensor([0, 5, 5]), "distinct"),
    (8, torch.tensor([0, 8]), r"outside \[0, 8\)"),
    (8, torch.tensor([-1, 2]), r"outside \[0, 8\)"),
    (8, torch.arange(9) % 8, "1 to block = 8"),
    (8, torch.zeros(0, dtype=torch.int64), "1 to block = 8"),
    (8, torch.tensor([0, 1], dtype=torch.int32), "int64"),
    (8, torch.tensor([[0, 1]]), "1-D int64"),
    (3, torch.tensor([0]), "power of two"),
    (12, torch.tensor([0]), "power of two"),
    (0, torch.tensor([0]), "power of two"),
    (-4, torch.tensor([0]), "power of two"),
    (2**25, torch.tensor([0]), "power of two"),
]


@pytest.mark.parametrize("op", [p for p in SRHT + SRHT_T], ids=ids(SRHT) + [f"{i}-transpose" for i in ids(SRHT_T)])
@pytest.mark.parametrize("block, rows, message", BAD_ROWS)
def test_srht_bad_block_or_rows(op, block: int, rows: torch.Tensor, message: str) -> None:
    name, fn = op
    blocks = -(-16 // max(block, 1)) if block > 0 else 1
    with pytest.raises(ValueError, match=message):
        if fn in [p[1] for p in SRHT]:
            fn(torch.randn(16), block, rows, 0)
        else:
            fn(torch.zeros(blocks, max(rows.numel(), 1)), block, rows, 16, 0)


@pytest.mark.parametrize("srht", [p[1] for p in SRHT], ids=ids(SRHT))
def test_srht_bad_x(srht) -> None:
    for x in (torch.randn(2, 8), torch.randn(8, dtype=torch.float64), torch.tensor(1.0)):
        with pytest.raises(ValueError, match="x must"):
            srht(x, 8, ROWS, 0)


@needs_extension
def test_srht_raw_kernel_rejects_non_contiguous() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.commlib.srht(torch.randn(32)[::2], 8, ROWS, 0)
    with pytest.raises(ValueError, match="contiguous"):
        torch.ops.commlib.srht_transpose(torch.zeros(3, 2).t(), 8, ROWS, 16, 0)
    y = torch.randn(3, 2).t()  # the wrapper copies a strided y
    assert torch.equal(ops.srht_transpose(y, 8, ROWS, 16, 0), reference.srht_transpose(y.contiguous(), 8, ROWS, 16, 0))


# ---------------------------------------------------------------- qsgd_check: the decoder's validation alone

CHECKS = paths("qsgd_check")
CHECK_CASES = [c for c in DECODE_CASES if not c[0].startswith("out-")]  # qsgd_check takes n, not out


@pytest.mark.parametrize("check", [p[1] for p in CHECKS], ids=ids(CHECKS))
@pytest.mark.parametrize("case", CHECK_CASES, ids=[c[0] for c in CHECK_CASES])
def test_qsgd_check_rejects_what_the_decoder_rejects(check, case) -> None:
    _, out, scales, packed, bucket_size, levels, bits, message = case
    with pytest.raises(ValueError, match=message.replace("qsgd_decode_add", "qsgd_check")):
        check(scales, packed, out.numel(), bucket_size, levels, bits)


@pytest.mark.parametrize("check", [p[1] for p in CHECKS], ids=ids(CHECKS))
@pytest.mark.parametrize("n", [-1, 2**63 - 1])
def test_qsgd_check_rejects_a_bad_length(check, n: int) -> None:
    with pytest.raises(ValueError, match="n must be a non-negative integer|need"):
        check(S, PK, n, BS, LEVELS, BITS)


def _bad_codes_everywhere(n: int, bits: int) -> list[int]:
    """Positions for a bad code: both ends, 64-bit word edges, and the edges of 2**18-byte ranges (the kernel's
    parallel split) and of the thirds of the vector."""
    codes_per_word = 64 // bits
    spots = {0, 1, n - 1, n - 2, codes_per_word - 1, codes_per_word, n - n % codes_per_word - 1}
    thirds, halves = (n // parts // codes_per_word * codes_per_word for parts in (3, 2))
    for step in (2**18 * (8 // bits), thirds, halves):
        for k in range(1, n // max(step, 1) + 1):
            spots.update({k * step - 1, k * step, k * step + 1})
    return sorted(s for s in spots if 0 <= s < n)


@pytest.mark.parametrize("bits, levels", [(2, 1), (4, 3), (4, 7), (8, 5), (8, 127)])
def test_qsgd_check_finds_a_bad_code_anywhere(bits: int, levels: int) -> None:
    """A single code one past 2s (or the largest that fits) at every edge of the kernel's words and parallel ranges,
    in vectors long enough for several ranges: the kernel, the wrapper and the reference agree, and a clean payload
    passes. Padding bits after the last code are not codes: set to ones, they are accepted, as the decoder does."""
    n = 3 * 2**18 * (8 // bits) + 2 * (8 // bits) + 1  # several ranges and a partial last byte (except 8 bits)
    x = torch.randn(n, generator=torch.Generator().manual_seed(bits))
    scales, packed = reference.qsgd_encode(x, BS, levels, bits, False, 1)
    codes = reference.unpack_bits(packed, bits, n)
    for _, check in CHECKS:
        check(scales, packed, n, BS, levels, bits)
    if n % (8 // bits):
        padded = packed.clone()
        padded[-1] |= (0xFF << ((n % (8 // bits)) * bits)) & 0xFF
        out = torch.zeros(n)
        for _, check in CHECKS:
            check(scales, padded, n, BS, levels, bits)
        for _, decode in DECODERS:
            decode(out, scales, padded, BS, levels, bits)
    for where in _bad_codes_everywhere(n, bits):
        for bad in {2 * levels + 1, 2**bits - 1}:
            corrupt = codes.clone()
            corrupt[where] = bad
            payload = reference.pack_bits(corrupt, bits)
            for _, check in CHECKS:
                with pytest.raises(ValueError, match="exceeds"):
                    check(scales, payload, n, BS, levels, bits)


@given(n=st.integers(0, 300), bits_levels=st.sampled_from([(2, 1), (4, 1), (4, 6), (8, 2), (8, 126)]),
       data=st.data())
@settings(max_examples=200, deadline=None)
def test_qsgd_check_agrees_with_the_decoder(n: int, bits_levels: tuple[int, int], data) -> None:
    """Random byte strings as codes: every path of qsgd_check accepts exactly when the decoder does."""
    bits, levels = bits_levels
    packed = torch.tensor(data.draw(st.lists(st.integers(0, 255), min_size=reference.packed_length(n, bits),
                                             max_size=reference.packed_length(n, bits))), dtype=torch.uint8)
    scales = torch.ones(-(-n // BS))
    try:
        reference.qsgd_decode_add(torch.zeros(n), scales, packed, BS, levels, bits)
        accepted = True
    except ValueError:
        accepted = False
    for name, check in CHECKS:
        try:
            check(scales, packed, n, BS, levels, bits)
            assert accepted, f"{name} accepted a payload the decoder refuses"
        except ValueError as exc:
            assert not accepted and "exceeds" in str(exc), (name, exc)


@needs_extension
@pytest.mark.skipif(not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck needs torch >= 2.4")
def test_qsgd_check_opcheck_and_meta() -> None:
    torch.library.opcheck(torch.ops.commlib.qsgd_check.default, (S, PK, N, BS, LEVELS, BITS))
    ops.qsgd_check(S.to("meta"), PK.to("meta"), N, BS, LEVELS, BITS)  # the fake kernel checks metadata only
