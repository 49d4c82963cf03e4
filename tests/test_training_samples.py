"""The samples made during training, without a trainer: fixed held-out prompts continued, written, and
measured on synthetic scenes; the model's mode and weights are left as they were."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from data_pipeline.codecs import build_codec
from vidgpt.components.training_samples import TrainingSampler, frame_strip, synthetic_prompts
from vidgpt.diffusion import RectifiedFlow
from vidgpt.evaluation import EvalSpec
from vidgpt.model import FLAVORS, VidGPT
from vidgpt.sampling import SamplingSpec
from vidgpt.testing import randomize_weights_


def test_frame_strip_puts_frames_side_by_side() -> None:
    video = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    strip = frame_strip(video)
    assert strip.shape == (3, 2 * 4 + 1, 3)
    assert (strip[:, :4] == video[0]).all() and (strip[:, 4] == 255).all() and (strip[:, 5:] == video[1]).all()


def test_a_round_on_synthetic_scenes_writes_samples_and_quality_figures(tmp_path: Path) -> None:
    spec = EvalSpec(sampling=SamplingSpec(prompt_frames=2, steps=2), clip_len=4, multiples=1, num_clips=2, size=16)
    codec = build_codec("identity")
    prompts = synthetic_prompts(spec, codec, None, text_len=8)
    assert prompts.latents.shape == (2, 2, 3, 16, 16) and prompts.truth.shape == (2, 6, 16, 16, 3)
    model = randomize_weights_(VidGPT(dataclasses.replace(FLAVORS["tiny"], in_channels=3, text_dim=0)), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = TrainingSampler(prompts=prompts, spec=spec, decode=codec.decode, fps=8.0, run_dir=tmp_path, writer=None,
                              autocast=None)
    values = sampler.run(model, RectifiedFlow(), None, step=3, seed=0)
    assert model.training  # back in training mode, with the same weights
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert {"sample_seconds", "presence_f1", "garbage", "centroid_error_first_clip",
            "copy_last_centroid_error_first_clip", "centroid_ratio_first_clip"} == set(values)
    assert 0 <= values["presence_f1"] <= 1
    assert sorted(p.name for p in (tmp_path / "samples" / "step_0000003").iterdir()) == ["sample_00.mp4",
                                                                                           "sample_01.mp4"]
    again = TrainingSampler(prompts=prompts, spec=spec, decode=None, fps=8.0, run_dir=tmp_path / "other", writer=None,
                            autocast=None).run(model, RectifiedFlow(), None, step=3, seed=0)
    assert set(again) == {"sample_seconds"} and not (tmp_path / "other").exists()  # not rank 0: nothing written
