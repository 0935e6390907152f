"""Rank programs for the coded runtime's multi-process tests (gloo via ``run_workers``, MPI via ``mpiexec``).

Every scenario runs on the same transport one after the other: each run ends with the
shutdown handshake, so a later run only works if the earlier one left nothing pending.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from commlib.coded import CodedMaster, CodedWorker, MasterReport, Transport, WorkerReport
from commlib.coded.train import accuracy, build_parser, run, setup
from commlib.coding.stragglers import Cutoff
from commlib.train.data import Dataset

SLEEP = 1.5  # seconds worker 3 sleeps in every round it computes
EXACT = ["--scheme", "gc:1", "--jobs", "12", "--stragglers", "worker:3", "--straggler-delay", str(SLEEP),
         "--fallback", "wait-conform", "--check", "--timeout", "60"]
TRAIN = ["--scheme", "m-sgc:1,2,2", "--jobs", "30", "--stragglers", "iid:0.1", "--straggler-delay", "0.3",
         "--fallback", "wait-conform", "--check", "--timeout", "60"]
FAULTY = ["--scheme", "gc:1", "--jobs", "9", "--check", "--timeout", "60"]
FAULTS = {1: "nan", 2: "magic", 3: "impostor", 4: "future", 5: "job", 6: "short"}  # round -> fault of worker 1
MPI_FAULTS = {**FAULTS, 7: "long"}  # an oversized message would abort a gloo receiver (documented)
FAULTY_WORKER = 1


class FaultyWorker(CodedWorker):
    """A worker whose result message of round r is corrupted as ``faults[r]`` says."""

    def __init__(self, *args, faults: dict[int, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.faults = faults

    def _message(self, round, task, gradient) -> Tensor:
        msg = super()._message(round, task, gradient)
        fault = self.faults.get(round)
        if fault == "nan":
            msg[10] = math.nan
        elif fault == "magic":
            msg[0] = 1.0
        elif fault == "impostor":
            msg[3] = (self.worker + 1) % self.scheme.n
        elif fault == "future":
            msg[2] = round + 1
        elif fault == "job":
            msg[5] = task.job + 1
        elif fault == "short":
            msg = msg[:-3].clone()
        elif fault == "long":
            msg = torch.cat([msg, msg[:4]])
        return msg


def outcome(report: MasterReport | WorkerReport) -> dict[str, object]:
    """Plain values of a report (for the test process)."""
    if isinstance(report, WorkerReport):
        return {"worker": report.worker, "computed": report.computed, "skipped": report.skipped,
                "slept": report.slept, "masks": report.scheme_state["masks"]}
    run_ = report.run
    return {"durations": run_.durations, "round_seconds": report.round_seconds, "stragglers": run_.stragglers,
            "wait_outs": run_.wait_outs, "missed": run_.missed, "decode_rate": run_.decode_rate,
            "late": report.late, "faulty": report.faulty, "rel_errors": report.rel_errors,
            "parameters": report.parameters, "masks": report.scheme_state["masks"]}


def faulty_run(transport: Transport, faults: dict[int, str], data: Dataset | None = None) -> dict[str, object]:
    """gc:1 without injected delays; worker 1 corrupts one message per round as ``faults`` says."""
    built = setup(build_parser().parse_args(FAULTY), transport.world - 1, data)
    common = dict(timeout=60.0, config=built.config)
    if transport.rank == 0:
        # mu = 1000: every round waits for every worker it has not written off, so each corrupted message is
        # judged in its own round (a "job" fault arriving a round late would only be late, not faulty)
        master = CodedMaster(transport, built.scheme, built.learner, cutoff=Cutoff(1000.0), check=True, **common)
        return outcome(master.run())
    if transport.rank - 1 == FAULTY_WORKER:
        return outcome(FaultyWorker(transport, built.scheme, built.learner, faults=faults, **common).run())
    return outcome(CodedWorker(transport, built.scheme, built.learner, **common).run())


def gloo_scenarios(rank: int, world: int, data: Dataset) -> dict[str, dict[str, object]]:
    """Run under ``run_workers``: the straggler run, the faulty run and the training run, in that order.

    ``data`` comes from the parent, so the ranks skip importing scikit-learn (seconds on a loaded machine).
    """
    from commlib.coded import GlooTransport

    transport = GlooTransport()
    parse = build_parser().parse_args
    return {"exact": outcome(run(parse(EXACT), transport, data)), "faulty": faulty_run(transport, FAULTS, data),
            "train": outcome(run(parse(TRAIN), transport, data))}


def uncoded_reference(argv: list[str], n: int, data: Dataset) -> tuple[Tensor, list[float]]:
    """Uncoded training on the same batches: every job's full-batch gradient, applied in job order."""
    built = setup(build_parser().parse_args(argv), n, data)
    learner = built.learner
    for job in range(built.scheme.jobs):
        learner.apply(job, learner.full_gradient(job))
    return learner.flat_parameters(), [accuracy(m, built.data) for m in learner.models]


def straggler_rounds(stragglers: np.ndarray, worker: int) -> list[int]:
    return [int(r) for r in np.flatnonzero(stragglers[:, worker])]
