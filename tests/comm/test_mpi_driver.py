"""The mpi4py driver, under a real ``mpiexec`` (MPICH from PyPI), with a timeout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.mark.parametrize("world", [2, 3])
def test_mpi_driver_matches_local_driver(world: int) -> None:
    assert MPIEXEC.exists(), "mpiexec not found beside this Python: `make test` installs the mpich wheel"
    program = Path(__file__).with_name("mpi_program.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(MPIEXEC), "-n", str(world), sys.executable, str(program)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ranks share stdout, so lines may interleave: find the markers anywhere
    assert sorted(re.findall(r"MPI-OK (\d+)", proc.stdout)) == [str(r) for r in range(world)], proc.stdout
    assert "MPI-MISMATCH" not in proc.stdout
