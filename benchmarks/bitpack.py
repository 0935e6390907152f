"""Time bit packing: the pure-torch reference against the native kernel (``commlib._C``), numpy and a plain copy.

For each width in (1, 2, 4, 8) bits and each direction (pack, unpack), on ``--n``
codes with ``--threads`` intra-op threads, the best of ``--repeats`` timed runs
(after one warm-up) of:

1. ``reference``: :mod:`commlib.ops.reference` (pure torch);
2. ``cpp``: :func:`commlib.ops.pack_bits` / ``unpack_bits`` as users call them
   (Python checks + ``torch.ops.commlib.*``), when the extension is loaded;
3. ``numpy`` (1 bit only): ``numpy.packbits`` / ``unpackbits`` with ``bitorder="little"``
   (single-threaded);
4. ``clone(packed)``: ``tensor.clone()`` of the packed size, a memcpy-like floor;
   and ``clone(codes)``, a copy of the unpacked size.

Each result is checked against the reference before timing. Prints a table and
writes JSON (default ``benchmarks/results/bitpack.json``).

Usage::

    python benchmarks/bitpack.py [--n 25000000] [--threads 2] [--repeats 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import commlib.ops as ops
from commlib.ops import reference

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bitpack.json"


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(n: int, bits: int, repeats: int, native: bool) -> list[dict]:
    """Rows (pack, unpack) of timings in seconds for ``n`` random codes of ``bits`` bits."""
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8, generator=g)
    packed = reference.pack_bits(codes, bits)
    codes_np, packed_np = codes.numpy(), packed.numpy()
    if native:
        assert torch.equal(ops.pack_bits(codes, bits), packed), "kernel pack differs from the reference"
        assert torch.equal(ops.unpack_bits(packed, bits, n), codes), "kernel unpack differs from the reference"
    if bits == 1:
        assert np.array_equal(np.packbits(codes_np, bitorder="little"), packed_np)

    clone_packed = best_of(packed.clone, repeats)
    clone_codes = best_of(codes.clone, repeats)
    rows = []
    for op in ("pack", "unpack"):
        if op == "pack":
            ref_fn: Callable[[], object] = lambda: reference.pack_bits(codes, bits)  # noqa: E731
            cpp_fn: Callable[[], object] = lambda: ops.pack_bits(codes, bits)  # noqa: E731
            np_fn: Callable[[], object] = lambda: np.packbits(codes_np, bitorder="little")  # noqa: E731
        else:
            ref_fn = lambda: reference.unpack_bits(packed, bits, n)  # noqa: E731
            cpp_fn = lambda: ops.unpack_bits(packed, bits, n)  # noqa: E731
            np_fn = lambda: np.unpackbits(packed_np, count=n, bitorder="little")  # noqa: E731
        rows.append(
            {
                "op": op,
                "bits": bits,
                "n": n,
                "packed_bytes": packed.numel(),
                "reference_s": best_of(ref_fn, repeats),
                "cpp_s": best_of(cpp_fn, repeats) if native else None,
                "numpy_s": best_of(np_fn, repeats) if bits == 1 else None,
                "clone_packed_s": clone_packed,
                "clone_codes_s": clone_codes,
            }
        )
    return rows


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:8.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:6.1f}x"


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'op':6} {'bits':>4} {'ref ms':>8} {'cpp ms':>8} {'ref/cpp':>8} {'numpy ms':>8} {'np/cpp':>7} "
        f"{'clone(pk) ms':>12} {'cpp/clone(pk)':>13} {'clone(codes) ms':>15} {'cpp/clone(codes)':>16} {'cpp GB/s':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        moved = r["n"] + r["packed_bytes"]  # bytes read + written
        gbps = "-" if r["cpp_s"] is None else f"{moved / r['cpp_s'] / 1e9:8.2f}"
        print(
            f"{r['op']:6} {r['bits']:>4} {ms(r['reference_s'])} {ms(r['cpp_s'])} "
            f"{ratio(r['reference_s'], r['cpp_s']):>8} {ms(r['numpy_s'])} {ratio(r['numpy_s'], r['cpp_s']):>7} "
            f"{ms(r['clone_packed_s']):>12} {ratio(r['cpp_s'], r['clone_packed_s']):>13} "
            f"{ms(r['clone_codes_s']):>15} {ratio(r['cpp_s'], r['clone_codes_s']):>16} {gbps:>8}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25_000_000, help="codes per tensor")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best counts")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    native = ops.backend() != "reference"
    print(
        f"commlib.ops backend: {ops.backend()} | torch {torch.__version__} | numpy {np.__version__} | "
        f"{args.threads} threads | n = {args.n:,} | best of {args.repeats}"
    )
    load_before = os.getloadavg()[0]
    rows = [row for bits in ops.SUPPORTED_BITS for row in measure(args.n, bits, args.repeats, native)]
    print_table(rows)

    result = {
        "benchmark": "bitpack",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": ops.backend(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": args.threads,
        "n": args.n,
        "repeats": args.repeats,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": os.getloadavg()[0],
        "unit": "seconds, best of repeats",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
