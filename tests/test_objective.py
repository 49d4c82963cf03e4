"""The frame-as-prompt objective: prompt lengths, the loss over noisy frames, prompt noise, text dropout,
loss weighting and per-frame noise, on known cases."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from vidgpt.config import ConfigError, load_config
from vidgpt.diffusion import GaussianDiffusion, RectifiedFlow
from vidgpt.objective import FramePromptObjective, LossBatch, frame_prompt_loss

from conftest import tiny_model

PROCESSES = [GaussianDiffusion(), RectifiedFlow(), RectifiedFlow(prediction="x0")]


def test_uniform_rule_covers_its_range() -> None:
    rule = FramePromptObjective(prompt_rule="uniform", prompt_min_len=3)
    g = torch.Generator().manual_seed(0)
    draws = Counter(rule.sample_prompt_length(10, g) for _ in range(2000))
    assert set(draws) == set(range(3, 10))  # [p_min, L-1], every value reached
    assert min(draws.values()) > 2000 / 7 * 0.7  # roughly uniform


def test_chunked_rule_matches_the_paper() -> None:
    rule = FramePromptObjective(prompt_rule="chunked", prompt_chunk=8)
    assert rule.prompt_choices(33) == [1, 9, 17, 25]
    g = torch.Generator().manual_seed(0)
    assert {rule.sample_prompt_length(33, g) for _ in range(500)} == {1, 9, 17, 25}
    assert FramePromptObjective(prompt_rule="chunked", prompt_chunk=4).prompt_choices(10) == [1, 5, 9]


def test_prompt_rule_errors() -> None:
    with pytest.raises(ValueError, match="no room for a prompt"):
        FramePromptObjective(prompt_rule="uniform", prompt_min_len=5).prompt_choices(5)
    with pytest.raises(ValueError, match="'uniform' or 'chunked'"):
        FramePromptObjective(prompt_rule="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prompt_chunk >= 1"):
        FramePromptObjective(prompt_rule="chunked", prompt_chunk=0)


def test_prompt_sampling_is_seeded() -> None:
    rule = FramePromptObjective()
    a = [rule.sample_prompt_length(17, torch.Generator().manual_seed(5)) for _ in range(3)]
    b = [rule.sample_prompt_length(17, torch.Generator().manual_seed(5)) for _ in range(3)]
    assert a == b


def test_per_clip_prompt_lengths_mix_within_a_batch() -> None:
    per_clip = FramePromptObjective(prompt_rule="uniform", prompt_min_len=0, prompt_per_clip=True)
    lens = per_clip.draw_prompt_lengths(8, 4000, torch.Generator().manual_seed(0))
    assert lens.shape == (4000,) and lens.dtype == torch.long
    counts = Counter(lens.tolist())
    assert set(counts) == set(range(8)) and min(counts.values()) > 4000 / 8 * 0.8
    assert len(set(per_clip.draw_prompt_lengths(8, 16, torch.Generator().manual_seed(1)).tolist())) > 1
    assert int(per_clip.draw_prompt_lengths(8, 500, torch.Generator().manual_seed(2), limit=3).max()) == 3
    # one per batch: sample's own draw repeated, from the same random stream
    shared = FramePromptObjective(prompt_rule="uniform", prompt_min_len=0)
    got = [shared.draw_prompt_lengths(8, 5, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(len(set(g.tolist())) == 1 for g in got)
    assert [int(g[0]) for g in got] == [shared.sample_prompt_length(8, torch.Generator().manual_seed(s)) for s in range(20)]


def test_loss_with_per_clip_prompt_lengths() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 6, 2, 4, 4, generator=g, requires_grad=True)
    target = torch.randn(3, 6, 2, 4, 4, generator=g)
    lens = torch.tensor([0, 2, 5])
    loss = frame_prompt_loss(pred, target, lens)
    loss.backward()
    per_frame = (pred - target).pow(2).mean(dim=(2, 3, 4))
    torch.testing.assert_close(loss, torch.cat([per_frame[0], per_frame[1, 2:], per_frame[2, 5:]]).mean())
    assert pred.grad[1, :2].abs().max() == 0 and pred.grad[2, :5].abs().max() == 0
    assert pred.grad[0].abs().min() > 0 and pred.grad[1, 2:].abs().min() > 0
    # the model sees each clip's own prompt frames clean at t = 0, its other frames noised
    model = Recorder()
    x0 = torch.randn(3, 6, 4, 8, 8, generator=g)
    FramePromptObjective().loss_at(model, RectifiedFlow("x0"), x0, lens, generator=torch.Generator().manual_seed(1))
    t, x = model.calls[0]["t"], model.calls[0]["x"]
    for b, p in enumerate(lens.tolist()):
        assert torch.equal(t[b, :p], torch.zeros(p)) and (t[b, p:] > 0).all()
        assert torch.equal(x[b, :p], x0[b, :p]) and (x[b, p:] - x0[b, p:]).abs().mean() > 0.1
    with pytest.raises(ValueError, match=r"prompt_len must be in \[0, 5\].*\[0, 6, 1\]"):
        frame_prompt_loss(pred, target, torch.tensor([0, 6, 1]))
    with pytest.raises(ValueError, match=r"one per clip \(3\)"):
        frame_prompt_loss(pred, target, torch.tensor([0, 1]))


def test_loss_ignores_prompt_frames() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 8, 4, 4, 4, generator=g, requires_grad=True)
    target = torch.randn(3, 8, 4, 4, 4, generator=g)
    loss = frame_prompt_loss(pred, target, prompt_len=3)
    loss.backward()
    assert pred.grad[:, :3].abs().max() == 0
    assert (pred.grad[:, 3:] != 0).all()
    # prompt targets may be anything, even non-finite, without touching the loss
    target2 = target.clone()
    target2[:, :3] = float("inf")
    assert frame_prompt_loss(pred, target2, prompt_len=3) == loss
    want = (pred[:, 3:] - target[:, 3:]).pow(2).mean()
    torch.testing.assert_close(loss, want)


def test_zero_frame_prompts_train_every_frame_for_text_to_video() -> None:
    rule = FramePromptObjective(prompt_rule="uniform", prompt_min_len=0)
    assert rule.prompt_choices(4) == [0, 1, 2, 3]
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 4, 3, 4, 4, generator=g)
    torch.testing.assert_close(frame_prompt_loss(pred, target, prompt_len=0), (pred - target).pow(2).mean())
    model, flow = tiny_model(text=False), RectifiedFlow()
    x0 = torch.randn(2, 4, 4, 8, 8, generator=g)
    loss = FramePromptObjective().loss_at(model, flow, x0, 0, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and loss > 0


def test_loss_ignores_padding_frames() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 6, 1, 2, 2, generator=g, requires_grad=True)
    target = torch.randn(2, 6, 1, 2, 2, generator=g)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    loss = frame_prompt_loss(pred, target, 2, valid)
    loss.backward()
    assert pred.grad[1, 4:].abs().max() == 0 and pred.grad[0, 4:].abs().min() > 0
    per_frame = (pred - target).pow(2).mean(dim=(2, 3, 4))
    torch.testing.assert_close(loss, torch.cat([per_frame[0, 2:], per_frame[1, 2:4]]).mean())


class Recorder(torch.nn.Module):
    """Wraps the tiny model and records what the loss fed it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_model()
        self.calls: list[dict] = []

    def forward(self, x, t, **kw):  # noqa: ANN001, ANN003, ANN201
        self.calls.append({"x": x.detach().clone(), "t": t.clone(), **kw})
        return self.net(x, t, **kw)


@pytest.mark.parametrize("diffusion", PROCESSES, ids=["ddpm", "flow", "flow-x0"])
def test_training_loss_feeds_clean_prompts_at_t0(diffusion) -> None:  # noqa: ANN001
    model = Recorder()
    x0 = torch.randn(4, 6, 4, 8, 8)
    loss = FramePromptObjective().loss_at(model, diffusion, x0, 2, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    call = model.calls[0]
    assert torch.equal(call["x"][:, :2], x0[:, :2])  # prompt frames clean
    assert (call["x"][:, 2:] - x0[:, 2:]).abs().mean() > 0.1  # the rest noised
    assert torch.equal(call["t"][:, :2], torch.zeros(4, 2))
    # one noise level per sample for all its noisy frames
    assert (call["t"][:, 2:] == call["t"][:, 2:3]).all()
    assert call["t"][:, 2:].max() > 0


def test_training_loss_prompt_noise_keeps_label_zero() -> None:
    model = Recorder()
    x0 = torch.randn(4, 6, 4, 8, 8)
    d = GaussianDiffusion()
    FramePromptObjective(prompt_noise=[0.05, 0.1]).loss_at(model, d, x0, 3, generator=torch.Generator().manual_seed(0))
    call = model.calls[0]
    assert torch.equal(call["t"][:, :3], torch.zeros(4, 3))
    delta = (call["x"][:, :3] - x0[:, :3]).abs().mean()
    assert 0.01 < delta < 1.0  # lightly noised: t in [50, 100] has sqrt(1 - abar) ~ 0.07..0.14


def test_training_loss_text_dropout_and_determinism() -> None:
    model = Recorder()
    x0 = torch.randn(64, 3, 4, 8, 8)
    text = torch.randn(64, 5, 16)
    d, objective = RectifiedFlow(), FramePromptObjective(text_drop_prob=0.5)
    a = objective.loss_at(model, d, x0, 1, text=text, generator=torch.Generator().manual_seed(3))
    b = objective.loss_at(model, d, x0, 1, text=text, generator=torch.Generator().manual_seed(3))
    assert a == b
    drops = model.calls[0]["drop_text"]
    assert torch.equal(drops, model.calls[1]["drop_text"])
    assert 10 < int(drops.sum()) < 54
    c = objective.loss_at(model, d, x0, 1, text=text, generator=torch.Generator().manual_seed(4))
    assert c != a
    objective.loss_at(model, d, x0, 1, text=text, generator=torch.Generator().manual_seed(3), training=False)
    assert model.calls[-1]["drop_text"] is None  # validation keeps every caption
    with pytest.raises(ValueError, match="prompt_len"):
        objective.loss_at(model, d, x0, 3)


def test_training_step_reduces_loss() -> None:
    """The objective is trainable end to end: a few AdamW steps on one batch lower it."""
    torch.manual_seed(0)
    model = tiny_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    d = GaussianDiffusion()
    x0 = torch.randn(2, 4, 4, 8, 8)

    def loss_at(seed: int) -> torch.Tensor:
        return FramePromptObjective().loss_at(model, d, x0, 1, generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        before = sum(float(loss_at(s)) for s in range(4))
    for step in range(30):
        opt.zero_grad()
        loss_at(step % 4).backward()
        opt.step()
    with torch.no_grad():
        after = sum(float(loss_at(s)) for s in range(4))
    assert after < 0.8 * before


@pytest.mark.parametrize("diffusion", PROCESSES)
def test_noising_is_fp32_and_only_the_network_input_is_cast(diffusion) -> None:  # noqa: ANN001
    """bf16 latents and bf16 training: x_t is built in fp32 from the same draws as an fp32 run and rounded
    once to bf16; the loss is measured against the fp32 target."""
    x0 = torch.randn(3, 5, 4, 8, 8).bfloat16()
    fp32, bf16 = Recorder(), Recorder()
    bf16.net.load_state_dict(fp32.net.state_dict())
    bf16.net.bfloat16()  # the network computes in bf16, as under DeepSpeed's bf16
    objective = FramePromptObjective()
    ref = objective.loss_at(fp32, diffusion, x0.float(), 2, generator=torch.Generator().manual_seed(3))
    got = objective.loss_at(bf16, diffusion, x0, 2, generator=torch.Generator().manual_seed(3), input_dtype=torch.bfloat16)
    x_ref, x_got = fp32.calls[0]["x"], bf16.calls[0]["x"]
    assert x_ref.dtype == torch.float32 and x_got.dtype == torch.bfloat16
    assert torch.equal(x_got, x_ref.bfloat16())  # noised in fp32, rounded once
    assert torch.equal(bf16.calls[0]["t"], fp32.calls[0]["t"])
    assert got.dtype == torch.float32
    # the loss compares the bf16 output against the fp32 target: only the output's rounding differs
    assert abs(got.item() - ref.item()) < 1e-2 * ref.item()


def test_prompt_limit_keeps_a_real_noisy_frame_and_changes_nothing_it_does_not_cut() -> None:
    rule = FramePromptObjective(prompt_rule="uniform")
    free = [rule.sample_prompt_length(8, torch.Generator().manual_seed(s)) for s in range(50)]
    same = [rule.sample_prompt_length(8, torch.Generator().manual_seed(s), limit=7) for s in range(50)]
    assert free == same  # a limit that cuts nothing leaves the draws alone (exact resume of old runs)
    cut = [rule.sample_prompt_length(8, torch.Generator().manual_seed(s), limit=3) for s in range(50)]
    assert set(cut) == {1, 2, 3}
    chunked = FramePromptObjective(prompt_rule="chunked", prompt_chunk=8)
    assert {chunked.sample_prompt_length(33, torch.Generator().manual_seed(s), limit=12) for s in range(50)} == {1, 9}
    at_least_4 = FramePromptObjective(prompt_rule="uniform", prompt_min_len=4)
    assert at_least_4.sample_prompt_length(8, limit=2) == 2  # below the rule's minimum: the limit


def test_snr_clamp_weights_have_the_known_values() -> None:
    weighted = FramePromptObjective(loss_weighting="snr_clamp", snr_max=5.0)
    t = torch.tensor([0.0, 0.2, 0.4, 0.5, 0.8, 1.0])
    # SNR = ((1 - t) / t)^2: inf, 16, 2.25, 1, 1/16, 0 -> clamped to [1, 5]
    torch.testing.assert_close(weighted.loss_weight(t), torch.tensor([5.0, 5.0, 2.25, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(FramePromptObjective(loss_weighting="snr_clamp", snr_max=20.0).loss_weight(t),
                               torch.tensor([20.0, 16.0, 2.25, 1.0, 1.0, 1.0]))
    assert FramePromptObjective().loss_weight(t) is None


def test_weighted_training_loss_is_the_hand_weighted_mean() -> None:
    """A network that predicts zeros has per-sample x0 error mean(x0^2) over the noisy frames; the
    weighted loss must be the mean of those errors times each sample's weight at its drawn time."""
    x0 = torch.randn(6, 5, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    zeros = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    flow, weighted = RectifiedFlow("x0"), FramePromptObjective(loss_weighting="snr_clamp", snr_max=5.0)
    got = weighted.loss_at(zeros, flow, x0, 2, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the draws of the loss: the noise, then the times
    torch.randn(x0.shape, generator=g)
    t = torch.rand(6, generator=g)
    weight = (((1 - t) / t) ** 2).clamp(1, 5)
    assert weight.min() < 1.5 and weight.max() > 4  # the draw covers both ends of the clamp
    per_sample = x0[:, 2:].pow(2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(got, (weight * per_sample).mean())
    plain = FramePromptObjective().loss_at(zeros, flow, x0, 2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(plain, per_sample.mean())
    with pytest.raises(ValueError, match=r"loss weight must be \(B,\)"):
        frame_prompt_loss(x0, torch.zeros_like(x0), 2, weight=torch.ones(3))


def test_per_frame_noise_draws_a_timestep_and_a_weight_per_frame() -> None:
    """Diffusion Forcing's training: each noisy frame its own time; rebuilt by hand from the same draws."""
    x0 = torch.randn(4, 5, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []

    def zeros(x: torch.Tensor, t: torch.Tensor, **kw: object) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x)

    flow = RectifiedFlow("x0")
    per_frame = FramePromptObjective(loss_weighting="snr_clamp", snr_max=5.0, per_frame_noise=True)
    got = per_frame.loss_at(zeros, flow, x0, 2, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the draws: the noise, then one time per frame
    torch.randn(x0.shape, generator=g)
    t = torch.rand(4 * 5, generator=g).view(4, 5)
    torch.testing.assert_close(seen[0], torch.where(torch.arange(5) < 2, 0.0, t) * 1000)  # prompts stay at 0
    assert (seen[0][:, 2:].std(dim=1) > 0).all()  # the frames of one clip differ
    weight = (((1 - t) / t) ** 2).clamp(1, 5)[:, 2:]  # (4, 3): per frame
    errors = x0[:, 2:].pow(2).mean(dim=(2, 3, 4))  # (4, 3)
    torch.testing.assert_close(got, (weight * errors).mean())
    shared = FramePromptObjective(loss_weighting="snr_clamp", snr_max=5.0).loss_at(
        zeros, flow, x0, 2, generator=torch.Generator().manual_seed(7))
    assert (seen[1][:, 2:].std(dim=1) == 0).all() and not torch.isclose(shared, got)  # the default: one per clip
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        frame_prompt_loss(x0, torch.zeros_like(x0), 2, weight=torch.ones(4, 4))
    assert load_config(None, ["--objective.per_frame_noise=true"]).objective.per_frame_noise is True
    assert load_config(None, []).objective.per_frame_noise is False


def test_loss_weighting_options_are_checked() -> None:
    x0 = ["--diffusion.process=flow", "--diffusion.prediction=x0"]
    cfg = load_config(None, [*x0, "--objective.loss_weighting=snr_clamp", "--objective.snr_max=20"])
    assert (cfg.objective.loss_weighting, cfg.objective.snr_max) == ("snr_clamp", 20.0)
    for bad, match in [
        (["--diffusion.process=flow", "--objective.loss_weighting=snr_clamp"], "needs diffusion.process 'flow' with"),
        (["--objective.loss_weighting=snr_clamp"], "needs diffusion.process 'flow' with prediction 'x0'"),
        ([*x0, "--objective.loss_weighting=snr_clamp", "--objective.snr_max=0.5"], "snr_max must be a number >= 1"),
        ([*x0, "--objective.loss_weighting=minsnr"], "objective.loss_weighting"),
        (["--diffusion.time_sampling=logit_normal"], "apply to process='flow' only"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, bad)
    with pytest.raises(ValueError, match="needs diffusion.process 'flow'"):
        FramePromptObjective(loss_weighting="snr_clamp").check_process(RectifiedFlow("velocity"))


def test_one_loss_call_draws_prompt_lengths_then_noise_for_training_and_validation() -> None:
    """`loss` (the trainer's and the validator's one call) is `loss_at` at the prompt lengths drawn from
    the prompt stream, with the limit of the batch; the same streams give the same loss."""
    objective = FramePromptObjective(prompt_rule="uniform", prompt_min_len=0, prompt_per_clip=True,
                                     prompt_noise=[0.0, 0.1], text_drop_prob=0.5)
    flow, model = RectifiedFlow("x0"), tiny_model()
    g = torch.Generator().manual_seed(0)
    batch = LossBatch(torch.randn(3, 6, 4, 8, 8, generator=g), torch.ones(3, 6, dtype=torch.bool),
                      torch.randn(3, 5, 16, generator=g), None, prompt_limit=3)
    got = objective.loss(model, flow, batch, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    lens = objective.draw_prompt_lengths(6, 3, torch.Generator().manual_seed(2), limit=3)
    assert int(lens.max()) <= 3
    want = objective.loss_at(model, flow, batch.latents, lens, generator=torch.Generator().manual_seed(1),
                             valid=batch.valid, text=batch.text)
    assert torch.equal(got, want)
    held_out = objective.loss(model, flow, batch, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2),
                              training=False)
    assert not torch.equal(held_out, got)  # no caption dropped in validation


@pytest.mark.parametrize("prompt_noise", [[0.0, 0.0], [0.0, 0.1]], ids=["clean", "prompt-noise"])
def test_context_replaces_what_the_prompt_frames_show_and_nothing_else(prompt_noise) -> None:  # noqa: ANN001
    """Training on the model's own rollouts: `context` is what the network sees for the prompt frames (with the
    same prompt noise and label t = 0); the noisy frames, the target and every random draw stay x0's."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 6, 4, 8, 8, generator=g)
    context = torch.randn(3, 6, 4, 8, 8, generator=g)  # e.g. generated frames; frames >= P are never read
    lens = torch.tensor([1, 3, 5])
    flow, objective = RectifiedFlow("x0"), FramePromptObjective(prompt_noise=prompt_noise, per_frame_noise=True)
    plain, swapped, same = Recorder(), Recorder(), Recorder()
    swapped.net.load_state_dict(plain.net.state_dict())
    same.net.load_state_dict(plain.net.state_dict())
    ref = objective.loss_at(plain, flow, x0, lens, generator=torch.Generator().manual_seed(4))
    got = objective.loss_at(swapped, flow, x0, lens, generator=torch.Generator().manual_seed(4), context=context)
    again = objective.loss_at(same, flow, x0, lens, generator=torch.Generator().manual_seed(4), context=x0.clone())
    assert again == ref  # the context of x0 itself: the plain loss, from the same draws
    x_ref, x_got, x_plain_again = plain.calls[0]["x"], swapped.calls[0]["x"], same.calls[0]["x"]
    assert torch.equal(x_plain_again, x_ref)
    assert torch.equal(swapped.calls[0]["t"], plain.calls[0]["t"])  # prompts still labelled 0, same times
    lo_noise = prompt_noise[1] == 0
    for b, p in enumerate(lens.tolist()):
        assert torch.equal(x_got[b, p:], x_ref[b, p:])  # the noisy frames are x0's, noised alike
        if lo_noise:
            assert torch.equal(x_got[b, :p], context[b, :p])
        else:  # the context is lightly noised like a prompt: x_t = (1 - u) c + u n, the same u and n as x0's
            delta = x_got[b, :p] - x_ref[b, :p]
            scale = (delta / (context[b, :p] - x0[b, :p])).flatten()
            assert 0.9 <= float(scale.min()) and float(scale.max()) - float(scale.min()) < 1e-4
    assert got != ref  # the network saw other frames, so it predicts other ones
    with pytest.raises(ValueError, match="context must be shaped like x0"):
        objective.loss_at(plain, flow, x0, lens, context=context[:, :4])
