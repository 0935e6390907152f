"""The code blocks of docs/quickstart.md run as written.

Untitled ``python`` blocks run in order in one fresh interpreter, sharing one namespace (as a reader
pasting them into a Python session would); a block titled ``NAME.py`` is written to a file and run
under ``torchrun`` with two workers. ``bash`` blocks are shell commands and are not run. Every fence
must say which of the two it is, so no Python can hide in an unlabelled block.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
TITLE = re.compile(r'title="([^"]+)"')
LANGUAGES = {"python", "bash"}
TIMEOUT_S = 240

# Executes each block in one namespace; code is padded so tracebacks give docs/quickstart.md line numbers.
RUNNER = """
import json, sys, traceback
namespace = {"__name__": "__main__"}
for line, code in json.load(open(sys.argv[1])):
    try:
        exec(compile("\\n" * line + code, "docs/quickstart.md", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"quickstart block at line {line + 1} failed")
"""


@dataclass(frozen=True)
class Block:
    language: str
    title: str | None
    line: int  # 0-based line of the block's first code line
    code: str


def code_blocks(markdown: str) -> list[Block]:
    """Every fenced block of ``markdown`` with its language, title and position."""
    blocks = []
    for match in FENCE.finditer(markdown):
        info = match.group(1).strip()
        language = info.split()[0] if info else ""
        title = TITLE.search(info)
        line = markdown.count("\n", 0, match.start(2))
        blocks.append(Block(language, title.group(1) if title else None, line, match.group(2)))
    return blocks


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_session_blocks(blocks: list[Block], workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run the untitled python blocks in order in one fresh interpreter (cwd ``workdir``)."""
    listing = workdir / "blocks.json"
    listing.write_text(json.dumps([(b.line, b.code) for b in blocks if b.language == "python" and not b.title]))
    return subprocess.run([sys.executable, "-c", RUNNER, str(listing)], cwd=workdir, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def test_every_fence_is_python_or_bash() -> None:
    blocks = code_blocks(QUICKSTART.read_text())
    assert {b.language for b in blocks} <= LANGUAGES, [b.language for b in blocks]
    assert sum(b.language == "python" and b.title is None for b in blocks) >= 5
    assert [b.title for b in blocks if b.title] == ["train.py"]


def test_session_blocks_run(tmp_path: Path) -> None:
    result = run_session_blocks(code_blocks(QUICKSTART.read_text()), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loss after 20 steps" in result.stdout


def test_a_failing_block_fails_the_run(tmp_path: Path) -> None:
    blocks = code_blocks(QUICKSTART.read_text())
    first = next(i for i, b in enumerate(blocks) if b.language == "python" and not b.title)
    broken = blocks[first]  # broken before its first line, so the check costs no torch import
    blocks[first] = Block(broken.language, None, broken.line, "raise RuntimeError('broken')\n" + broken.code)
    result = run_session_blocks(blocks, tmp_path)
    assert result.returncode != 0
    assert f"quickstart block at line {broken.line + 1} failed" in result.stderr
    assert "RuntimeError: broken" in result.stderr


def test_train_script_runs_under_torchrun(tmp_path: Path) -> None:
    (script,) = [b for b in code_blocks(QUICKSTART.read_text()) if b.title == "train.py"]
    (tmp_path / "train.py").write_text(script.code)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ratio" in result.stdout  # rank 0 printed the statistics summary
