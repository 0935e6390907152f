"""The AllToAll collective: its reference semantics (local driver) and bitwise parity of gloo and MPI with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from comm.all_to_all_workers import gloo_program, gloo_wrong_shape, program, rank_tensor
from dist_utils import run_workers

from commlib.comm.collectives import AllToAll, as_round
from commlib.comm.local import execute_local, run_lockstep
from commlib.errors import ProtocolMismatchError

MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_local_all_to_all_is_a_block_transpose(world: int) -> None:
    """Rank r's row i is what rank i addressed to r: value 100·i + 10·r + position."""
    outs = execute_local([AllToAll(rank_tensor(r, world, torch.float32)) for r in range(world)])
    for r, out in enumerate(outs):
        assert out.shape == (world, 3, 2)
        for i in range(world):
            expected = 100.0 * i + 10.0 * r + torch.arange(6, dtype=torch.float32).reshape(3, 2)
            assert torch.equal(out[i], expected)


def test_all_to_all_twice_is_the_identity() -> None:
    world = 3
    sent = [torch.randn(world, 5, generator=torch.Generator().manual_seed(r)) for r in range(world)]
    back = execute_local([AllToAll(t) for t in execute_local([AllToAll(t) for t in sent])])
    assert all(torch.equal(a, b) for a, b in zip(sent, back))


def test_local_all_to_all_refuses_a_wrong_leading_dimension() -> None:
    with pytest.raises(ValueError, match=r"shape \(world_size=2"):
        execute_local([AllToAll(torch.zeros(3, 4)), AllToAll(torch.zeros(3, 4))])


def test_local_all_to_all_refuses_mismatched_shapes() -> None:
    with pytest.raises(ProtocolMismatchError):
        execute_local([AllToAll(torch.zeros(2, 4)), AllToAll(torch.zeros(2, 5))])


def test_zero_dimensional_all_to_all_is_refused() -> None:
    with pytest.raises(ValueError, match="leading world_size dimension"):
        as_round(AllToAll(torch.tensor(1.0)))


def test_gloo_all_to_all_matches_the_local_driver_bitwise() -> None:
    world = 3
    expected = run_lockstep([program(r, world) for r in range(world)])
    results = run_workers(gloo_program, world, timeout=120)
    for got, want in zip(results, expected):
        for a, b in zip(got, want):
            assert a.dtype == b.dtype
            assert torch.equal(a, b)


def test_gloo_all_to_all_refuses_a_wrong_leading_dimension() -> None:
    for message in run_workers(gloo_wrong_shape, 2, timeout=120):
        assert "world_size=2" in message


def test_mpi_all_to_all_matches_the_local_driver_bitwise() -> None:
    assert MPIEXEC.exists(), "mpiexec not found beside this Python: `make test` installs the mpich wheel"
    program_file = Path(__file__).with_name("all_to_all_workers.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(MPIEXEC), "-n", "3", sys.executable, str(program_file)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(re.findall(r"A2A-OK (\d+)", proc.stdout)) == ["0", "1", "2"], proc.stdout
