"""ModelConfig.refine: the residual 3x3 convolution over each output frame. A fresh one changes nothing; once
trained it is still per frame (causality, cache == no-cache, teacher forcing), and the accounting counts it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vidgpt.config import ConfigError, load_config
from vidgpt.model import VidGPT, count_params, model_stats
from vidgpt.testing import randomize_weights_

from conftest import TINY, TINY_NO_TEXT, assert_cache_equals_no_cache, assert_teacher_forced_equals_cached, counted_flops

REFINED = dataclasses.replace(TINY_NO_TEXT, refine=8)
B, C, H, W = 2, 4, 8, 8


def _model(cfg=REFINED, dtype: torch.dtype = torch.float32) -> VidGPT:  # noqa: ANN001
    torch.manual_seed(0)
    return randomize_weights_(VidGPT(cfg), seed=0).to(dtype).eval()


def test_a_fresh_refiner_leaves_the_prediction_unchanged() -> None:
    plain = _model(TINY_NO_TEXT)
    refined = VidGPT(REFINED).eval()
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["refiner.conv1.bias", "refiner.conv1.weight", "refiner.conv2.bias", "refiner.conv2.weight",
                               "refiner.modulation.bias", "refiner.modulation.weight"]
    assert not unexpected
    assert refined.refiner.conv1.weight.abs().max() > 0  # only the last convolution starts at zero
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(B, 3, C, H, W, generator=g), torch.rand(B, 3, generator=g) * 1000
    with torch.no_grad():
        torch.testing.assert_close(refined(x, t), plain(x, t), atol=0, rtol=0)
        refined.refiner.conv2.weight.add_(0.1)  # the check can fail
        assert (refined(x, t) - plain(x, t)).abs().max() > 1e-3


def test_the_refined_model_is_causal_and_mixes_neighbouring_pixels() -> None:
    model = _model()
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(B, 4, C, H, W, generator=g), torch.rand(B, 4, generator=g) * 1000
    with torch.no_grad():
        base = model(x, t)
        x2 = x.clone()
        x2[:, 2:] = torch.randn(B, 2, C, H, W, generator=g) * 3
        out = model(x2, t)
        torch.testing.assert_close(out[:, :2], base[:, :2], atol=1e-6, rtol=0)
        assert (out[:, 2:] - base[:, 2:]).abs().max() > 1e-3
        # the convolution reaches across a patch border: pixel (0, 2) of the second 2 x 2 patch moves the
        # output at pixel (0, 1) of the first, which the per-token output layer alone cannot do
        frame = torch.zeros(1, 1, C, H, W)
        moved = frame.clone()
        moved[..., 0, 2] = 1.0
        temb = torch.randn(1, 1, REFINED.hidden, generator=g)
        assert (model.refiner(moved, temb) - model.refiner(frame, temb))[..., 0, 1].abs().max() > 1e-4
        # and it reads the timestep: the same frame refines differently at another noise level
        assert (model.refiner(moved, temb) - model.refiner(moved, -temb)).abs().max() > 1e-4


@pytest.mark.parametrize("chunk,window,n", [(1, 8, 6), (2, 8, 6)])
def test_the_refined_model_cache_equals_no_cache_before_eviction(chunk: int, window: int, n: int) -> None:
    assert_cache_equals_no_cache(_model(dtype=torch.float64), (B, C, H, W), chunk, window, n)


def test_the_refined_model_teacher_forced_call_equals_cached_frame_by_frame_calls() -> None:
    assert_teacher_forced_equals_cached(_model(), (B, C, H, W), 3)


@pytest.mark.parametrize("cached", [0, 3])
def test_the_refiner_is_counted_in_parameters_and_flops(cached: int) -> None:
    cfg = dataclasses.replace(TINY, refine=8)
    model = _model(cfg)
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg) > count_params(TINY)
    assert counted_flops(model, (B, C, H, W), 4, cached) == model_stats(cfg, 4, H, W, batch=B, cached_frames=cached).flops


def test_the_config_takes_refine_and_names_a_bad_value() -> None:
    assert load_config(None, ["--model.refine=16"]).model.refine == 16
    with pytest.raises(ConfigError, match="refine must be >= 0"):
        load_config(None, ["--model.refine=-1"])
