"""Every example runs briefly (torchrun ones on 2 local ranks) and prints what its docstring promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], timeout: float = 240) -> str:
    """Run ``args`` from the repository root; fail with the output on a non-zero exit."""
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def torchrun(script: str, *args: str) -> str:
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                f"examples/{script}", *args])


def test_every_hook_registers_and_trains():
    out = torchrun("ddp_hooks.py", "--hook", "all", "--steps", "4")
    for name in ("fp16", "topk-ef", "qsgd", "powersgd", "sketch", "lgreco"):
        assert f"{name}: accuracy" in out and "ratio" in out.split(f"{name}: accuracy")[1].splitlines()[0]
    assert "flag: accuracy" in out and "4 robust steps" in out


def test_checkpoint_and_resume_repeat_the_uninterrupted_run(tmp_path):
    out = torchrun("checkpoint_resume.py", "--steps", "8", "--ckpt", str(tmp_path / "ckpt"))
    assert "resumed at step 4 of 8" in out and "parameters equal to the uninterrupted run: True" in out


def test_ddp_topk_trains_and_saves_a_weights_only_checkpoint(tmp_path):
    ckpt = tmp_path / "topk.pt"
    out = torchrun("ddp_topk.py", "--steps", "4", "--save", str(ckpt))
    assert "top-k 5%: test accuracy" in out and "4 steps; per step" in out
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 4 and saved["comm"]["step"] == 4 and set(saved) == {"model", "optimizer", "comm", "step"}


@pytest.mark.parametrize("script, args, expected", [
    ("simulate_stragglers.py", ["--workers", "4", "--jobs", "8"], ["none", "gc(1)", "sr-sgc(1,2,1)", "m-sgc(1,2,1)"]),
    ("simulate_byzantine.py", ["--steps", "3", "--honest", "5"], ["mean", "median", "krum", "flag"]),
])
def test_simulation_examples(script, args, expected):
    out = run([sys.executable, f"examples/{script}", *args])
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert list(rows) == expected
    assert all(0.0 < float(cells[-1]) <= 1.0 for cells in rows.values())  # test accuracy
