"""Run under ``mpiexec -n N``: every request kind and real compressors through the MPI driver.

Each rank also replays all ranks' protocols with the local driver and checks
that the MPI results are bitwise equal; it prints ``MPI-OK <rank>`` on success.
"""

from __future__ import annotations

import sys

import torch
from mpi4py import MPI

from commlib.comm import mpi_driver
from commlib.comm.collectives import AllGather, AllReduce, Broadcast
from commlib.comm.exchange import GradientExchange
from commlib.comm.local import run_lockstep
from commlib.compress import TopK


def program(rank: int, world: int):
    x = torch.randn(7, generator=torch.Generator().manual_seed(rank))
    total = yield AllReduce(x)
    stacked, root = yield (AllGather(x.to(torch.bfloat16)), Broadcast(x, src=world - 1))
    exchange = GradientExchange(TopK(density=0.2), rank, world)
    grads = [("w", torch.randn(32, 16, generator=torch.Generator().manual_seed(10 + rank))), ("b", x)]
    means, _ = yield from exchange.protocol(grads, step=5)
    return [total, stacked, root, *means]


def main() -> None:
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    ours = mpi_driver.run(program(rank, world), comm)
    expected = run_lockstep([program(r, world) for r in range(world)])[rank]
    for a, b in zip(ours, expected):
        if not torch.equal(a, b):
            print(f"MPI-MISMATCH {rank}", flush=True)
            sys.exit(1)
    print(f"MPI-OK {rank}", flush=True)


if __name__ == "__main__":
    main()
