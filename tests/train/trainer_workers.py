"""Worker functions for tests/train/test_trainer.py (importable, as the spawn context requires)."""

from __future__ import annotations

from dataclasses import replace

from commlib.train.trainer import TrainSettings, run_rank


def straight_then_resumed(rank: int, world: int, settings: TrainSettings, ckpt: str,
                          robust: TrainSettings) -> list[dict]:
    """The same run three times: uninterrupted; first half with a checkpoint; second half resumed from it.

    Then one ``robust`` run.
    """
    half = settings.steps // 2
    straight = run_rank(rank, world, settings)
    first = run_rank(rank, world, replace(settings, steps=half, save=ckpt))
    resumed = run_rank(rank, world, replace(settings, resume=ckpt))
    return [straight, first, resumed, run_rank(rank, world, robust)]
