"""experiments.self_forcing: the student's rollout samples as `generate` does, DMD's gradient, and one update."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from experiments.self_forcing import SelfForcingSpec, dmd_loss, rollout, scored_part, scores, self_force
from vidgpt.diffusion import RectifiedFlow
from vidgpt.export import load_exported, save_derived_export
from vidgpt.objective import FramePromptObjective
from vidgpt.sampling import generate

from conftest import TINY_NO_TEXT, tiny_model


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_rollout_to_the_last_step_is_the_sampler(eta: float) -> None:
    """Exiting at the last denoising step, the rollout is `generate` frame by frame (no guidance), draw for
    draw: the same frames from the same generator seed, through the first eviction of the window."""
    model = tiny_model(text=False)
    flow = RectifiedFlow("x0", eta=eta)
    prompt = torch.randn(2, 2, 4, 16, 16)
    made = rollout(model, flow, prompt, 5, steps=3, window=3, exit_step=2, text=None, text_mask=None,
                   generator=torch.Generator().manual_seed(7))
    ref = generate(model, flow, prompt, 5, chunk=1, window=3, steps=3, generator=torch.Generator().manual_seed(7))
    assert made.shape == (2, 5, 4, 16, 16)
    torch.testing.assert_close(made, ref[:, 2:], atol=1e-5, rtol=1e-5)


def test_rollout_gradient_reaches_only_the_exit_call() -> None:
    """Gradient flows into the weights through each frame's exit call; an earlier exit gives other frames."""
    model = tiny_model(text=False).train()
    flow = RectifiedFlow("x0", eta=1.0)
    prompt = torch.randn(1, 2, 4, 16, 16)
    early = rollout(model, flow, prompt, 3, steps=3, window=3, exit_step=0, text=None, text_mask=None,
                    generator=torch.Generator().manual_seed(1))
    late = rollout(model, flow, prompt, 3, steps=3, window=3, exit_step=2, text=None, text_mask=None,
                   generator=torch.Generator().manual_seed(1))
    assert early.requires_grad and not torch.allclose(early, late)
    late.square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_dmd_gradient_is_fake_minus_real_normalised() -> None:
    """d loss / d gen = (fake - real) / mean|gen - real| per clip / numel."""
    gen = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    real, fake = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    dmd_loss(gen, real, fake).backward()
    norm = (gen.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(gen.grad, (fake - real) / norm / gen.numel())


def test_scores_agree_when_critic_is_teacher_and_no_guidance() -> None:
    """With the critic a copy of the teacher and no context guidance, real == fake: DMD's gradient is zero;
    with guidance they differ."""
    teacher = tiny_model(text=False)
    flow = RectifiedFlow("x0", eta=1.0)
    prompt, gen = torch.randn(2, 2, 4, 16, 16), torch.randn(2, 3, 4, 16, 16)
    t, noise = torch.tensor([0.3, 0.8]), torch.randn(2, 3, 4, 16, 16)
    real, fake = scores(teacher, teacher, flow, prompt, gen, t, noise, context_scale=1.0, text=None, text_mask=None)
    torch.testing.assert_close(real, fake)
    guided, _ = scores(teacher, teacher, flow, prompt, gen, t, noise, context_scale=2.0, text=None, text_mask=None)
    assert not torch.allclose(guided, fake)


@pytest.mark.parametrize("score_window", [0, 3])
def test_self_force_moves_the_student_and_keeps_the_pool(score_window: int) -> None:
    """Two generator updates: the EMA differs from the start, the returned stats are finite, the pool is untouched
    (also when the scored window holds no prompt frame)."""
    model = tiny_model(text=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    pool = {"true": torch.randn(4, 6, 4, 16, 16)}
    kept = pool["true"].clone()
    spec = SelfForcingSpec(steps=2, critic_per_step=2, batch=2, frames=3, denoise_steps=2, lr=1e-3, window=3,
                           score_window=score_window)
    ema, stats = self_force(model, RectifiedFlow("x0", eta=1.0), FramePromptObjective(per_frame_noise=True), pool, spec)
    assert any(not torch.equal(v, start[k]) for k, v in ema.state_dict().items())
    assert all(torch.isfinite(torch.tensor(stats["dmd_last_10"])))
    assert torch.equal(pool["true"], kept)


def test_scored_part_takes_the_last_frames() -> None:
    """The window's frames split into the prompt frames and the generated frames it holds."""
    prompt = torch.arange(2.0).view(1, 2, 1, 1, 1)
    gen = torch.arange(2.0, 8.0).view(1, 6, 1, 1, 1)
    for window, (p, g) in {0: ([0, 1], [2, 3, 4, 5, 6, 7]), 8: ([0, 1], [2, 3, 4, 5, 6, 7]),
                           7: ([1], [2, 3, 4, 5, 6, 7]), 4: ([], [4, 5, 6, 7])}.items():
        a, b = scored_part(prompt, gen, window)
        assert a.flatten().tolist() == p and b.flatten().tolist() == g


@pytest.mark.parametrize("bad", [{"steps": 0}, {"min_frames": 7}, {"t_min": 0.5, "t_max": 0.5}, {"score_window": -1}])
def test_spec_refuses_bad_settings(bad: dict) -> None:
    """Each bad setting is named in one clear error."""
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        SelfForcingSpec(**bad)


def test_a_derived_export_round_trips(tmp_path: Path) -> None:
    """save_derived_export writes weights that load back bit for bit, with the source export's config unchanged."""
    source = tmp_path / "source"
    source.mkdir()
    info = {"model": dataclasses.asdict(TINY_NO_TEXT), "step": 7}
    (source / "config.json").write_text(json.dumps(info))
    model = tiny_model(text=False, seed=3)
    save_derived_export(model, source, tmp_path / "derived")
    loaded, got = load_exported(tmp_path / "derived")
    assert got == info
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
