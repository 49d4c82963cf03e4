"""Teacher forcing: each noisy frame of a clip predicted from the clean frames before it, all in one call
(`VidGPT.forward(teacher_forced=True)`, `objective.teacher_forcing`), checked against frame-by-frame calls."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vidgpt.attention import attention, reference_attention
from vidgpt.config import ConfigError, load_config
from vidgpt.diffusion import RectifiedFlow
from vidgpt.kv_cache import TemporalKVCache
from vidgpt.model import VidGPT, teacher_forcing_mask
from vidgpt.objective import FramePromptObjective

from conftest import TINY_NO_TEXT, tiny_model


def test_mask_pattern_on_three_frames() -> None:
    """Rows clean 0-2 then noisy 0-2: clean causal, noisy i on clean j < i and on itself only."""
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [1, 0, 0, 0, 1, 0],
        [1, 1, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(teacher_forcing_mask(3), expected)


def test_attention_with_a_mask_matches_the_reference_and_checks_it() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 6, 2, 8, generator=g) for _ in range(3))
    mask = teacher_forcing_mask(3)
    got = attention(q, k, v, mask=mask)
    torch.testing.assert_close(got, reference_attention(q, k, v, mask=mask))
    # row 3 (noisy frame 0) sees only key 3: its output is v[:, 3]
    torch.testing.assert_close(got[:, 3], v[:, 3])
    with pytest.raises(ValueError, match="mask must be a bool"):
        attention(q, k, v, mask=mask.float())
    with pytest.raises(ValueError, match="mask must be a bool"):
        attention(q, k, v, mask=mask[:5])


def _clip(frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(2, frames, 4, 8, 8, generator=g)
    noisy = torch.randn(2, frames, 4, 8, 8, generator=g)
    t = torch.rand(2, frames, generator=g) * 1000
    return clean, noisy, t


def test_teacher_forced_call_equals_frame_by_frame_calls_with_and_without_the_cache() -> None:
    """Noisy frame i of one teacher-forced call == the model on [clean 0..i-1, noisy i] (the uncached
    sampler's call) == the noisy frame after i clean frames written to the kv-cache (the cached sampler's)."""
    model = tiny_model(text=False)
    L = 4
    clean, noisy, t = _clip(L)
    with torch.no_grad():
        both = model(torch.cat([clean, noisy], 1), torch.cat([torch.zeros(2, L), t], 1), teacher_forced=True)
        assert both.shape == (2, 2 * L, 4, 8, 8)
        cache = TemporalKVCache(window=L)
        for i in range(L):
            plain = model(torch.cat([clean[:, :i], noisy[:, i:i + 1]], 1),
                          torch.cat([torch.zeros(2, i), t[:, i:i + 1]], 1))[:, -1]
            torch.testing.assert_close(both[:, L + i], plain, atol=1e-5, rtol=1e-5)
            cached = model(noisy[:, i:i + 1], t[:, i:i + 1], cache=cache)[:, 0]
            torch.testing.assert_close(both[:, L + i], cached, atol=1e-5, rtol=1e-5)
            model(clean[:, i:i + 1], torch.zeros(2, 1), cache=cache, write_cache=True)
        # the clean half is the plain causal call on the clean frames
        torch.testing.assert_close(both[:, :L], model(clean, torch.zeros(2, L)), atol=1e-5, rtol=1e-5)
        # and noisy frames really do not see each other: changing noisy frame 0 changes only output L + 0
        other = noisy.clone()
        other[:, 0] += 1.0
        moved = model(torch.cat([clean, other], 1), torch.cat([torch.zeros(2, L), t], 1), teacher_forced=True)
        changed = (moved - both).abs().amax(dim=(0, 2, 3, 4)) > 1e-6
        assert changed.tolist() == [False] * L + [True] + [False] * (L - 1)


def test_teacher_forced_calls_are_refused_where_they_mean_nothing() -> None:
    model = tiny_model(text=False)
    clean, noisy, t = _clip(3)
    with pytest.raises(ValueError, match="teacher_forced needs"):
        model(torch.cat([clean, noisy[:, :2]], 1), torch.zeros(2, 5), teacher_forced=True)
    with pytest.raises(ValueError, match="teacher_forced needs"):
        model(torch.cat([clean, noisy], 1), torch.zeros(2, 6), teacher_forced=True, cache=TemporalKVCache(window=4))
    bidirectional = VidGPT(dataclasses.replace(TINY_NO_TEXT, temporal="bidirectional"))
    with pytest.raises(ValueError, match="teacher_forced needs"):
        bidirectional(torch.cat([clean, noisy], 1), torch.zeros(2, 6), teacher_forced=True)


@pytest.mark.parametrize("min_len", [0, 2])
def test_teacher_forcing_loss_is_the_mean_of_first_generated_frame_losses(min_len: int) -> None:
    """The objective's loss == the mean over frames i >= prompt_min_len of the error of frame i predicted
    from the clean frames before it, rebuilt by hand from the same random draws (noise, then a time per frame)."""
    model = tiny_model(text=False)
    flow = RectifiedFlow("x0")
    objective = FramePromptObjective(teacher_forcing=True, per_frame_noise=True, prompt_min_len=min_len,
                                     loss_weighting="snr_clamp", snr_max=5.0)
    B, L = 2, 5
    x0 = torch.randn(B, L, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    lens = objective.draw_prompt_lengths(L, B, torch.Generator().manual_seed(0))
    assert lens.tolist() == [min_len] * B  # nothing drawn: every frame from prompt_min_len on is trained
    with torch.no_grad():
        got = objective.loss_at(model, flow, x0, lens, generator=torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.rand(B * L, generator=g).view(B, L)
        errors = []
        for i in range(min_len, L):
            x_i = flow.add_noise(x0[:, i:i + 1], noise[:, i:i + 1], t[:, i:i + 1])
            pred = model(torch.cat([x0[:, :i], x_i], 1),
                         flow.model_time(torch.cat([torch.zeros(B, i), t[:, i:i + 1]], 1)))[:, -1]
            weight = (((1 - t[:, i]) / t[:, i]) ** 2).clamp(1, 5)
            errors.append(weight * (pred - x0[:, i]).pow(2).mean(dim=(1, 2, 3)))
        torch.testing.assert_close(got, torch.stack(errors, 1).mean(), atol=1e-5, rtol=1e-5)


def test_teacher_forcing_trains_a_step_and_is_checked_in_the_config() -> None:
    model = VidGPT(TINY_NO_TEXT).train()
    objective = FramePromptObjective(teacher_forcing=True, prompt_min_len=0)
    x0 = torch.randn(2, 4, 4, 8, 8)
    loss = objective.loss_at(model, RectifiedFlow("x0"), x0, 0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.final.linear.weight.grad is not None and model.final.linear.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="teacher_forcing .* needs prompt_rule 'uniform'"):
        FramePromptObjective(teacher_forcing=True, prompt_rule="chunked")
    with pytest.raises(ConfigError, match="eval.sampling.chunk: .* frame by frame"):
        load_config(None, ["--objective.teacher_forcing=true", "--eval.sampling.chunk=2"])
    cfg = load_config(None, ["--objective.teacher_forcing=true", "--eval.sampling.chunk=1"])
    assert cfg.objective.teacher_forcing is True
