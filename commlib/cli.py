"""The ``commlib`` command: one entry point, one subcommand per job.

``commlib simulate ...`` runs the straggler simulator (:mod:`commlib.cli_simulate`);
``commlib robust ...`` is the Byzantine-robust trainer, meant for ``torchrun``
(:mod:`commlib.train.robust`). ``commlib <command> --help`` explains each.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["main"]


def _simulate(argv: list[str]) -> int:
    from .cli_simulate import main as simulate

    return simulate(argv)


def _robust(argv: list[str]) -> int:
    from .train.robust import main as robust

    robust(argv)
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "simulate": (_simulate, "coded training against stragglers on a virtual clock (none, GC, SR-SGC, M-SGC)"),
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
    return COMMANDS[command][0](rest)


if __name__ == "__main__":
    sys.exit(main())
