"""``python -m commlib.coded.train``: coded data-parallel training of a digits MLP, one master and n workers.

Launch n + 1 processes; rank 0 is the master, ranks 1..n the workers::

    torchrun --standalone --nproc-per-node=5 -m commlib.coded.train --scheme gc:1 --stragglers worker:3
    mpiexec -n 5 python -m commlib.coded.train --scheme m-sgc:1,2,2 --stragglers gilbert-elliott:0.1,0.5

The transport is gloo under ``torchrun`` and MPI under ``mpiexec`` (``--transport`` overrides).
Stragglers are injected by sleeping (``--stragglers`` spec, ``--straggler-delay`` seconds for a
straggling round) or come naturally. The master prints a summary: round times, stragglers,
wait-outs, late and faulty messages, every replica's test accuracy (``--json`` writes it all).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..coding import CODE_KINDS, Scheme, make_scheme
from ..coding.stragglers import FALLBACKS, Cutoff
from ..train.data import Dataset, load_digits
from ..train.models import mlp
from .injector import STRAGGLER_SPECS, StragglerInjector, straggler_trace
from .learner import Learner
from .master import CodedMaster, MasterReport
from .transport import GlooTransport, MpiTransport, Transport
from .worker import CodedWorker, WorkerReport

__all__ = ["build_parser", "make_transport", "Setup", "setup", "accuracy", "run", "main"]

_MPI_ENV = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m commlib.coded.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scheme", default="gc:1", help="none | gc:S | sr-sgc:B,W,LAMBDA | m-sgc:B,W,LAMBDA (default gc:1)")
    p.add_argument("--code", choices=CODE_KINDS, default="frc", help="gradient code (default frc)")
    p.add_argument("--jobs", type=int, default=40, help="jobs (optimizer steps over all replicas; default 40)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per job (default: the smallest multiple of the scheme's units >= 64)")
    p.add_argument("--lr", type=float, default=0.3, help="SGD step size (default 0.3)")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default 0)")
    p.add_argument("--hidden", type=int, default=32, help="MLP hidden width (default 32)")
    p.add_argument("--depth", type=int, default=1, help="MLP hidden layers (default 1)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="models and payloads")
    p.add_argument("--mu", type=float, default=1.0, help="cutoff (1 + mu) x the fastest worker (default 1)")
    p.add_argument("--deadline", type=float, default=None, help="fixed cutoff in seconds instead of mu")
    p.add_argument("--fallback", choices=FALLBACKS, default="wait-all",
                   help="when the stragglers break the scheme's model (default wait-all)")
    p.add_argument("--stragglers", default="none", help=f"injected stragglers: {' | '.join(STRAGGLER_SPECS)}")
    p.add_argument("--straggler-delay", type=float, default=0.5, help="seconds a straggling round lasts")
    p.add_argument("--base-delay", type=float, default=0.0, help="seconds every other round lasts at least")
    p.add_argument("--check", action="store_true", help="master checks every decode against the full gradient")
    p.add_argument("--seed", type=int, default=0, help="data split, batches, replicas' init, injected stragglers")
    p.add_argument("--transport", choices=("auto", "gloo", "mpi"), default="auto")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds any single wait may take")
    p.add_argument("--json", type=Path, default=None, help="master: write the report here")
    return p


def make_transport(kind: str, timeout: float) -> Transport:
    """MPI under ``mpiexec``, gloo otherwise (initialising the default process group from torchrun's env)."""
    if kind == "auto":
        kind = "mpi" if any(k in os.environ for k in _MPI_ENV) else "gloo"
    if kind == "mpi":
        return MpiTransport()
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise SystemExit("commlib.coded.train: launch with torchrun (gloo) or mpiexec (MPI), n + 1 processes")
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout))
    return GlooTransport()


def accuracy(model: torch.nn.Module, data: Dataset) -> float:
    """Test accuracy of ``model`` (in its own dtype)."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        return float((model(data.x_test.to(dtype)).argmax(1) == data.y_test).float().mean())


@dataclass(frozen=True)
class Setup:
    """What every rank builds identically from the flags."""

    scheme: Scheme
    learner: Learner
    data: Dataset
    config: dict[str, object]


def setup(args: argparse.Namespace, n: int, data: Dataset | None = None) -> Setup:
    """The scheme over ``n`` workers, the data (default: digits split by ``args.seed``) and the learner."""
    scheme = make_scheme(args.scheme, n, args.jobs, code=args.code, seed=args.seed)
    data = load_digits(seed=args.seed) if data is None else data
    dtype = getattr(torch, args.dtype)
    units = scheme.units_per_job
    batch = args.batch_size or units * -(-64 // units)
    learner = Learner(lambda k: mlp(data.features, data.classes, args.hidden, args.depth, seed=args.seed + k).to(dtype),
                      data.x_train.to(dtype), data.y_train, batch_size=batch, copies=scheme.delay + 1, units=units,
                      lr=args.lr, momentum=args.momentum, seed=args.seed)
    config = {"lr": args.lr, "momentum": args.momentum, "hidden": args.hidden, "depth": args.depth}
    return Setup(scheme, learner, data, config)


def run(args: argparse.Namespace, transport: Transport, data: Dataset | None = None) -> MasterReport | WorkerReport:
    """Build everything from ``args`` (and ``data``, see :func:`setup`) and run this rank's role.

    The master also prints a summary and writes ``--json``.
    """
    n = transport.world - 1
    if n < 1:
        raise SystemExit("commlib.coded.train needs at least 2 processes (a master and a worker)")
    built = setup(args, n, data)
    scheme, learner, data = built.scheme, built.learner, built.data
    common = dict(timeout=args.timeout, config=built.config)
    if transport.rank > 0:
        trace = straggler_trace(args.stragglers, scheme.rounds, n, seed=args.seed, fast=args.base_delay,
                                slow=args.straggler_delay)
        injector = StragglerInjector(trace) if trace.base.any() else None
        return CodedWorker(transport, scheme, learner, injector=injector, **common).run()
    cutoff = Cutoff(args.mu, args.fallback)
    report = CodedMaster(transport, scheme, learner, cutoff=cutoff, deadline=args.deadline, check=args.check,
                         **common).run()
    summary = report.summary()
    summary.update(transport=transport.name, batch_size=learner.batch_size, straggler_spec=args.stragglers,
                   accuracy=[accuracy(m, data) for m in learner.models],
                   late_per_worker=report.late.tolist(), faulty_per_worker=report.faulty.tolist(),
                   round_seconds=report.round_seconds.tolist(), durations=report.run.durations.tolist(),
                   straggler_rounds=report.run.stragglers.sum(axis=0).tolist(),
                   rel_errors={str(k): v for k, v in report.rel_errors.items()})
    print(f"{scheme.label} over {n} workers ({transport.name}), {scheme.jobs} jobs in {report.run.rounds} rounds: "
          f"median round {summary['median_round'] * 1e3:.1f} ms (max {summary['max_round'] * 1e3:.1f} ms), "
          f"{summary['mean_stragglers']:.2f} stragglers/round, {summary['wait_outs']} wait-outs, "
          f"{summary['late']} late and {summary['faulty']} faulty messages dropped, missed jobs {summary['missed']}")
    print(f"test accuracy per replica: {', '.join(f'{a:.3f}' for a in summary['accuracy'])}"
          + (f"; max decode error {summary['max_rel_error']:.2e}" if args.check else ""))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1, default=float))
    return report


def main(argv: list[str] | None = None) -> int:
    """The entry point: parse ``argv``, join the launcher's processes, run this rank's role."""
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ours = not dist.is_initialized()
    transport = make_transport(args.transport, args.timeout)
    try:
        n = transport.world - 1
        try:  # bad flags: every rank exits with the usage line instead of a traceback
            make_scheme(args.scheme, max(1, n), args.jobs, code=args.code, seed=args.seed)
            straggler_trace(args.stragglers, 1, max(1, n))
            Cutoff(args.mu, args.fallback)
        except ValueError as exc:
            parser.error(str(exc))
        run(args, transport)
    finally:
        if ours and isinstance(transport, GlooTransport):
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

