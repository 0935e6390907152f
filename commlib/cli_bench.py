"""``commlib bench``: list the benchmark scripts of ``benchmarks/``, or run one with its arguments.

``commlib bench`` lists every ``benchmarks/*.py`` with the first line of its docstring;
``commlib bench NAME [ARGS...]`` runs ``benchmarks/NAME.py`` in a subprocess with the
current interpreter (the repository root on ``PYTHONPATH``) and passes ``ARGS`` (such as
``--quick``) on untouched; its exit status is the command's. The benchmarks live in a
source checkout, next to the ``commlib`` package.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["benchmarks_dir", "list_benchmarks", "main"]

USAGE = ("usage: commlib bench [NAME [ARGS...]]\n\n"
         "Without NAME: list the benchmarks. With NAME: run benchmarks/NAME.py with ARGS (e.g. --quick);\n"
         "results go to benchmarks/results/.")


def benchmarks_dir() -> Path:
    """``benchmarks/`` of the source checkout this ``commlib`` was imported from."""
    return Path(__file__).resolve().parent.parent / "benchmarks"


def list_benchmarks(root: Path | None = None) -> dict[str, str]:
    """Benchmark name → first line of its module docstring (empty if none), sorted by name."""
    root = benchmarks_dir() if root is None else root
    found = {}
    for path in sorted(root.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found


def main(argv: list[str] | None = None) -> int:
    """Run ``commlib bench``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    root = benchmarks_dir()
    if not root.is_dir():
        print(f"commlib bench: no benchmarks/ directory at {root} (the benchmarks come with a source checkout)",
              file=sys.stderr)
        return 2
    found = list_benchmarks(root)
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(USAGE if argv and argv[0] != "--list" else "benchmarks (commlib bench NAME [--quick ...]):")
        width = max(map(len, found), default=0)
        for name, summary in found.items():
            print(f"  {name:<{width}}  {summary}")
        return 0
    name, rest = argv[0].removesuffix(".py"), argv[1:]
    if name not in found:
        print(f"commlib bench: unknown benchmark {argv[0]!r}; choose one of: {', '.join(found)}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root.parent), env.get("PYTHONPATH", "")]))
    return subprocess.call([sys.executable, str(root / f"{name}.py"), *rest], cwd=root.parent, env=env)
