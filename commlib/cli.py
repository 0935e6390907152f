"""The ``commlib`` command: one entry point, one subcommand per job.

* ``commlib demo`` — four local workers: compression, a straggler, a Byzantine worker; a table and a plot
  (:mod:`commlib.train.demo`);
* ``commlib train`` — the reference trainer under torchrun, mpiexec or ``--spawn N`` (:mod:`commlib.train.trainer`);
* ``commlib simulate`` — the straggler simulator (:mod:`commlib.cli_simulate`);
* ``commlib bench`` — lists and runs the scripts of ``benchmarks/`` (:mod:`commlib.cli_bench`);
* ``commlib report`` — plots JSON-lines training logs (:mod:`commlib.cli_report`);
* ``commlib robust`` — the Byzantine-robust trainer of :mod:`commlib.train.robust` (under torchrun).

``commlib <command> --help`` explains each.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .errors import CommlibError

__all__ = ["main"]


def _demo(argv: list[str]) -> int:
    from .train.demo import main as demo

    return demo(argv)


def _train(argv: list[str]) -> int:
    from .train.trainer import main as train

    return train(argv)


def _simulate(argv: list[str]) -> int:
    from .cli_simulate import main as simulate

    return simulate(argv)


def _bench(argv: list[str]) -> int:
    from .cli_bench import main as bench

    return bench(argv)


def _report(argv: list[str]) -> int:
    from .cli_report import main as report

    return report(argv)


def _robust(argv: list[str]) -> int:
    from .train.robust import main as robust

    robust(argv)
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "demo": (_demo, "4 local workers: compression, a straggler, a Byzantine worker; prints a table, saves a plot"),
    "train": (_train, "reference DDP trainer on digits, any method (torchrun, mpiexec or --spawn N)"),
    "simulate": (_simulate, "coded training against stragglers on a virtual clock (none, GC, SR-SGC, M-SGC)"),
    "bench": (_bench, "list the benchmarks, or run one (arguments such as --quick are passed on)"),
    "report": (_report, "plot loss, bytes and time from JSON-lines logs of `commlib train --log-jsonl`"),
    "robust": (_robust, "robust DDP training on digits with Byzantine ranks (run under torchrun)"),
}


def _usage() -> str:
    lines = ["usage: commlib <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "`commlib <command> --help` describes a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its command; print the usage (exit 2) for a missing or unknown one."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"commlib: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command][0](rest)
    except CommlibError as exc:  # e.g. a spawned rank failed (its traceback is in the message), ranks disagree
        print(f"commlib {command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
