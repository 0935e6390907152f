"""``commlib bench`` lists the benchmark scripts and runs one with its arguments passed on."""

from __future__ import annotations

from commlib import cli
from commlib.cli_bench import benchmarks_dir, list_benchmarks


def test_lists_every_benchmark_with_its_summary(capsys):
    assert cli.main(["bench"]) == 0
    out = capsys.readouterr().out
    names = sorted(p.stem for p in benchmarks_dir().glob("*.py") if not p.name.startswith("_"))
    assert names and all(f"  {name}" in out for name in names)
    assert list_benchmarks()["hooks_cpu"].startswith("CPU/gloo benchmark")


def test_unknown_benchmark_is_named(capsys):
    assert cli.main(["bench", "no_such_bench"]) == 2
    assert "unknown benchmark 'no_such_bench'" in capsys.readouterr().err


def test_runs_a_script_with_forwarded_arguments_and_its_exit_status(tmp_path, monkeypatch):
    (tmp_path / "benchmarks").mkdir()
    script = tmp_path / "benchmarks" / "echo_args.py"
    out = tmp_path / "args.txt"
    script.write_text('"""Echo."""\nimport sys\nopen(sys.argv[1], "w").write(" ".join(sys.argv[2:]))\n'
                      'sys.exit(3)\n')
    monkeypatch.setattr("commlib.cli_bench.benchmarks_dir", lambda: tmp_path / "benchmarks")
    assert list_benchmarks(tmp_path / "benchmarks") == {"echo_args": "Echo."}
    assert cli.main(["bench", "echo_args", str(out), "--quick", "--n", "2"]) == 3
    assert out.read_text() == "--quick --n 2"
