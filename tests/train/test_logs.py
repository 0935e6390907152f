"""JSON-lines step logs: strict JSON records, read back with errors that name the file and line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from commlib.adaptive import LGreCo, TimeCost
from commlib.comm.stats import StepStats
from commlib.compress import Identity
from commlib.sim import Simulator
from commlib.train.logs import JsonLinesLog, TensorBoardLog, read_jsonl, step_record, tensorboard_available


def test_step_record_carries_the_step_stats_and_nulls_non_finite_numbers():
    stats = StepStats(sent_bytes=100, received_bytes=300, dense_fp32_bytes=400, compute_s=0.5, comm_s=0.25,
                      policy_sent_bytes=60, policy_predicted_bytes=50, collective_s=0.125,
                      predicted_collective_s=0.0625)
    record = step_record(3, float("nan"), 0.1, stats, accuracy=0.9, faulty_rows=2)
    assert record == {"step": 3, "loss": None, "step_s": 0.1, "sent_bytes": 100, "received_bytes": 300,
                      "dense_fp32_bytes": 400, "compute_s": 0.5, "comm_s": 0.25, "policy_predicted_bytes": 50,
                      "policy_sent_bytes": 60, "predicted_collective_s": 0.0625, "collective_s": 0.125,
                      "ratio_vs_fp32": 4.0, "faulty_rows": 2, "accuracy": 0.9}
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


def test_a_policy_runs_predicted_and_realized_figures_reach_the_log_as_the_stats_hold_them(tmp_path):
    """L-GreCo with a TimeCost in the simulator: each logged step carries its StepStats' policy figures."""
    options = ["topk:0.05", "topk:0.1", "fp32"]
    cost = TimeCost(latency={"allgather": 1e-3, "allreduce": 1e-3},
                    seconds_per_byte={"allgather": 1e-9, "allreduce": 1e-9})
    sim = Simulator(Identity(), 2, policy=LGreCo(period=3, window=2, options=options, default_option="topk:0.1",
                                                 cost_model=cost))
    shapes = {"a": (64, 32), "b": (48, 40)}
    gen = torch.Generator().manual_seed(0)
    path = tmp_path / "run.jsonl"
    log, steps = JsonLinesLog(path), []
    for step in range(6):
        sim.exchange([[(n, torch.randn(s, generator=gen)) for n, s in shapes.items()] for _ in range(2)])
        steps.append(dataclasses.replace(sim.stats.last))
        log.write(step_record(step, 1.0, 0.01, sim.stats.last))
    log.close()
    fields = ("policy_predicted_bytes", "policy_sent_bytes", "predicted_collective_s", "collective_s")
    for record, stats in zip(read_jsonl(path), steps, strict=True):
        assert {f: record[f] for f in fields} == {f: getattr(stats, f) for f in fields}
    assert steps[-1].policy_predicted_bytes > 0 and steps[-1].predicted_collective_s > 0  # the policy ran
    assert steps[-1].collective_s == 0.0  # the simulator has no clock


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
