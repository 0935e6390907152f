"""``commlib report`` plots JSON-lines logs and prints one summary line per log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from commlib import cli
from commlib.cli_report import curves
from commlib.train.logs import read_jsonl


def write_log(path, steps: int, sent: int, accuracy_every: int = 0, collective: dict | None = None) -> None:
    """``collective`` (``{field: seconds per step}``) adds those fields to the records."""
    with path.open("w") as f:
        for step in range(steps):
            record = {"step": step, "loss": 2.0 / (step + 1), "step_s": 0.01 * (step + 1), "sent_bytes": sent}
            if accuracy_every and (step + 1) % accuracy_every == 0:
                record["accuracy"] = 0.5 + step / 100
            record.update({field: seconds[step] for field, seconds in (collective or {}).items()})
            f.write(json.dumps(record) + "\n")


def png_width(path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk's width


def test_report_plots_and_summarizes(tmp_path, capsys):
    a, b, png = tmp_path / "fp32.jsonl", tmp_path / "topk.jsonl", tmp_path / "report.png"
    write_log(a, 20, 1_000_000, accuracy_every=10)
    write_log(b, 10, 250_000)
    assert cli.main(["report", str(a), str(b), "--out", str(png), "--smooth", "4"]) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    lines = capsys.readouterr().out.splitlines()
    fp32 = next(line for line in lines if line.startswith("fp32")).split()
    topk = next(line for line in lines if line.startswith("topk")).split()
    assert fp32[1:] == ["20", "0.1000", "0.6900", "20.00", "105.0"]  # steps, loss, accuracy, MB, median ms
    assert topk[1:] == ["10", "0.2000", "-", "2.50", "55.0"]


def test_curves_smooth_the_loss_and_accumulate_bytes(tmp_path):
    path = tmp_path / "run.jsonl"
    write_log(path, 6, 2_000_000)
    got = curves(read_jsonl(path), smooth=3)
    steps, loss = got["loss"]
    assert steps.tolist() == [2, 3, 4, 5]
    assert loss[0] == pytest.approx((2 + 1 + 2 / 3) / 3)
    assert got["sent_mb"][1].tolist() == [2, 4, 6, 8, 10, 12]
    assert np.allclose(got["step_ms"][1], [10, 20, 30, 40, 50, 60])
    assert "accuracy" not in got


def test_predicted_and_measured_collective_time_get_their_own_panel(tmp_path, capsys):
    timed, plain, png = tmp_path / "lgreco.jsonl", tmp_path / "fp32.jsonl", tmp_path / "report.png"
    write_log(timed, 5, 1000, collective={"collective_s": [0.004, 0.005, 0.006, 0.007, 0.008],
                                          "predicted_collective_s": [0.003, 0.004, 0.005, 0.006, 0.007]})
    write_log(plain, 5, 4000)
    got = curves(read_jsonl(timed), smooth=1)
    assert np.allclose(got["collective_ms"][1], [4, 5, 6, 7, 8])
    assert np.allclose(got["predicted_collective_ms"][1], [3, 4, 5, 6, 7])
    assert got["collective_ms"][0].tolist() == list(range(5))
    assert cli.main(["report", str(plain), str(timed), "--out", str(png)]) == 0
    five_panels = png_width(png)
    assert cli.main(["report", str(plain), "--out", str(png)]) == 0
    assert five_panels > png_width(png)  # the collective panel widens the grid to 2 × 3
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.startswith("lgreco")] == [
        ["lgreco", "5"]]


def test_all_zero_collective_times_are_not_plotted(tmp_path):
    """Zeros mean "not timed" (the simulator has no clock) or "not predicted" (no policy): no flat lines."""
    path = tmp_path / "sim.jsonl"
    with path.open("w") as f:
        for step in range(4):
            record = {"step": step, "loss": 1.0, "collective_s": 0.0, "predicted_collective_s": 0.0}
            f.write(json.dumps(record) + "\n")
    got = curves(read_jsonl(path), smooth=1)
    assert "collective_ms" not in got and "predicted_collective_ms" not in got
    write_log(path, 4, 1000, collective={"collective_s": [0.0] * 4, "predicted_collective_s": [0.0, 0.0, 0.002, 0.003]})
    got = curves(read_jsonl(path), smooth=1)  # a simulated policy: predicted after its warm-up, never timed
    assert "collective_ms" not in got and np.allclose(got["predicted_collective_ms"][1], [0, 0, 2, 3])


def test_bad_input_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0}\nnot json\n')
    with pytest.raises(SystemExit):
        cli.main(["report", str(bad), "--out", str(tmp_path / "x.png")])
    assert "bad.jsonl:2: not JSON" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    write_log(good, 3, 1)
    for argv, message in ((["--out", str(tmp_path / "no" / "x.png")], "does not exist"),
                          (["--out", str(tmp_path / "x.png"), "--smooth", "0"], "--smooth must be >= 1")):
        with pytest.raises(SystemExit):
            cli.main(["report", str(good), *argv])
        assert message in capsys.readouterr().err
