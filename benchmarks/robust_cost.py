"""Cost of robust aggregation: time and peak memory vs n and d — Flag in Gram form vs Flag by SVD, Krum, median.

Setup
-----
For every n ∈ {8, 16, 32, 64} and d ∈ {10⁵, 10⁶, 10⁷} (``--quick``: n ∈ {8, 16}, d ∈ {10⁵, 10⁶})
and every method, a fresh subprocess (``--threads`` intra-op threads, default 1: the machine is
shared, and one thread gives stable numbers) draws X ~ N(0, 1), n × d fp32, from a seeded
generator and aggregates it:

* ``flag_gram`` — ``FlagAggregator(m=n//2, max_iter=1)``: one n × n Gram product (O(d·n²)),
  an n × n eigendecomposition, and the weighted sum of the rows. Further IRLS steps or λ > 0
  add only O(n³) each (``flag_gram_irls``: ``max_iter=10``, ``lam=1``).
* ``flag_svd`` — the authors' direct form (one step, λ = 0): normalize the rows (a copy), thin
  SVD of the d × n matrix, output ``(1/m)·U_m U_mᵀ Σ x̂ᵢ``. With λ > 0 it would need the SVD of a
  d × n² matrix (n = 16, d = 10⁷: 10 GB in fp32); not run.
* ``krum`` — ``Krum(f=(n−3)//2)`` (Gram product, scores, one row), ``median`` —
  ``CoordinateMedian()`` (columns sorted in chunks).

Time: the first call (cold) and then up to 5 more calls within ~20 s; we report the fastest
warm call (the cold one if there is none): the machine is shared, and the minimum is the
figure least disturbed by other processes; a call on an n × 1000 matrix first does the
libraries' lazy initialization. Peak memory: the increase of the process's
peak resident set during the first call, ``getrusage(RUSAGE_SELF).ru_maxrss`` after the call
minus the resident set just before it (``/proc/self/statm``). It counts every byte the call
touched (torch allocator, LAPACK workspace), not the input X. If the call needs less than the
process's earlier high-water mark minus its current resident set (the "floor" field), the
value is that floor: an upper bound. The kernel syncs its RSS counters lazily, so the
resolution is about 1 MiB (negative differences are reported as 0). A cell is skipped when the input plus the method's
estimated extra memory exceeds ``--max-gb`` (3 GB); the skips are printed.

Written to ``benchmarks/results/robust_cost.json``. Run:
``PYTHONPATH=. python benchmarks/robust_cost.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("flag_gram", "flag_gram_irls", "flag_svd", "krum", "median")


def extra_bytes(method: str, n: int, d: int) -> int:
    """Estimated memory beyond the input: the SVD route copies X about three times (normalized rows, LAPACK's
    copy, U); the others need O(n² + d) or one column chunk."""
    return 3 * 4 * n * d if method == "flag_svd" else 4 * d + 64 * n * n + (1 << 26)


def flag_svd(X, m: int):
    import torch

    Xh = X / torch.linalg.vector_norm(X, dim=1, keepdim=True)
    U = torch.linalg.svd(Xh.T, full_matrices=False)[0][:, :m]
    return U @ (U.T @ Xh.sum(dim=0)) / m


def worker(method: str, n: int, d: int, threads: int) -> None:
    """Runs in a subprocess: prints one JSON line."""
    import torch

    from commlib.robust import CoordinateMedian, FlagAggregator, Krum

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(n * 1000 + d % 997)
    X = torch.randn(n, d, generator=gen)
    fn = {
        "flag_gram": FlagAggregator(m=n // 2, max_iter=1),
        "flag_gram_irls": FlagAggregator(m=n // 2, max_iter=10, lam=1.0),
        "flag_svd": lambda Z: flag_svd(Z, n // 2),
        "krum": Krum((n - 3) // 2),
        "median": CoordinateMedian(),
    }[method]
    fn(torch.randn(n, 1000, generator=gen))  # lazy library initialization happens here, not in the measurement
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as fh:
        rss_before = int(fh.read().split()[1]) * page
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    out = fn(X)
    cold = time.perf_counter() - t0
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    warm: list[float] = []
    budget = time.perf_counter() + 20.0
    while len(warm) < 5 and time.perf_counter() + cold < budget:
        t0 = time.perf_counter()
        fn(X)
        warm.append(time.perf_counter() - t0)
    row = {"method": method, "n": n, "d": d, "cold_s": cold, "warm_s": warm,
           "seconds": min(warm) if warm else cold,
           "peak_extra_bytes": max(peak_after - rss_before, 0), "floor_bytes": max(peak_before - rss_before, 0),
           "input_bytes": X.numel() * 4, "out_norm": float(out.norm())}
    if method == "flag_gram" and d <= 10**6:
        row["max_abs_diff_vs_svd"] = float((out - flag_svd(X, n // 2)).abs().max())
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n in {8, 16}, d in {1e5, 1e6}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-gb", type=float, default=3.0)
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "N", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]), args.threads)
        return

    ns = (8, 16) if args.quick else (8, 16, 32, 64)
    ds = (10**5, 10**6) if args.quick else (10**5, 10**6, 10**7)
    rows, skipped = [], []
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    for d in ds:
        for n in ns:
            for method in METHODS:
                need = 4 * n * d + extra_bytes(method, n, d)
                if need > args.max_gb * 2**30:
                    skipped.append({"method": method, "n": n, "d": d, "estimated_gb": need / 2**30})
                    print(f"skip {method:15s} n={n:3d} d={d:.0e}: estimated {need / 2**30:.1f} GB > {args.max_gb} GB",
                          flush=True)
                    continue
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--worker", method, str(n), str(d)]
                res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{method:15s} n={n:3d} d={d:.0e}: {r['seconds'] * 1e3:10.1f} ms, "
                      f"peak +{r['peak_extra_bytes'] / 2**20:8.1f} MiB (floor {r['floor_bytes'] / 2**20:.0f})",
                      flush=True)

    by = {(r["method"], r["n"], r["d"]): r for r in rows}

    def cell(method: str, n: int, d: int, key: str, scale: float, fmt: str) -> str:
        r = by.get((method, n, d))
        return format(r[key] * scale, fmt) if r else "skip"

    print(f"\ntime (ms, {args.threads} thread(s)) and peak memory beyond the input (MiB)")
    header = (f"{'n':>3} {'d':>6} | {'gram':>9} {'gram+irls':>9} {'svd':>9} {'svd/gram':>8} {'krum':>9} "
              f"{'median':>9} | {'gram MiB':>8} {'svd MiB':>8} {'krum MiB':>8} {'med MiB':>8}")
    print(header)
    print("-" * len(header))
    for d in ds:
        for n in ns:
            g, s = by.get(("flag_gram", n, d)), by.get(("flag_svd", n, d))
            ratio = f"{s['seconds'] / g['seconds']:8.1f}" if g and s else f"{'-':>8}"
            times = [cell(m, n, d, "seconds", 1e3, "9.1f") for m in ("flag_gram", "flag_gram_irls", "flag_svd")]
            more = [cell(m, n, d, "seconds", 1e3, "9.1f") for m in ("krum", "median")]
            mem = [cell(m, n, d, "peak_extra_bytes", 2**-20, "8.1f")
                   for m in ("flag_gram", "flag_svd", "krum", "median")]
            print(f"{n:>3} {d:>6.0e} | {' '.join(times)} {ratio} {' '.join(more)} | {' '.join(mem)}")
    RESULTS.mkdir(exist_ok=True)
    setup = {"threads": args.threads, "dtype": "float32", "max_gb": args.max_gb, "quick": args.quick,
             "flag": "m = n // 2; gram: max_iter=1 (flag mean); gram_irls: max_iter=10, lam=1",
             "krum_f": "(n - 3) // 2",
             "time": "fastest of up to 5 warm calls within ~20 s after a cold call (cold if none)",
             "memory": "ru_maxrss after the first call minus /proc/self/statm RSS before it; fresh process per cell; "
                       "floor = earlier high-water mark minus RSS before (values at the floor are upper bounds)"}
    (RESULTS / "robust_cost.json").write_text(json.dumps({"setup": setup, "rows": rows, "skipped": skipped},
                                                         indent=1) + "\n")
    print(f"wrote {RESULTS / 'robust_cost.json'}")


if __name__ == "__main__":
    main()
