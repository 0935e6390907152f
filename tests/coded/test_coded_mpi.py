"""The coded runtime under a real ``mpiexec`` (MPICH from PyPI): 1 master + 4 workers, with a timeout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from coded_ranks import FAULTY_WORKER, MPI_FAULTS, SLEEP, straggler_rounds

MPIEXEC = Path(sys.executable).parent / "mpiexec"
WORLD = 5


@pytest.fixture(scope="module")
def mpi_run(tmp_path_factory) -> Path:
    assert MPIEXEC.exists(), "mpiexec not found beside this Python: `make test` installs the mpich wheel"
    out = tmp_path_factory.mktemp("coded_mpi")
    program = Path(__file__).with_name("coded_mpi_program.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(MPIEXEC), "-n", str(WORLD), sys.executable, str(program), str(out)],
                          capture_output=True, text=True, timeout=200, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(re.findall(r"CODED-MPI-OK (\d+)", proc.stdout)) == [str(r) for r in range(WORLD)], proc.stdout
    return out


def test_mpi_straggler_is_never_waited_for_and_decodes_are_exact(mpi_run: Path) -> None:
    report = json.loads((mpi_run / "exact.json").read_text())
    assert report["transport"] == "mpi" and report["rounds"] == 12 and report["decode_rate"] == 1.0
    assert report["straggler_rounds"][3] == report["rounds"]  # worker 3 missed every cutoff
    assert report["max_round"] < SLEEP / 3 and report["median_round"] < SLEEP / 10, report["durations"]
    assert max(report["rel_errors"].values()) <= 1e-6 and len(report["rel_errors"]) == 12
    assert report["late_per_worker"][3] >= 1 and report["faulty"] == 0


def test_mpi_malformed_payloads_of_any_size_are_counted_and_dropped(mpi_run: Path) -> None:
    master = torch.load(mpi_run / "faulty.pt", weights_only=False)
    assert master["faulty"].tolist() == [0, len(MPI_FAULTS), 0, 0]
    assert set(MPI_FAULTS) <= set(straggler_rounds(master["stragglers"], FAULTY_WORKER))
    assert master["decode_rate"] == 1.0 and max(master["rel_errors"].values()) <= 1e-6
