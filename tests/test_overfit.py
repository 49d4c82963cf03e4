"""experiments.overfit: held-out against training-scene figures during training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from experiments import overfit
from experiments.longvideo import TrainSpec, train
from experiments.recipe import BASE
from vidgpt.model import FLAVORS, VidGPT


def test_train_calls_on_step_after_every_step_with_the_ema() -> None:
    spec = TrainSpec(clip_len=4, batch=2, pool=2, pool_frames=6, size=16, warmup=1)
    pool = torch.rand(2, 6, 3, 16, 16) * 2 - 1
    cfg = dataclasses.replace(FLAVORS["tiny"], in_channels=3, text_dim=0)
    seen: list[tuple[int, VidGPT]] = []
    ema, stats = train(cfg, BASE.diffusion, BASE.objective, pool, spec, steps=3,
                       on_step=lambda step, model: seen.append((step, model)))
    assert [s for s, _ in seen] == [1, 2, 3] and stats["steps"] == 3
    assert all(model is ema for _, model in seen)  # the EMA copy, which train returns


def test_overfit_measures_both_scene_sets_at_each_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert overfit.main(["--videos", "2", "--steps", "2", "--at", "1", "2", "--clips", "2", "--multiples", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert [row["step"] for row in result["at"]] == [1, 2]
    for row in result["at"]:
        assert set(row) == {"step", *overfit.SETS}
        assert row["train"]["copy_last_mse"] != row["held_out"]["copy_last_mse"]  # different scenes


def test_overfit_refuses_a_train_set_larger_than_the_dataset() -> None:
    with pytest.raises(SystemExit):
        overfit.main(["--videos", "4", "--clips", "8"])
