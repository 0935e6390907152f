"""Run under ``mpiexec -n 5 python coded_mpi_program.py OUT``: the entry point's straggler run, then the faulty run.

``commlib.coded.train.main`` picks MPI by itself under mpiexec and writes ``OUT/exact.json``;
the faulty run (worker 1 corrupts a message per round, including an oversized one) saves
the master's outcome to ``OUT/faulty.pt``. Every rank prints ``CODED-MPI-OK <rank>`` at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from coded_ranks import EXACT, MPI_FAULTS, faulty_run

from commlib.coded import MpiTransport
from commlib.coded.train import main


def program(out: Path) -> None:
    main([*EXACT, "--json", str(out / "exact.json")])
    transport = MpiTransport()
    faulty = faulty_run(transport, MPI_FAULTS)
    if transport.rank == 0:
        torch.save(faulty, out / "faulty.pt")
    print(f"CODED-MPI-OK {transport.rank}", flush=True)


if __name__ == "__main__":
    program(Path(sys.argv[1]))
