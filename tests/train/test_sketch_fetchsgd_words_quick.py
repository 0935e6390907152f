"""``benchmarks/sketch_fetchsgd_words.py --quick``: every method trains and sends the bytes of s = d/20."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METHODS = ["uncompressed fp32", "srht unbiased", "countsketch unbiased", "FetchSGD per tensor", "FetchSGD model-wide",
           "FetchSGD per tensor, 1 row, k = cols", "FetchSGD per tensor, 1 row, k = cols/4",
           "2 rounds (Sketched-SGD), 1 row, k = s/2", "2 rounds (Sketched-SGD), 5 rows, k = s/2", "top-k + EF14"]


def test_quick_run_prints_every_method_at_equal_bytes():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sketch_fetchsgd_words.py"), "--quick"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {cells[0]: cells for line in done.stdout.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]] if cells[0] in METHODS}
    assert list(rows) == METHODS
    assert all(cells[-1] == "0/2" for cells in rows.values())  # nothing diverged, 2 seeds each
    sent = {name: int(cells[6].replace(",", "")) for name, cells in rows.items()}
    d = int(re.search(r"d = ([\d,]+), embedding table", done.stdout).group(1).replace(",", ""))
    assert sent["uncompressed fp32"] == 4 * d
    assert all(abs(sent[name] / (4 * d / 20) - 1) < 0.01 for name in METHODS[1:])  # equal bytes, within 1%
