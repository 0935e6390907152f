"""AllToAll programs shared by the gloo test (spawned workers) and the MPI test (run as ``mpiexec -n N python this``).

Under mpiexec every rank runs :func:`program` through the MPI driver, replays all
ranks' programs with the local driver, and prints ``A2A-OK <rank>`` when the
results are bitwise equal (``A2A-MISMATCH <rank>`` otherwise).
"""

from __future__ import annotations

import sys

import torch

from commlib.comm.collectives import AllReduce, AllToAll


def rank_tensor(rank: int, world: int, dtype: torch.dtype) -> torch.Tensor:
    """``(world, 3, 2)`` values that name their sender, block and position: 100·rank + 10·block + position."""
    block = torch.arange(world, dtype=torch.float64)[:, None, None] * 10
    position = torch.arange(6, dtype=torch.float64).reshape(1, 3, 2)
    return (100.0 * rank + block + position).to(dtype)


def program(rank: int, world: int):
    """Two AllToAlls (fp32, then bf16 in one round with an ordered all-reduce), then one of random data."""
    first = yield AllToAll(rank_tensor(rank, world, torch.float32))
    second, total = yield (AllToAll(rank_tensor(rank, world, torch.bfloat16)), AllReduce(torch.ones(2) * rank))
    noise = torch.randn(world, 1000, generator=torch.Generator().manual_seed(rank))
    third = yield AllToAll(noise)
    return [first, second, total, third]


def gloo_program(rank: int, world: int) -> list:
    from commlib.comm import torch_driver

    return torch_driver.run(program(rank, world))


def gloo_wrong_shape(rank: int, world: int) -> str:
    """A leading dimension other than the world size is refused before anything is sent."""
    from commlib.comm import torch_driver

    def bad():
        yield AllToAll(torch.zeros(world + 1, 2))

    try:
        torch_driver.run(bad())
    except ValueError as exc:
        return str(exc)
    return "no error"


def main() -> None:
    from mpi4py import MPI

    from commlib.comm import mpi_driver
    from commlib.comm.local import run_lockstep

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    ours = mpi_driver.run(program(rank, world), comm)
    expected = run_lockstep([program(r, world) for r in range(world)])[rank]
    same = all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(ours, expected))
    print(f"A2A-{'OK' if same else 'MISMATCH'} {rank}", flush=True)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
