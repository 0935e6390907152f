"""The ``commlib`` entry point dispatches to its subcommands and explains itself."""

from __future__ import annotations

from commlib import cli


def test_no_command_prints_usage_and_fails(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in ("demo", "train", "simulate", "bench", "report", "robust"))


def test_help_succeeds(capsys):
    assert cli.main(["--help"]) == 0
    assert "usage: commlib <command>" in capsys.readouterr().out


def test_unknown_command_is_named(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_simulate_runs(capsys):
    code = cli.main(["simulate", "--workers", "8", "--scheme", "gc:1", "--jobs", "10", "--repeats", "1"])
    assert code == 0
    assert "gc(1)" in capsys.readouterr().out


def test_commlib_errors_become_a_message_and_exit_status_1(monkeypatch, capsys):
    from commlib.train.spawn import LaunchError

    def failing(argv: list[str]) -> int:
        raise LaunchError("rank 1 failed:\nValueError: boom")

    monkeypatch.setitem(cli.COMMANDS, "train", (failing, "fails"))
    assert cli.main(["train"]) == 1
    assert "commlib train: LaunchError: rank 1 failed:\nValueError: boom" in capsys.readouterr().err
