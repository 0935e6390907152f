"""Per-step training logs: JSON lines (always) and TensorBoard scalars (when ``tensorboard`` is installed).

A record is one flat JSON object per step: ``step`` and ``loss``, the step's
communication figures when the hook keeps :class:`~commlib.comm.stats.CommStats`
(``sent_bytes``, ``received_bytes``, ``dense_fp32_bytes``, ``ratio_vs_fp32``, ``compute_s``
— encode and decode —, ``comm_s``; an adaptive policy's predicted bytes and collective
seconds next to the realized ones: ``policy_predicted_bytes`` and ``policy_sent_bytes``,
``predicted_collective_s`` and ``collective_s``, zero where nothing predicts or times them),
the step's wall time ``step_s``, and ``accuracy`` at evaluation steps. Non-finite numbers
are written as ``null`` (strict JSON).
:func:`read_jsonl` reads a log back and names the file and line of a malformed record.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, Protocol

from ..comm.stats import StepStats

__all__ = ["JsonLinesLog", "StepLog", "TensorBoardLog", "read_jsonl", "step_record", "tensorboard_available"]

STATS_FIELDS = ("sent_bytes", "received_bytes", "dense_fp32_bytes", "compute_s", "comm_s",
                "policy_predicted_bytes", "policy_sent_bytes", "predicted_collective_s", "collective_s")


class StepLog(Protocol):
    def write(self, record: dict[str, object]) -> None: ...

    def close(self) -> None: ...


def _finite_or_none(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def step_record(step: int, loss: float, step_s: float, stats: StepStats | None = None,
                accuracy: float | None = None, **extra: float | int) -> dict[str, object]:
    """The record of one step (see the module docstring); ``extra`` adds runtime-specific numbers."""
    record: dict[str, object] = {"step": step, "loss": loss, "step_s": step_s}
    if stats is not None:
        record.update({name: getattr(stats, name) for name in STATS_FIELDS})
        record["ratio_vs_fp32"] = stats.ratio_vs_fp32
    record.update(extra)
    if accuracy is not None:
        record["accuracy"] = accuracy
    return {key: _finite_or_none(value) for key, value in record.items()}


class JsonLinesLog:
    """Writes one record per line to ``path`` (truncated first), flushed after every line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ValueError(f"cannot write the log {self.path}: directory {self.path.parent} does not exist")
        self._file: IO[str] = self.path.open("w")

    def write(self, record: dict[str, object]) -> None:
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` can be used (it needs the ``tensorboard`` package)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """Every number of a record as a scalar ``train/<name>`` at the record's step."""

    def __init__(self, logdir: str | Path) -> None:
        if not tensorboard_available():
            raise ImportError("TensorBoard logging needs the tensorboard package (pip install tensorboard)")
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(logdir))

    def write(self, record: dict[str, object]) -> None:
        step = int(record["step"])  # type: ignore[call-overload]
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        self._writer.close()


def read_jsonl(path: str | Path) -> list[dict[str, object]]:
    """The records of a JSON-lines log; ``ValueError`` names the file and line of a malformed one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such log file: {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}:{number}: a record must be a JSON object with an integer 'step'")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: the log holds no records")
    return records
