"""Time commlib's native kernels against torch's own ops, a memcpy and their pure-torch references, side by side.

For each size ``d`` (default 1M, 25M and 100M float32 elements; ``k = 1%``) the
cases below run interleaved: every repeat runs each case once, in turn, so load
drift hits all of them alike; a case's figure is its median over repeats (after
a warm-up). Every kernel's output is checked against its reference first.

- ``memcpy``: ``y.copy_(x)`` of the input into a preallocated buffer (the floor);
- top-k: ``torch.topk(x.abs(), k)`` (the baseline), the exact radix select
  (:func:`commlib.ops.topk_magnitude`) and the sampled threshold
  (:func:`commlib.ops.topk_threshold`);
- bit packing, 1/2/4/8 bits, pack and unpack of ``d`` codes, against a copy of
  the ``d`` code bytes; unpack allocates its ``d``-byte output, so it is also
  compared with a copy into a new tensor (``codes.clone()``:
  ``fraction_of_fresh_memcpy``), which pays the same allocation and page faults;
- fused error-feedback top-k (:func:`commlib.ops.ef_topk_`: ``e += g``, top-k,
  zero the selected entries of ``e``) against the unfused sequence
  ``e.add_(g)``, ``topk_threshold``, ``index_fill_``;
- EControl's step with top-k (``econtrol`` group): the message
  (:func:`commlib.ops.econtrol_message`) and the commit with a sparse ``Δ`` of
  ``k`` entries (:func:`commlib.ops.econtrol_commit_`) against the torch ops
  they replace, and the ranks' mean of 4 top-k messages added to ``h``
  (:func:`commlib.ops.sparse_mean_rows` + ``index_add_``) against the dense
  decode (zeros, 4 scatters, a division) + ``h.add_``;
- fused QSGD (4 bits, buckets of 128, l2): encode (quantize + pack) and
  decode-add, against ``memcpy`` of the float32 input;
- the non-finite check every exchange runs on its gradients each step
  (:func:`commlib.ops.all_finite`: the kernel's exponent-bit max reduction)
  against the reference's ``torch.aminmax`` and ``torch.isfinite(x).all()``;
- at ``d = 2**24`` (``--sketch-d``): count sketch (1 and 5 rows, ``d/100``
  columns per row) add and unsketch, and block SRHT (blocks of 4096, 205 rows
  kept: ``s ≈ d/20``) forward and transpose, against ``memcpy``; beside them
  the scatter floor of a one-row sketch: ``row.index_add_`` of ``d``
  precomputed (bucket, value) pairs, no hashing (random buckets, the same
  access pattern). Unsketch and transpose run twice: into a new tensor (as
  ``x.clone()``, ``fraction_of_fresh_memcpy``, they pay its page faults) and
  into a preallocated one (``out=``; × vs the new-tensor run);
- each kernel once more through its pure-torch reference (``--reference``, on
  by default for ``d ≤ 25M``).

Prints a table (ms, GB/s of input read, × vs the baseline, fraction of memcpy
throughput) and writes JSON (default ``benchmarks/results/kernels.json``).

Usage::

    python benchmarks/kernels.py [--sizes 1000000 25000000 100000000] [--threads 2] [--repeats 5] [--out PATH]
    python benchmarks/kernels.py --quick   # smoke run: d = 1M, sketches at 2**20, 3 repeats
    python benchmarks/kernels.py --groups finite --out benchmarks/results/kernels_finite.json  # some groups only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

import commlib.ops as ops
from commlib.ops import reference

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "kernels.json"
GROUPS = ("copy", "topk", "ef", "econtrol", "pack", "qsgd", "finite", "sketch")


@dataclass
class Case:
    """One timed operation: its group (what it is compared with), name, callable and bytes of input it reads."""

    group: str
    name: str
    fn: Callable[[], object]
    input_bytes: int
    baseline: str
    memcpy: str = "memcpy (float32)"
    fresh_memcpy: str | None = None  # for ops that allocate their output: a copy into a new tensor, as they do
    times: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def run_interleaved(cases: list[Case], repeats: int) -> None:
    """Warm every case up once, then ``repeats`` rounds that each time every case once, in order."""
    for case in cases:
        case.fn()
    for _ in range(repeats):
        for case in cases:
            start = time.perf_counter()
            case.fn()
            case.times.append(time.perf_counter() - start)


def check_outputs(x: Tensor, k: int) -> None:
    """Every kernel equals its reference on ``x`` before anything is timed."""
    v, i = ops.topk_magnitude(x, k)
    rv, ri = reference.topk_magnitude(x, k)
    assert torch.equal(i, ri) and torch.equal(v, rv), "topk_magnitude differs from the reference"
    tv, ti = ops.topk_threshold(x, k)
    assert torch.equal(ti, ri) and torch.equal(tv, rv), "topk_threshold differs from the reference"
    scales, packed = ops.qsgd_encode(x, 128, 7, 4, False, 1)
    ref_scales, ref_packed = reference.qsgd_encode(x, 128, 7, 4, False, 1)
    assert torch.allclose(scales, ref_scales, rtol=1e-6, atol=0), "qsgd scales differ from the reference"
    same = scales == ref_scales
    if bool(same.all()):
        assert torch.equal(packed, ref_packed), "qsgd codes differ from the reference"


def size_cases(d: int, with_reference: bool, seed: int) -> list[Case]:
    """The top-k, packing and QSGD cases at size ``d``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(d, generator=gen)
    y = torch.empty_like(x)
    k = max(1, d // 100)
    check_outputs(x, k)
    fbytes = 4 * d
    cases = [
        Case("copy", "memcpy (float32)", lambda: y.copy_(x), fbytes, "memcpy (float32)"),
        Case("topk", "torch.topk(|x|)", lambda: torch.topk(x.abs(), k), fbytes, "torch.topk(|x|)"),
        Case("topk", "topk exact (radix)", lambda: ops.topk_magnitude(x, k), fbytes, "torch.topk(|x|)"),
        Case("topk", "topk threshold", lambda: ops.topk_threshold(x, k), fbytes, "torch.topk(|x|)"),
    ]
    if with_reference:
        cases.append(Case("topk", "topk reference", lambda: reference.topk_magnitude(x, k), fbytes, "torch.topk(|x|)"))
    cases += ef_topk_cases(x, k, fbytes)
    cases += econtrol_cases(x, k, fbytes, seed)
    codes = torch.randint(0, 2, (d,), dtype=torch.uint8, generator=gen)
    code_copy = torch.empty_like(codes)
    cases.append(Case("copy", "memcpy (uint8 codes)", lambda: code_copy.copy_(codes), d, "memcpy (uint8 codes)",
                      "memcpy (uint8 codes)"))
    fresh = "memcpy into a new tensor (uint8 codes)"
    cases.append(Case("copy", fresh, lambda: codes.clone(), d, fresh, fresh))
    for bits in (1, 2, 4, 8):
        c = torch.randint(0, 2**bits, (d,), dtype=torch.uint8, generator=gen)
        p = ops.pack_bits(c, bits)
        codes_copy = "memcpy (uint8 codes)"
        cases.append(Case("pack", f"pack {bits}-bit", lambda c=c, b=bits: ops.pack_bits(c, b), d, codes_copy,
                          codes_copy))
        cases.append(Case("pack", f"unpack {bits}-bit", lambda p=p, b=bits: ops.unpack_bits(p, b, d), d, codes_copy,
                          codes_copy, fresh))
        if with_reference:
            cases.append(Case("pack", f"pack {bits}-bit reference", lambda c=c, b=bits: reference.pack_bits(c, b), d,
                              codes_copy, codes_copy))
    scales, packed = ops.qsgd_encode(x, 128, 7, 4, False, 1)
    out = torch.zeros_like(x)
    cases += [
        Case("qsgd", "qsgd encode 4-bit", lambda: ops.qsgd_encode(x, 128, 7, 4, False, 1), fbytes,
             "memcpy (float32)"),
        Case("qsgd", "qsgd decode-add 4-bit", lambda: ops.qsgd_decode_add(out, scales, packed, 128, 7, 4), fbytes,
             "memcpy (float32)"),
        Case("qsgd", "qsgd check 4-bit (no decode)", lambda: ops.qsgd_check(scales, packed, d, 128, 7, 4), fbytes,
             "qsgd decode-add 4-bit"),
    ]
    if with_reference:
        cases.append(Case("qsgd", "qsgd encode reference", lambda: reference.qsgd_encode(x, 128, 7, 4, False, 1),
                          fbytes, "memcpy (float32)"))
    aminmax = "all_finite reference (aminmax)"
    cases += [
        Case("finite", aminmax, lambda: reference.all_finite(x), fbytes, aminmax),
        Case("finite", "all_finite kernel", lambda: ops.all_finite(x), fbytes, aminmax),
        Case("finite", "torch.isfinite(x).all()", lambda: bool(torch.isfinite(x).all()), fbytes, aminmax),
    ]
    return cases


def unfused_ef_topk(e: Tensor, g: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The EF14 step that :func:`commlib.ops.ef_topk_` fuses: ``e += g``; top-k of ``e``; zero those entries."""
    e.add_(g)
    values, indices = ops.topk_threshold(e, k)
    e.index_fill_(0, indices.long(), 0.0)
    return values, indices


def ef_topk_cases(g: Tensor, k: int, fbytes: int) -> list[Case]:
    """Fused vs unfused error-feedback top-k; both start from equal residuals, checked equal after one step."""
    e_fused, e_unfused = torch.zeros_like(g), torch.zeros_like(g)
    fused, plain = ops.ef_topk_(e_fused, g, k), unfused_ef_topk(e_unfused, g, k)
    assert all(torch.equal(a, b) for a, b in zip(fused, plain)), "ef_topk_ differs from the unfused step"
    assert torch.equal(e_fused, e_unfused), "ef_topk_ leaves another residual than the unfused step"
    unfused_name = "ef top-k unfused (add+topk+fill)"
    return [
        Case("ef", unfused_name, lambda: unfused_ef_topk(e_unfused, g, k), fbytes, unfused_name),
        Case("ef", "ef top-k fused (ef_topk_)", lambda: ops.ef_topk_(e_fused, g, k), fbytes, unfused_name),
    ]


def econtrol_cases(g: Tensor, k: int, fbytes: int, seed: int, ranks: int = 4) -> list[Case]:
    """EControl's message, commit and mean update: kernels vs the torch ops they replace (checked equal first)."""
    gen = torch.Generator().manual_seed(seed + 1)
    d = g.numel()
    h, e, work = torch.randn(d, generator=gen), torch.randn(d, generator=gen), torch.empty(d)
    idx = torch.randperm(d, generator=gen)[:k].sort().values
    vals = torch.randn(k, generator=gen)
    rows = torch.stack([torch.randperm(d, generator=gen)[:k].sort().values for _ in range(ranks)]).int()
    row_vals = torch.randn(rows.shape, generator=gen)

    def message_torch() -> Tensor:  # as EControl wrote it before the kernel (torch fuses η·e + d in its vector loop)
        return torch.sub(g, h, out=work).add_(e, alpha=0.005)

    def commit_torch(e_: Tensor, h_: Tensor) -> None:
        diff = torch.sub(g, h_, out=work)
        diff.index_add_(0, idx, vals.neg())
        e_.add_(diff)
        h_.index_add_(0, idx, vals)

    def mean_dense(h_: Tensor) -> None:
        mean = torch.zeros(d)
        for r in range(ranks):
            mean[rows[r].long()] += row_vals[r]
        h_.add_(mean.div_(ranks))

    def mean_sparse(h_: Tensor) -> None:
        union, mean = ops.sparse_mean_rows(rows, row_vals, ranks)
        h_.index_add_(0, union, mean)

    kernel_message = ops.econtrol_message(g, h, e, 0.005, torch.empty(d))
    assert torch.equal(kernel_message, reference.econtrol_message(g, h, e, 0.005, torch.empty(d))), "message differs"
    assert torch.allclose(message_torch(), kernel_message, rtol=1e-6, atol=1e-7), "message differs from torch's"
    pairs = [(e.clone(), h.clone()) for _ in range(2)]
    commit_torch(*pairs[0])
    ops.econtrol_commit_(*pairs[1], g, idx, vals)
    assert all(torch.equal(a, b) for a, b in zip(*pairs)), "econtrol_commit_ differs from the torch ops"
    h_dense, h_sparse = h.clone(), h.clone()
    mean_dense(h_dense)
    mean_sparse(h_sparse)
    assert torch.equal(h_dense, h_sparse), "sparse mean differs from the dense decode"
    e_t, h_t, e_k, h_k = e.clone(), h.clone(), e.clone(), h.clone()
    msg, com, mean = "econtrol message (torch ops)", "econtrol commit (torch ops)", f"mean of {ranks}, dense + h.add_"
    return [
        Case("econtrol", msg, message_torch, fbytes, msg),
        Case("econtrol", "econtrol message kernel", lambda: ops.econtrol_message(g, h, e, 0.005, work), fbytes, msg),
        Case("econtrol", com, lambda: commit_torch(e_t, h_t), fbytes, com),
        Case("econtrol", "econtrol commit kernel", lambda: ops.econtrol_commit_(e_k, h_k, g, idx, vals), fbytes, com),
        Case("econtrol", mean, lambda: mean_dense(h_dense), fbytes, mean),
        Case("econtrol", f"mean of {ranks}, sparse_mean_rows + index_add_", lambda: mean_sparse(h_sparse), fbytes,
             mean),
    ]


def sketch_cases(d: int, with_reference: bool, seed: int) -> list[Case]:
    """Count sketch and block SRHT at size ``d``."""
    x = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    y = torch.empty_like(x)
    fbytes = 4 * d
    cases = [Case("copy", "memcpy (float32)", lambda: y.copy_(x), fbytes, "memcpy (float32)")]
    scatter_row = torch.zeros(d // 100)
    scatter_buckets = torch.randint(0, d // 100, (d,), generator=torch.Generator().manual_seed(seed + 1))
    cases.append(Case("sketch", "scatter floor: index_add_ (1 row)",
                      lambda: scatter_row.index_add_(0, scatter_buckets, x), fbytes, "memcpy (float32)"))
    fresh = "fresh memcpy (float32)"
    cases.append(Case("copy", fresh, lambda: x.clone(), fbytes, "memcpy (float32)"))
    for rows in (1, 5):
        table = torch.zeros(rows, d // 100)
        cases.append(Case("sketch", f"count sketch add ({rows} rows)",
                          lambda t=table: ops.count_sketch_add_(t, x, 3, 0), fbytes, "memcpy (float32)"))
        cases.append(Case("sketch", f"count unsketch ({rows} rows)",
                          lambda t=table: ops.count_unsketch(t, 3, 0, d), fbytes, "memcpy (float32)",
                          fresh_memcpy=fresh))
        cases.append(Case("sketch", f"count unsketch into out ({rows} rows)",
                          lambda t=table: ops.count_unsketch(t, 3, 0, d, out=y), fbytes,
                          f"count unsketch ({rows} rows)"))
    block = 4096
    rows = torch.randperm(block, generator=torch.Generator().manual_seed(seed))[: block // 20]
    coeffs = ops.srht(x, block, rows, 3)
    assert torch.equal(coeffs, reference.srht(x, block, rows, 3)), "srht differs from the reference"
    cases += [
        Case("sketch", "srht (block 4096, s=d/20)", lambda: ops.srht(x, block, rows, 3), fbytes,
             "memcpy (float32)"),
        Case("sketch", "srht transpose", lambda: ops.srht_transpose(coeffs, block, rows, d, 3), fbytes,
             "memcpy (float32)", fresh_memcpy=fresh),
        Case("sketch", "srht transpose into out", lambda: ops.srht_transpose(coeffs, block, rows, d, 3, out=y),
             fbytes, "srht transpose"),
    ]
    if with_reference:
        ref_table = torch.zeros(1, d // 100)
        cases += [
            Case("sketch", "count sketch reference (1 row)", lambda: reference.count_sketch_add_(ref_table, x, 3, 0),
                 fbytes, "memcpy (float32)"),
            Case("sketch", "srht reference", lambda: reference.srht(x, block, rows, 3), fbytes, "memcpy (float32)"),
        ]
    return cases


def summarize(d: int, cases: list[Case]) -> list[dict]:
    """One row per case: median ms, GB/s of input, speed-up over its baseline, fraction of memcpy throughput."""
    by_name = {c.name: c for c in cases}

    def fresh_fraction(c: Case) -> dict:
        if c.fresh_memcpy is None:
            return {}
        return {"fraction_of_fresh_memcpy": round(by_name[c.fresh_memcpy].seconds / c.seconds, 3)}

    return [
        {
            "d": d,
            "group": c.group,
            "case": c.name,
            "ms": round(1e3 * c.seconds, 3),
            "gb_per_s": round(c.input_bytes / c.seconds / 1e9, 2),
            "baseline": c.baseline,
            "speedup_vs_baseline": round(by_name[c.baseline].seconds / c.seconds, 2),
            "fraction_of_memcpy": round(by_name[c.memcpy].seconds / c.seconds, 3),
            **fresh_fraction(c),
            "times_ms": [round(1e3 * t, 3) for t in c.times],
        }
        for c in cases
    ]


def print_table(rows: list[dict]) -> None:
    print(f"{'d':>11} {'case':34} {'ms':>10} {'GB/s':>7} {'× baseline':>11} {'of memcpy':>10}  baseline")
    for r in rows:
        print(f"{r['d']:>11} {r['case']:34} {r['ms']:>10.2f} {r['gb_per_s']:>7.2f} {r['speedup_vs_baseline']:>10.2f}× "
              f"{r['fraction_of_memcpy']:>10.2f}  {r['baseline']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 25_000_000, 100_000_000])
    parser.add_argument("--sketch-d", type=int, default=2**24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-max-d", type=int, default=25_000_000,
                        help="time the pure-torch references only up to this size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="smoke run: d = 1M, sketches at 2**20, 3 repeats")
    parser.add_argument("--groups", nargs="+", choices=GROUPS, default=list(GROUPS),
                        help="time only these groups (memcpy always runs: every fraction needs it)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.sketch_d, args.repeats = [1_000_000], 2**20, 3
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows: list[dict] = []
    wanted = set(args.groups) | {"copy"}
    for d in args.sizes:
        if wanted <= {"copy", "sketch"}:
            break
        cases = [c for c in size_cases(d, d <= args.reference_max_d, args.seed) if c.group in wanted]
        run_interleaved(cases, args.repeats if d <= 25_000_000 else max(2, args.repeats // 2))
        rows += summarize(d, cases)
        del cases
    if "sketch" in wanted:
        cases = sketch_cases(args.sketch_d, True, args.seed)
        run_interleaved(cases, args.repeats)
        rows += summarize(args.sketch_d, cases)
    print_table(rows)
    report = {
        "benchmark": "kernels",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "backend": ops.backend(),
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": os.getloadavg()[0],
        "unit": "milliseconds, median of interleaved repeats",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
