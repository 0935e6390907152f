"""``commlib train``: flags and config files, clear errors, per-step logs that agree with the hook's statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train.trainer_workers import straight_then_resumed

from commlib import cli
from commlib.train.logs import read_jsonl, tensorboard_available
from commlib.train.spawn import launch
from commlib.train.trainer import TrainSettings, main, parse_settings


def parse_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_settings(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--compressor", "zip"], "argument --compressor: unknown compressor 'zip'"),
    (["--compressor", "topk:x"], "argument --compressor: compressor 'topk:x'"),
    (["--steps", "0"], "argument --steps: must be a finite number >= 1, got 0"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["--feedback", "ef21", "--compressor", "powersgd:2"], "--feedback needs a compressor with a local operator"),
    (["--byzantine", "1"], "--byzantine, --attack, --strength, --nnm and --sharded need --aggregate"),
    (["--aggregate", "flag", "--byzantine", "1"], "--byzantine and --attack go together"),
    (["--aggregate", "flag", "--compressor", "powersgd:2"], "the robust hook takes a gather compressor"),
    (["--aggregate", "flag", "--feedback", "ef14", "--compressor", "topk:0.1"], "do not apply with --aggregate"),
    (["--aggregate", "mean", "--native-dense"], "do not apply with --aggregate"),
    (["--aggregate", "zz"], "argument --aggregate: invalid choice: 'zz'"),
    (["--policy", "lgreco", "--compressor", "randk:0.1"], "--compressor randk:0.1 is not a policy option"),
    (["--policy", "accordion", "--compressor", "topk:0.2"], "--policy accordion needs --accordion-heavy SPEC"),
    (["--policy", "accordion", "--compressor", "topk:0.2", "--accordion-heavy", "zip"],
     "--accordion-heavy zip is not a policy option"),
    (["--accordion-heavy", "topk:0.05"], "--accordion-heavy applies only with --policy accordion"),
    (["--lgreco-cost", "time"], "--lgreco-cost, --lgreco-refine and --lgreco-first-solve apply only with --policy"),
    (["--lgreco-first-solve", "3"], "--lgreco-first-solve apply only with --policy lgreco"),
    (["--policy", "lgreco", "--compressor", "topk:0.1", "--lgreco-first-solve", "0"],
     "argument --lgreco-first-solve"),
    (["--policy", "lgreco", "--compressor", "topk:0.1", "--lgreco-refine"], "it needs --lgreco-cost time"),
    (["--policy", "lgreco", "--lgreco-cost", "seconds"], "argument --lgreco-cost: invalid choice: 'seconds'"),
    (["--spawn", "2", "--aggregate", "mean", "--byzantine", "2", "--attack", "alie"], "must be below --spawn 2"),
    (["--log-jsonl", "/nonexistent/dir/log.jsonl"], "--log-jsonl: directory /nonexistent/dir does not exist"),
    (["--resume", "/nonexistent.pt"], "--resume: no such file"),
    (["--worker-momentum", "1"], "--worker-momentum must lie in [0, 1)"),
])
def test_bad_flags_are_named(capsys, argv, message):
    assert message in parse_error(capsys, argv)


def test_tensorboard_flag_needs_the_package(capsys, tmp_path):
    if tensorboard_available():
        assert parse_settings(["--tensorboard", str(tmp_path)])[0].tensorboard == str(tmp_path)
    else:
        assert "--tensorboard needs the tensorboard package" in parse_error(capsys, ["--tensorboard", str(tmp_path)])


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"compressor": "qsgd:4", "steps": 7, "lr": 0.05, "no-progress": True,
                                  "eval_every": 2}))
    settings, _ = parse_settings(["--config", str(config), "--steps", "9"])
    assert settings == TrainSettings(compressor="qsgd:4", steps=9, lr=0.05, progress=False, eval_every=2)
    config.write_text(json.dumps({"compresor": "qsgd:4"}))
    assert f"--config: unknown key 'compresor' in {config}" in parse_error(capsys, ["--config", str(config)])
    config.write_text(json.dumps({"steps": "many"}))
    assert "argument --steps: expected an integer, got 'many'" in parse_error(capsys, ["--config", str(config)])
    config.write_text("{oops")
    assert "is not JSON" in parse_error(capsys, ["--config", str(config)])


def test_without_a_process_group_the_command_says_how_to_launch(monkeypatch, capsys):
    for var in ("RANK", "WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit):
        main(["--steps", "1"])
    assert "run under torchrun or mpiexec, or pass --spawn N" in capsys.readouterr().err


def test_spawned_run_logs_every_step_as_the_stats_count_it(tmp_path, capsys):
    log, summary_path = tmp_path / "run.jsonl", tmp_path / "summary.json"
    code = cli.main(["train", "--spawn", "2", "--steps", "12", "--compressor", "topk:0.1", "--feedback", "ef21",
                     "--eval-every", "5", "--log-jsonl", str(log), "--json", str(summary_path), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "compressor=topk:0.1 feedback=ef21 policy=None: 2 ranks" in out and "ratio" in out
    records = read_jsonl(log)
    summary = json.loads(summary_path.read_text())
    total = summary["stats"]["total"]
    assert [r["step"] for r in records] == list(range(12))
    for field in ("sent_bytes", "received_bytes", "dense_fp32_bytes"):
        assert sum(r[field] for r in records) == total[field]
    assert sum(r["comm_s"] for r in records) == pytest.approx(total["comm_s"])
    assert [r["step"] for r in records if "accuracy" in r] == [4, 9, 11]
    assert records[-1]["accuracy"] == summary["accuracy"]
    assert [r["loss"] for r in records] == summary["losses"]
    assert records[0]["ratio_vs_fp32"] < 1.01 < 3 < records[5]["ratio_vs_fp32"]  # dense warm-up, then top-k 10%


def test_spawned_accordion_run_compresses_between_its_two_settings(tmp_path):
    log = tmp_path / "accordion.jsonl"
    code = cli.main(["train", "--spawn", "2", "--steps", "10", "--compressor", "topk:0.2", "--policy", "accordion",
                     "--accordion-heavy", "topk:0.05", "--policy-period", "3", "--eval-every", "10",
                     "--log-jsonl", str(log), "--no-progress"])
    assert code == 0
    ratios = [r["ratio_vs_fp32"] for r in read_jsonl(log)]
    assert ratios[0] < 1.01  # dense warm-up
    assert all(2.0 < r < 11.0 for r in ratios[2:]), ratios  # top-k 20 % (≈2.5×) to 5 % (≈10×) per layer
    assert min(ratios[2:]) < 3.0 < 5.0 < max(ratios), ratios  # light first, heavy once the norms settle


def test_spawned_lgreco_run_takes_powersgd_with_its_own_error_feedback(tmp_path):
    ckpt = tmp_path / "lgreco.pt"
    flags = ["--compressor", "powersgd:2:ef", "--policy", "lgreco", "--policy-period", "3", "--native-dense"]
    assert parse_settings(flags)[0].native_dense and not parse_settings(flags[:-1])[0].native_dense
    code = cli.main(["train", "--spawn", "2", "--steps", "8", *flags, "--eval-every", "8", "--save", str(ckpt),
                     "--no-progress"])
    assert code == 0
    options = torch.load(ckpt, weights_only=True)["comm"]["exchange"]["options"]
    assert options and all(name.endswith(":ef") for name in options), sorted(options)
    assert any(float(e.norm()) > 0 for state in options.values() for e in state["e"].values())


def test_spawned_lgreco_run_with_a_time_model_logs_its_predicted_collective_time(tmp_path):
    """Also: its first decision comes early (τ = 2, then 4 of τ = 0..5), and the summary holds the policy's."""
    log, summary_path = tmp_path / "time.jsonl", tmp_path / "summary.json"
    flags = ["--compressor", "topk:0.1", "--feedback", "ef14", "--policy", "lgreco", "--policy-period", "4",
             "--lgreco-first-solve", "2", "--lgreco-cost", "time", "--lgreco-refine", "--native-dense"]
    settings = parse_settings(flags)[0]
    assert (settings.lgreco_cost, settings.lgreco_refine, settings.lgreco_first_solve) == ("time", True, 2)
    code = cli.main(["train", "--spawn", "2", "--steps", "8", *flags, "--log-jsonl", str(log),
                     "--json", str(summary_path), "--no-progress"])
    assert code == 0
    records = read_jsonl(log)
    assert len(records) == 8 and all(r["predicted_collective_s"] > 0 for r in records), records
    assert all(r["collective_s"] > 0 for r in records)
    policy = json.loads(summary_path.read_text())["policy"]
    assert policy["stats"]["solves"] == 2 and policy["stats"]["last_step"] == 4
    assert set(policy["choices"]) == {"0.weight", "2.weight", "4.weight"}


def test_resumed_run_repeats_the_uninterrupted_one_and_robust_runs_log(tmp_path):
    ckpt, log = str(tmp_path / "ckpt.pt"), tmp_path / "robust.jsonl"
    settings = TrainSettings(compressor="topk:0.1", feedback="ef21", steps=8, progress=False)
    robust = TrainSettings(aggregate="mean", byzantine=(1,), attack="nan", steps=3, log_jsonl=str(log),
                           progress=False)
    straight, first, resumed, attacked = launch(straight_then_resumed, 2, settings, ckpt, robust, timeout=240)[0]
    assert Path(ckpt).is_file() and Path(ckpt + ".rank1").is_file()  # every rank keeps its own feedback state
    assert first["steps"] == 4 and resumed["start"] == 4
    assert resumed["losses"] == straight["losses"][4:]
    assert resumed["accuracy"] == straight["accuracy"]
    counts = [{k: v for k, v in run["stats"]["total"].items() if not k.endswith("_s")} for run in (resumed, straight)]
    assert counts[0] == counts[1]  # the checkpoint carried the byte totals
    records = read_jsonl(log)
    assert [r["faulty_rows"] for r in records] == [1, 2, 3] == [1, 2, attacked["faulty_rows"]]
    assert all(r["loss"] is not None and "sent_bytes" not in r for r in records)
