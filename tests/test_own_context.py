"""experiments.own_context (fine-tuning on the model's own teacher-forced samples) and experiments.area_bias."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline.synthetic import PALETTE
from experiments import area_bias, own_context
from experiments.recipe import BASE
from vidgpt import metrics
from vidgpt.diffusion import build_diffusion
from vidgpt.evaluation import EvalSpec
from vidgpt.model import FLAVORS, VidGPT
from vidgpt.sampling import SamplingSpec
from vidgpt.testing import randomize_weights_

CFG = dataclasses.replace(FLAVORS["tiny"], in_channels=3, text_dim=0)


def _model(seed: int = 0) -> VidGPT:
    torch.manual_seed(seed)
    return randomize_weights_(VidGPT(CFG), seed=seed).eval()


def test_own_samples_see_only_the_true_frames_before_them() -> None:
    """Frame f is sampled from the true frames [f - window, f): frame 0 stays true, and changing true frame 2
    changes the samples of frames 3 and 4 (window 2) but none before."""
    model, diffusion = _model(), build_diffusion(BASE.diffusion)
    sampling = SamplingSpec(prompt_frames=1, chunk=1, window=2, steps=2, precision="fp32")
    true = torch.rand(2, 5, 3, 8, 8) * 2 - 1
    own = own_context.own_samples(model, diffusion, sampling, true, batch=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(own[:, 0], true[:, 0])
    assert (own[:, 1:] - true[:, 1:]).abs().amax() > 1e-3  # sampled, not copied
    assert own.abs().amax() <= 1.0
    changed = true.clone()
    changed[:, 2] = -changed[:, 2]
    again = own_context.own_samples(model, diffusion, sampling, changed, batch=1,
                                    generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[:, 1:3], own[:, 1:3])  # frames 1 and 2 come from frames before 2
    assert not torch.equal(again[:, 3], own[:, 3]) and not torch.equal(again[:, 4], own[:, 4])


def test_the_own_arm_shares_every_draw_of_the_plain_arm() -> None:
    """Own samples equal to the truth make the own arm (prob 1) the plain arm bit for bit: same clips, prompt
    lengths, noise and timesteps, and the context path adds nothing else. With other samples it differs, and
    with prob 0 the samples are never read."""
    diffusion = build_diffusion(BASE.diffusion)
    true = torch.rand(4, 6, 3, 8, 8) * 2 - 1
    spec = own_context.FineTune(steps=3, batch=2, prob=0.0)

    def tuned(own: torch.Tensor, prob: float) -> list[torch.Tensor]:
        ema, stats = own_context.fine_tune(_model(), diffusion, BASE.objective, 4, {"true": true, "own": own},
                                           dataclasses.replace(spec, prob=prob, ema_decay=0.0))
        assert stats["own_batches"] == (3 if prob == 1 else 0)
        return [p.detach().clone() for p in ema.parameters()]

    plain = tuned(torch.zeros_like(true), 0.0)
    assert all(torch.equal(a, b) for a, b in zip(plain, tuned(true.clone(), 1.0)))
    assert any(not torch.equal(a, b) for a, b in zip(plain, tuned(true.flip(1), 1.0)))


def test_colour_areas_and_their_ratio_on_constructed_frames() -> None:
    background = (20, 20, 40)
    spec = EvalSpec()
    frames = np.empty((1, 2, 16, 16, 3), dtype=np.uint8)
    frames[:] = background
    frames[0, 0, 2:6, 2:6] = PALETTE["red"]  # 16 pixels
    frames[0, 1, 2:4, 2:6] = PALETTE["red"]  # 8 pixels
    frames[0, 1, 10:13, 10:13] = PALETTE["blue"]  # 9 pixels
    areas = area_bias.colour_areas(frames, [background], spec)  # (1, 2, K)
    red, blue = metrics.COLOURS.index("red"), metrics.COLOURS.index("blue")
    assert areas[0, 0, red] == 16 and areas[0, 1, red] == 8 and areas[0, 1, blue] == 9
    assert areas.sum() == 16 + 8 + 9
    truth = areas[:, :1].repeat(2, axis=1)  # red 16 px in both frames, no blue
    assert area_bias.area_ratio(areas, truth) == [1.0, 0.5]  # blue is not in the truth: not counted


def test_small_shapes_are_the_smaller_half_and_their_ratio_counts_only_them() -> None:
    """Two clips, colours 0-2: true first-frame areas 40, 10, 0 and 30, 20, 0; the shown areas' median is 25,
    so the small shapes are colour 1 of clip 0 (10 px) and colour 1 of clip 1 (20 px)."""
    true = np.zeros((2, 2, 3))
    true[0, :, 0], true[0, :, 1], true[1, :, 0], true[1, :, 1] = 40, 10, 30, 20
    small = area_bias.small_shapes(true)
    assert small.tolist() == [[False, True, False], [False, True, False]]
    sampled = true.copy()
    sampled[:, 1, 1] = [5, 0]  # the small ones shrink in frame 1 (to half, and to nothing); the large keep theirs
    assert area_bias.area_ratio(sampled, true, small) == [1.0, 5 / 30]
    assert area_bias.area_ratio(sampled, true) == [1.0, (40 + 5 + 30) / 100]



def test_the_area_sheet_draws_each_clips_videos_as_rows(tmp_path: Path) -> None:
    videos = [np.full((5, 3, 8, 8, 3), v, dtype=np.uint8) for v in (10, 120, 240)]  # 5 clips of 3 frames each
    area_bias.write_sheet(tmp_path / "s.png", *videos, clips=2, frames=2, scale=2)
    with Image.open(tmp_path / "s.png") as image:
        pixels = np.asarray(image)[::2, ::2, 0]  # back to one pixel per pixel
    tile, gap = 8 + 2, 4  # a tile with its 1-pixel frame; the gap under each clip
    assert pixels.shape == (2 * (3 * tile + gap), 2 * tile)  # 2 clips x 3 rows, 2 frames
    for clip in range(2):
        top = clip * (3 * tile + gap)
        assert [pixels[top + r * tile + 1, 1] for r in range(3)] == [10, 120, 240]  # truth, forced, rollout
        assert pixels[top, 0] == 255 and (pixels[top + 3 * tile : top + 3 * tile + gap] == 255).all()


def test_own_context_keeps_the_most_recent_prompt_frames_true() -> None:
    own, true = torch.zeros(3, 6, 1, 2, 2), torch.ones(3, 6, 1, 2, 2)
    prompt_len = torch.tensor([4, 1, 0])
    assert torch.equal(own_context.own_context(own, true, prompt_len, 0), own)  # all own
    context = own_context.own_context(own, true, prompt_len, 2)
    seen_true = context[:, :, 0, 0, 0]  # (B, L): 1 where the true frame is kept
    assert seen_true.tolist() == [[0, 0, 1, 1, 1, 1], [1] * 6, [1] * 6]  # prompt frames 2, 3 true; 0 true; none
    assert torch.equal(own, torch.zeros_like(own))  # the pool's tensors are not written


def test_own_context_refuses_a_negative_true_recent(capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit):
        own_context.main(["train", "nowhere", "--out", "/tmp/x", "--true-recent", "-1"])
    assert "--true-recent must be >= 0" in capsys.readouterr().err
