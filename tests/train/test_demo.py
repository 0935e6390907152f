"""``commlib demo --quick``: local workers, the three parts in one table, a plot and a JSON file."""

from __future__ import annotations

import json

from commlib import cli


def test_quick_demo_prints_its_table_and_saves_the_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--workers", "3", "--steps", "6", "--out", str(out), "--timeout", "300"]) == 0
    text = capsys.readouterr().out
    table = [line for line in text.splitlines() if line.startswith(("compression", "straggler", "byzantine"))]
    assert [line.split()[0] for line in table] == ["compression"] * 4 + ["straggler"] * 2 + ["byzantine"] * 2
    assert "3 workers, 6 steps" in text
    rows = json.loads((out / "demo.json").read_text())["rows"]
    fp32, *compressed = [r for r in rows if r["part"] == "compression"]
    assert fp32["ratio"] < 1.01 and all(r["ratio"] > 1.5 for r in compressed)  # compression sends fewer bytes
    assert all(r["bytes_per_step"] < fp32["bytes_per_step"] for r in compressed)
    waits, coded = [r for r in rows if r["part"] == "straggler"]
    assert coded["seconds"] < waits["seconds"] and coded["accuracy"] == waits["accuracy"]  # same gradients, sooner
    assert all(len(r["curve"]) == 6 for r in rows if r["part"] != "straggler")
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_demo_flags_are_named(capsys, tmp_path):
    for argv, message in ((["--workers", "2"], "argument --workers: must be a finite number >= 3, got 2"),
                          (["--steps", "x"], "argument --steps: expected an integer"),
                          (["--out", "/proc/nope"], "--out: cannot create")):
        try:
            cli.main(["demo", *argv])
        except SystemExit as exc:
            assert exc.code == 2
        assert message in capsys.readouterr().err
