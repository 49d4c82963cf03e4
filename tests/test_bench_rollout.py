"""experiments.rollout: training on the model's own rollouts, paired with the plain loop."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from experiments import rollout
from experiments.longvideo import TrainSpec
from experiments.recipe import BASE
from vidgpt.diffusion import RectifiedFlow
from vidgpt.model import FLAVORS

from conftest import tiny_model


def test_the_rollout_context_keeps_the_prompt_and_the_targets_and_generates_between() -> None:
    model = tiny_model(text=False).train()
    x0 = torch.randn(2, 6, 4, 8, 8)
    gen = torch.Generator().manual_seed(0)
    ctx = rollout.rollout_context(model, RectifiedFlow(), x0, 2, 4, steps=2, generator=gen)
    assert model.training  # the mode is restored
    assert torch.equal(ctx[:, :2], x0[:, :2]) and torch.equal(ctx[:, 4:], x0[:, 4:])
    assert (ctx[:, 2:4] - x0[:, 2:4]).abs().max() > 1e-3  # generated, not copied
    with pytest.raises(ValueError, match="prompt_len < end"):
        rollout.rollout_context(model, RectifiedFlow(), x0, 3, 3, steps=2, generator=gen)


def test_the_rollout_arm_shares_every_draw_of_the_plain_arm() -> None:
    """The coin, K and the rollout's noise come from a stream of their own: with no rollout batch (prob 0)
    the rollout arm is the plain arm bit for bit (same clips, prompt lengths, noise, timesteps); rolling
    out from the last step only (start 0.6 of 3 steps) changes the weights."""
    spec = TrainSpec(clip_len=4, batch=2, pool=4, pool_frames=8, size=16, warmup=1)
    pool = torch.rand(4, 8, 3, 16, 16) * 2 - 1
    cfg = dataclasses.replace(FLAVORS["tiny"], in_channels=3, text_dim=0)
    plain, _ = rollout.train(cfg, BASE.diffusion, BASE.objective, pool, spec, steps=3)
    never, stats = rollout.train(cfg, BASE.diffusion, BASE.objective, pool, spec, steps=3,
                                 rollout=rollout.RolloutSpec(prob=0.0, steps=1))
    assert stats["rollout_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), never.parameters()))
    late, stats = rollout.train(cfg, BASE.diffusion, BASE.objective, pool, spec, steps=3,
                                rollout=rollout.RolloutSpec(prob=1.0, steps=1, start=0.6))
    assert stats["rollout_steps"] == 1
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), late.parameters()))


def test_rollout_benchmark_prints_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--flavor", "tiny", "--steps", "2", "--seeds", "1", "--pool", "4", "--clips", "1", "--size", "16",
            "--clip-len", "4", "--multiples", "1", "--sample-steps", "2", "--batch", "2", "--rollout-steps", "1",
            "--prob", "1", "--out", str(tmp_path / "r")]
    assert rollout.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["train"]["rollout"][0]["rollout_steps"] == 2 and result["train"]["baseline"][0]["rollout_steps"] == 0
    assert set(result["rollout_minus_baseline"]) == set(rollout.FIGURES)
    assert (tmp_path / "r" / "rollout_seed0" / "sheet.png").is_file()
