"""The ``commlib`` entry point dispatches to its subcommands and explains itself."""

from __future__ import annotations

from commlib import cli


def test_no_command_prints_usage_and_fails(capsys):
    assert cli.main([]) == 2
    assert "simulate" in capsys.readouterr().out


def test_unknown_command_is_named(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_simulate_runs(capsys):
    code = cli.main(["simulate", "--workers", "8", "--scheme", "gc:1", "--jobs", "10", "--repeats", "1"])
    assert code == 0
    assert "gc(1)" in capsys.readouterr().out
