"""JSON-lines step logs: strict JSON records, read back with errors that name the file and line."""

from __future__ import annotations

import json

import pytest

from commlib.comm.stats import StepStats
from commlib.train.logs import JsonLinesLog, TensorBoardLog, read_jsonl, step_record, tensorboard_available


def test_step_record_carries_the_step_stats_and_nulls_non_finite_numbers():
    stats = StepStats(sent_bytes=100, received_bytes=300, dense_fp32_bytes=400, compute_s=0.5, comm_s=0.25)
    record = step_record(3, float("nan"), 0.1, stats, accuracy=0.9, faulty_rows=2)
    assert record == {"step": 3, "loss": None, "step_s": 0.1, "sent_bytes": 100, "received_bytes": 300,
                      "dense_fp32_bytes": 400, "compute_s": 0.5, "comm_s": 0.25, "ratio_vs_fp32": 4.0,
                      "faulty_rows": 2, "accuracy": 0.9}
    assert step_record(0, 1.0, 0.0, StepStats())["ratio_vs_fp32"] is None  # inf (nothing sent) is not JSON
    assert "accuracy" not in step_record(0, 1.0, 0.0)


def test_log_round_trip(tmp_path):
    path = tmp_path / "run.jsonl"
    log = JsonLinesLog(path)
    for step in range(3):
        log.write(step_record(step, 1.0 / (step + 1), 0.01))
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]
    assert [r["loss"] for r in read_jsonl(path)] == [1.0, 0.5, pytest.approx(1 / 3)]


def test_log_into_a_missing_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        JsonLinesLog(tmp_path / "nope" / "run.jsonl")


@pytest.mark.parametrize("text, message", [
    ('{"step": 0}\n{"step": 1\n', r"run.jsonl:2: not JSON"), ('[1, 2]\n', r"run.jsonl:1: a record must be"),
    ('{"loss": 1.0}\n', r"integer 'step'"), ("\n", "holds no records"),
])
def test_malformed_logs_are_named(tmp_path, text, message):
    path = tmp_path / "run.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_jsonl(path)


def test_missing_log_is_named(tmp_path):
    with pytest.raises(ValueError, match="no such log file"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_tensorboard_writer(tmp_path):
    if tensorboard_available():
        log = TensorBoardLog(tmp_path)
        log.write(step_record(0, 1.0, 0.1))
        log.close()
        assert any(tmp_path.iterdir())
    else:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            TensorBoardLog(tmp_path)
