"""The L-GreCo benchmarks' shared parts: method grids, merging of result files, the window recorder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import lgreco_compare  # noqa: E402
import lgreco_grids  # noqa: E402

from commlib.adaptive import LGreCo, Option  # noqa: E402


def _args(**kw: object) -> argparse.Namespace:
    base = {"steps": 10, "seeds": 1, "period": 5, "window": 2, "families": ["qsgd"], "jobs": 1}
    return argparse.Namespace(**{**base, **kw})


def _run(family: str, method: str, seed: int, sent: int) -> dict:
    return {"family": family, "method": method, "seed": seed, "sent_bytes": sent}


def test_grid_and_mixed_methods_use_their_option_sets() -> None:
    qsgd = lgreco_compare.FAMILIES["qsgd"]
    assert "lgreco-grid-sq" in qsgd.methods()
    assert not any("grid" in m or "mixed" in m for m in lgreco_compare.FAMILIES["topk"].methods())
    for method, grid, metric in (("lgreco-grid-norm", qsgd.grid, "norm"), ("lgreco-mixed-sq", qsgd.mixed, "squared")):
        sim = lgreco_compare.make_simulator(method, qsgd, seed=0, workers=2, period=5, window=2)
        policy = sim.policy
        assert isinstance(policy, LGreCo) and policy.error_metric == metric
        assert {str(o) for o in policy.options} == {*grid, "fp32"}
        assert policy.default_option == Option.parse(qsgd.default)
    families = {o.split(":")[0] for o in qsgd.mixed}
    assert {"qsgd", "powersgd", "fp16"} <= families


def test_merge_keeps_earlier_pairs_not_rerun(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    earlier = [_run("topk", "uniform", 0, 5), _run("qsgd", "uniform", 0, 7), _run("qsgd", "lgreco-norm", 0, 3)]
    path.write_text(json.dumps({"args": vars(_args()), "runs": earlier}))
    new = [_run("qsgd", "lgreco-norm", 0, 2), _run("qsgd", "lgreco-grid-norm", 0, 1)]
    merged = lgreco_compare.merge_runs(path, new, _args(families=["qsgd"], jobs=3))
    assert [(r["family"], r["method"], r["sent_bytes"]) for r in merged] == [
        ("topk", "uniform", 5), ("qsgd", "uniform", 7), ("qsgd", "lgreco-norm", 2), ("qsgd", "lgreco-grid-norm", 1)]


def test_merge_refuses_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"args": vars(_args()), "runs": [_run("qsgd", "uniform", 0, 7)]}))
    with pytest.raises(ValueError, match="steps"):
        lgreco_compare.merge_runs(path, [], _args(steps=11))
    assert lgreco_compare.merge_runs(tmp_path / "missing.json", [], _args()) == []


def test_window_recorder_keeps_sums_and_the_default() -> None:
    recorder = lgreco_grids.WindowRecorder("qsgd:4x128", period=4, window=2)
    recorder.register({"w": (8, 8)})
    gen = torch.Generator().manual_seed(0)
    fed = []
    for step in range(9):
        recorder.decide(step)
        g = torch.randn(8, 8, generator=gen)
        if recorder.observe(step, {"w": g}):
            fed.append((step, g))
    assert [s for s, _ in fed] == [2, 3, 6, 7] and len(recorder.windows) == 2
    for (sums, steps), pair in zip(recorder.windows, (fed[:2], fed[2:])):
        assert steps == {"w": 2}
        torch.testing.assert_close(sums["w"], pair[0][1] + pair[1][1])
    assert recorder.choices() == {"w": Option.parse("qsgd:4x128")}


def test_powersgd_ef_family_keeps_feedback_on_every_option() -> None:
    family = lgreco_compare.FAMILIES["powersgd-ef"]
    assert not family.feedback  # the wrappers do not take PowerSGD: its own feedback is in the options
    for name in (family.default, family.light, family.heavy, *family.grid):
        assert Option.parse(name).error_feedback, name
    sim = lgreco_compare.make_simulator("lgreco-grid-sq", family, seed=0, workers=2, period=5, window=2)
    assert all(o.error_feedback for o in sim.policy.options if o.family == "powersgd")
    assert sim.policy.default_option == Option.parse("powersgd:4:ef")


@pytest.mark.parametrize("quick, first, tag, expected", [
    (False, None, None, "lgreco_text"),
    (True, None, None, "lgreco_text_quick"),
    (False, 10, "steps300", "lgreco_text_first10_steps300"),
    (True, 5, "x", "lgreco_text_quick_first5_x"),
])
def test_results_name(quick: bool, first: int | None, tag: str | None, expected: str) -> None:
    args = argparse.Namespace(quick=quick, first_solve=first, tag=tag)
    assert lgreco_compare.results_name("lgreco_text", args) == expected
