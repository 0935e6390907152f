"""``commlib simulate`` (commlib.cli_simulate.main): table, plot, JSON, progress, and clear errors for bad flags."""

from __future__ import annotations

import json
import re

import pytest

from commlib.cli_simulate import main
from commlib.coded.injector import straggler_trace
from commlib.coding import make_scheme
from commlib.coding.stragglers import Cutoff
from commlib.sim.coded import simulate

SMALL = ["--workers", "12", "--jobs", "30", "--repeats", "2", "--seed", "3", "--stragglers", "gilbert-elliott:0.1,0.5",
         "--scheme", "none", "--scheme", "gc:2", "--scheme", "m-sgc:1,2,3"]


def test_table_json_and_plot_match_direct_simulation(tmp_path, capsys) -> None:
    plot, out = tmp_path / "runs.png", tmp_path / "runs.json"
    assert main([*SMALL, "--plot", str(plot), "--json", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    assert lines[0].startswith("12 workers, 30 jobs, stragglers gilbert-elliott:0.1,0.5")
    assert lines[1].split()[:4] == ["scheme", "load", "T", "runtime"]
    assert [line.split()[0] for line in lines[3:6]] == ["none", "gc(2)", "m-sgc(1,2,3)"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    runs = json.loads(out.read_text())["runs"]
    assert sorted(runs) == ["gc(2)", "m-sgc(1,2,3)", "none"] and all(len(rs) == 2 for rs in runs.values())
    # the figures are the simulator's: seed 4 (the second repeat) of gc:2 rerun directly
    scheme = make_scheme("gc:2", 12, 30, code="crc", seed=3)
    trace = straggler_trace("gilbert-elliott:0.1,0.5", 31, 12, seed=4, fast=1.2, slow=12.0, compute=2.2)
    direct = simulate(scheme, trace, Cutoff(1.0, "wait-all")).summary()
    assert runs["gc(2)"][1] == json.loads(json.dumps(direct))
    mean = (runs["gc(2)"][0]["total_time"] + direct["total_time"]) / 2
    assert f"{mean:.1f} ±" in lines[4]


def test_progress_goes_to_stderr(capsys) -> None:
    assert main(SMALL) == 0
    err = capsys.readouterr().err
    assert "6/6" in err and "m-sgc(1,2,3) seed 4" in err


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["--workers", "many"], "argument --workers: expected an integer, got 'many'"),
    (["--jobs", "-3"], "argument --jobs: must be >= 1"),
    (["--slowdown", "1"], "argument --slowdown: must be > 1"),
    (["--mu", "nan"], "argument --mu: must be >= 0"),
    (["--fallback", "maybe"], "argument --fallback: invalid choice: 'maybe'"),
    (["--scheme", "x-sgc:1"], "--scheme x-sgc:1: unknown scheme 'x-sgc'"),
    (["--workers", "8", "--scheme", "gc:9"], r"--scheme gc:9: s \(tolerated stragglers\) must be in \[0, 7\]"),
    (["--scheme", "gc:2", "--scheme", "gc:2"], "--scheme gc:2 is given twice"),
    (["--stragglers", "sometimes"], "--stragglers: unknown straggler spec 'sometimes'"),
    (["--plot", "/nonexistent-dir/x.png"], "--plot: directory /nonexistent-dir does not exist"),
])
def test_bad_flags_fail_with_a_clear_message(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: commlib simulate")
    assert re.search(message, err), err


def test_help_reads_well(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: commlib simulate")
    for text in ("--workers N", "--scheme SPEC", "gilbert-elliott[:PGB,PBG]", "sr-sgc:B,W,LAMBDA",
                 "commlib simulate --workers 64 --stragglers gilbert-elliott --scheme m-sgc:1,2,27"):
        assert text in out
