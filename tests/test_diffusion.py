from __future__ import annotations

from collections import Counter

import pytest
import torch

from vidgpt.diffusion import (
    DiffusionConfig,
    GaussianDiffusion,
    PromptSampling,
    RectifiedFlow,
    build_diffusion,
    frame_prompt_loss,
)

from conftest import tiny_model

PROCESSES = [GaussianDiffusion(), RectifiedFlow(), RectifiedFlow(prediction="x0")]


# ----------------------------------------------------------------------------- prompt lengths


def test_uniform_rule_covers_its_range() -> None:
    rule = PromptSampling("uniform", min_len=3)
    g = torch.Generator().manual_seed(0)
    draws = Counter(rule.sample(10, g) for _ in range(2000))
    assert set(draws) == set(range(3, 10))  # [p_min, L-1], every value reached
    assert min(draws.values()) > 2000 / 7 * 0.7  # roughly uniform


def test_chunked_rule_matches_the_paper() -> None:
    rule = PromptSampling("chunked", chunk=8)
    assert rule.choices(33) == [1, 9, 17, 25]
    g = torch.Generator().manual_seed(0)
    assert {rule.sample(33, g) for _ in range(500)} == {1, 9, 17, 25}
    assert PromptSampling("chunked", chunk=4).choices(10) == [1, 5, 9]


def test_prompt_rule_errors() -> None:
    with pytest.raises(ValueError, match="no room for a prompt"):
        PromptSampling("uniform", min_len=5).choices(5)
    with pytest.raises(ValueError, match="'uniform' or 'chunked'"):
        PromptSampling("random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 1"):
        PromptSampling("chunked", chunk=0)


def test_prompt_sampling_is_seeded() -> None:
    rule = PromptSampling()
    a = [rule.sample(17, torch.Generator().manual_seed(5)) for _ in range(3)]
    b = [rule.sample(17, torch.Generator().manual_seed(5)) for _ in range(3)]
    assert a == b


def test_per_clip_prompt_lengths_mix_within_a_batch() -> None:
    per_clip = PromptSampling("uniform", min_len=0, per_clip=True)
    lens = per_clip.draw(8, 4000, torch.Generator().manual_seed(0))
    assert lens.shape == (4000,) and lens.dtype == torch.long
    counts = Counter(lens.tolist())
    assert set(counts) == set(range(8)) and min(counts.values()) > 4000 / 8 * 0.8
    assert len(set(per_clip.draw(8, 16, torch.Generator().manual_seed(1)).tolist())) > 1
    assert int(per_clip.draw(8, 500, torch.Generator().manual_seed(2), limit=3).max()) == 3
    # one per batch: sample's own draw repeated, from the same random stream
    shared = PromptSampling("uniform", min_len=0)
    got = [shared.draw(8, 5, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(len(set(g.tolist())) == 1 for g in got)
    assert [int(g[0]) for g in got] == [shared.sample(8, torch.Generator().manual_seed(s)) for s in range(20)]


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
    RectifiedFlow("x0").training_loss(model, x0, lens, generator=torch.Generator().manual_seed(1))
    t, x = model.calls[0]["t"], model.calls[0]["x"]
    for b, p in enumerate(lens.tolist()):
        assert torch.equal(t[b, :p], torch.zeros(p)) and (t[b, p:] > 0).all()
        assert torch.equal(x[b, :p], x0[b, :p]) and (x[b, p:] - x0[b, p:]).abs().mean() > 0.1
    with pytest.raises(ValueError, match=r"prompt_len must be in \[0, 5\].*\[0, 6, 1\]"):
        frame_prompt_loss(pred, target, torch.tensor([0, 6, 1]))
    with pytest.raises(ValueError, match=r"one per clip \(3\)"):
        frame_prompt_loss(pred, target, torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- processes


def test_ddpm_schedule_is_the_papers() -> None:
    d = GaussianDiffusion()
    assert d.num_steps == 1000
    betas = 1 - d.alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), d.alphas_cumprod[:-1]])
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    assert torch.allclose(betas[1:] - betas[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    sched = d.schedule(10)
    assert len(sched) == 10 and sched[0][0] == 999 and sched[-1] == (0.0, -1.0)
    assert all(a > b for a, b in sched)


@pytest.mark.parametrize("diffusion", PROCESSES, ids=["ddpm", "flow", "flow-x0"])
@pytest.mark.parametrize("steps", [1, 3, 20])
def test_sampler_recovers_x0_from_an_oracle(diffusion, steps: int) -> None:  # noqa: ANN001
    """With the exact target as prediction, sampling from pure noise lands exactly on x0."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t0 = diffusion.schedule(steps)[0][0]
    x = diffusion.add_noise(x0, noise, torch.full((2, 3), t0, dtype=torch.float64))
    for t, t_next in diffusion.schedule(steps):
        tt = torch.full((2, 3), t, dtype=torch.float64)
        pred = diffusion.target(x0, noise, tt)
        x = diffusion.step(pred, x, t, t_next)
    torch.testing.assert_close(x, x0, atol=1e-8, rtol=1e-8)


def test_build_diffusion_and_config_errors() -> None:
    assert isinstance(build_diffusion(DiffusionConfig()), GaussianDiffusion)
    assert isinstance(build_diffusion(DiffusionConfig(process="flow")), RectifiedFlow)
    with pytest.raises(ValueError, match="prompt_noise"):
        DiffusionConfig(prompt_noise=(0.2, 0.1))
    with pytest.raises(ValueError, match="text_drop_prob"):
        DiffusionConfig(text_drop_prob=1.5)
    with pytest.raises(ValueError, match="'ddpm' or 'flow'"):
        build_diffusion(DiffusionConfig(process="edm"))  # type: ignore[arg-type]


def test_flow_x0_prediction_cannot_leave_noise_behind() -> None:
    """Velocity prediction that ignores the input noise (eps_hat = 0, the typical failure of an
    undertrained network) carries all of it to t = 0; x0 prediction with the same clean estimate
    returns exactly that estimate, noise-free."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    estimate = 0.5 * x0  # an imperfect but noise-free clean estimate, the same for both
    results = {}
    for prediction in ("velocity", "x0"):
        d = RectifiedFlow(prediction=prediction)
        x = noise.clone()
        for t, t_next in d.schedule(10):
            pred = estimate if prediction == "x0" else -estimate  # velocity with eps_hat = 0
            x = d.step(pred, x, t, t_next)
        results[prediction] = x
    torch.testing.assert_close(results["x0"], estimate, atol=1e-12, rtol=0)
    torch.testing.assert_close(results["velocity"], noise + estimate, atol=1e-12, rtol=0)


@pytest.mark.parametrize("prediction", ["velocity", "x0"])
def test_stochastic_flow_sampling(prediction: str) -> None:
    """eta > 0 re-noises each step: an oracle still lands exactly on x0, an imperfect predictor's
    result depends on the fresh noise, and eta = 0 is the deterministic Euler step."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 4, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)

    def run(d: RectifiedFlow, oracle: bool, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        x = noise.clone()
        for t, t_next in d.schedule(8):
            tt = torch.full((2, 3), t, dtype=torch.float64)
            if oracle:  # the exact clean frames and the noise they imply at x
                pred = d.target(x0, (x - (1 - t) * x0) / t, tt)
            else:  # a wrong clean estimate, no noise estimate
                pred = d.target(0.5 * x, torch.zeros_like(x), tt)
            z = torch.randn(x.shape, generator=gen, dtype=torch.float64) if d.needs_step_noise() else None
            x = d.step(pred, x, t, t_next, z)
        return x

    stochastic = RectifiedFlow(prediction=prediction, eta=1.0)  # type: ignore[arg-type]
    assert stochastic.needs_step_noise() and not RectifiedFlow(prediction=prediction).needs_step_noise()  # type: ignore[arg-type]
    torch.testing.assert_close(run(stochastic, True, 1), x0, atol=1e-9, rtol=0)
    assert (run(stochastic, False, 1) - run(stochastic, False, 2)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="eta must be in"):
        RectifiedFlow(eta=1.5)


def test_flow_options_targets_and_time_sampling() -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 4, 4, generator=g), torch.randn(2, 3, 4, 4, 4, generator=g)
    t = torch.rand(2, 3, generator=g)
    assert torch.equal(RectifiedFlow(prediction="x0").target(x0, noise, t), x0)
    assert torch.equal(RectifiedFlow().target(x0, noise, t), noise - x0)
    uniform = RectifiedFlow().sample_time(20000, torch.Generator().manual_seed(1), torch.device("cpu"))
    logit = RectifiedFlow(time_sampling="logit_normal").sample_time(20000, torch.Generator().manual_seed(1),
                                                                   torch.device("cpu"))
    assert 0 < float(logit.min()) and float(logit.max()) < 1
    middle = lambda ts: float(((ts > 0.25) & (ts < 0.75)).float().mean())  # noqa: E731
    assert abs(middle(uniform) - 0.5) < 0.02 and middle(logit) > 0.65  # sigmoid(N(0,1)): P(|z| < 1.1) ~ 0.73
    assert abs(float(logit.median()) - 0.5) < 0.02
    built = build_diffusion(DiffusionConfig(process="flow", prediction="x0", time_sampling="logit_normal"))
    assert isinstance(built, RectifiedFlow) and (built.prediction, built.time_sampling) == ("x0", "logit_normal")
    with pytest.raises(ValueError, match="process='flow' only"):
        DiffusionConfig(process="ddpm", prediction="x0")
    with pytest.raises(ValueError, match="'velocity', 'x0' or 'x0_skip'"):
        RectifiedFlow(prediction="eps")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- loss


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
    rule = PromptSampling("uniform", min_len=0)
    assert rule.choices(4) == [0, 1, 2, 3]
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 4, 3, 4, 4, generator=g)
    torch.testing.assert_close(frame_prompt_loss(pred, target, prompt_len=0), (pred - target).pow(2).mean())
    model, flow = tiny_model(text=False), RectifiedFlow()
    x0 = torch.randn(2, 4, 4, 8, 8, generator=g)
    loss = flow.training_loss(model, x0, 0, generator=torch.Generator().manual_seed(1))
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
    loss = diffusion.training_loss(model, x0, 2, generator=torch.Generator().manual_seed(0))
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
    d.training_loss(model, x0, 3, prompt_noise=(0.05, 0.1), generator=torch.Generator().manual_seed(0))
    call = model.calls[0]
    assert torch.equal(call["t"][:, :3], torch.zeros(4, 3))
    delta = (call["x"][:, :3] - x0[:, :3]).abs().mean()
    assert 0.01 < delta < 1.0  # lightly noised: t in [50, 100] has sqrt(1 - abar) ~ 0.07..0.14


def test_training_loss_text_dropout_and_determinism() -> None:
    model = Recorder()
    x0 = torch.randn(64, 3, 4, 8, 8)
    text = torch.randn(64, 5, 16)
    d = RectifiedFlow()
    a = d.training_loss(model, x0, 1, text=text, text_drop_prob=0.5, generator=torch.Generator().manual_seed(3))
    b = d.training_loss(model, x0, 1, text=text, text_drop_prob=0.5, generator=torch.Generator().manual_seed(3))
    assert a == b
    drops = model.calls[0]["drop_text"]
    assert torch.equal(drops, model.calls[1]["drop_text"])
    assert 10 < int(drops.sum()) < 54
    c = d.training_loss(model, x0, 1, text=text, text_drop_prob=0.5, generator=torch.Generator().manual_seed(4))
    assert c != a
    with pytest.raises(ValueError, match="prompt_len"):
        d.training_loss(model, x0, 3)


def test_training_step_reduces_loss() -> None:
    """The objective is trainable end to end: a few AdamW steps on one batch lower it."""
    torch.manual_seed(0)
    model = tiny_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    d = GaussianDiffusion()
    x0 = torch.randn(2, 4, 4, 8, 8)

    def loss_at(seed: int) -> torch.Tensor:
        return d.training_loss(model, x0, 1, generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        before = sum(float(loss_at(s)) for s in range(4))
    for step in range(30):
        opt.zero_grad()
        loss_at(step % 4).backward()
        opt.step()
    with torch.no_grad():
        after = sum(float(loss_at(s)) for s in range(4))
    assert after < 0.8 * before


def test_an_export_rebuilds_the_diffusion_it_was_trained_with() -> None:
    import dataclasses

    from vidgpt.checkpoint import CheckpointError
    from vidgpt.config import load_config
    from vidgpt.export import exported_diffusion

    section = dataclasses.asdict(load_config(None, ["--diffusion.process=flow", "--diffusion.prediction=x0",
                                                    "--diffusion.time_sampling=logit_normal"]).diffusion)
    built = exported_diffusion({"diffusion": section})
    assert isinstance(built, RectifiedFlow) and (built.prediction, built.time_sampling) == ("x0", "logit_normal")
    # an export written before prediction/time_sampling existed: today's defaults
    old = exported_diffusion({"diffusion": {"process": "flow", "num_steps": 1000}})
    assert isinstance(old, RectifiedFlow) and old.prediction == "velocity"
    ddpm = exported_diffusion({"diffusion": {"process": "ddpm", "num_steps": 500}})
    assert isinstance(ddpm, GaussianDiffusion) and ddpm.num_steps == 500
    assert isinstance(exported_diffusion({}), GaussianDiffusion)
    with pytest.raises(CheckpointError, match="bad diffusion section"):
        exported_diffusion({"diffusion": {"process": "ddpm", "prediction": "x0"}})


@pytest.mark.parametrize("diffusion", PROCESSES)
def test_noising_is_fp32_and_only_the_network_input_is_cast(diffusion) -> None:  # noqa: ANN001
    """bf16 latents and bf16 training: x_t is built in fp32 from the same draws as an fp32 run and rounded
    once to bf16; the loss is measured against the fp32 target."""
    x0 = torch.randn(3, 5, 4, 8, 8).bfloat16()
    fp32, bf16 = Recorder(), Recorder()
    bf16.net.load_state_dict(fp32.net.state_dict())
    bf16.net.bfloat16()  # the network computes in bf16, as under DeepSpeed's bf16
    ref = diffusion.training_loss(fp32, x0.float(), 2, generator=torch.Generator().manual_seed(3))
    got = diffusion.training_loss(bf16, x0, 2, generator=torch.Generator().manual_seed(3), input_dtype=torch.bfloat16)
    x_ref, x_got = fp32.calls[0]["x"], bf16.calls[0]["x"]
    assert x_ref.dtype == torch.float32 and x_got.dtype == torch.bfloat16
    assert torch.equal(x_got, x_ref.bfloat16())  # noised in fp32, rounded once
    assert torch.equal(bf16.calls[0]["t"], fp32.calls[0]["t"])
    assert got.dtype == torch.float32
    # the loss compares the bf16 output against the fp32 target: only the output's rounding differs
    assert abs(got.item() - ref.item()) < 1e-2 * ref.item()


def test_prompt_limit_keeps_a_real_noisy_frame_and_changes_nothing_it_does_not_cut() -> None:
    rule = PromptSampling("uniform")
    free = [rule.sample(8, torch.Generator().manual_seed(s)) for s in range(50)]
    same = [rule.sample(8, torch.Generator().manual_seed(s), limit=7) for s in range(50)]
    assert free == same  # a limit that cuts nothing leaves the draws alone (exact resume of old runs)
    cut = [rule.sample(8, torch.Generator().manual_seed(s), limit=3) for s in range(50)]
    assert set(cut) == {1, 2, 3}
    chunked = PromptSampling("chunked", chunk=8)
    assert {chunked.sample(33, torch.Generator().manual_seed(s), limit=12) for s in range(50)} == {1, 9}
    assert PromptSampling("uniform", min_len=4).sample(8, limit=2) == 2  # below the rule's minimum: the limit


def test_x0_skip_preconditioning_recovers_x0_and_has_unit_variance_targets() -> None:
    flow = RectifiedFlow("x0_skip", data_std=0.5)
    g = torch.Generator().manual_seed(3)
    x0 = 0.5 * torch.randn(4, 3, 2, 16, 16, generator=g, dtype=torch.float64)  # data of std 0.5
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for t in (0.05, 0.3, 0.6, 0.95):
        tt = torch.full((4, 3), t, dtype=torch.float64)
        target = flow.target(x0, noise, tt)
        assert abs(float(target.std()) - 1.0) < 0.05, (t, float(target.std()))  # EDM: unit variance at every t
        x_t = flow.add_noise(x0, noise, tt)
        c_skip, c_out = (float(c) for c in flow.skip_scales(t))
        torch.testing.assert_close(c_skip * x_t + c_out * target, x0)  # a perfect F gives x0 back
        # one deterministic step from t to 0 with the perfect F lands on x0 (the "x0" update's last step)
        torch.testing.assert_close(flow.step(target, x_t, t, 0.0), x0)
    assert torch.equal(flow.target(x0, noise, torch.zeros(4, 3, dtype=torch.float64)), torch.zeros_like(x0))
    c_skip, c_out = flow.skip_scales(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert c_skip.tolist() == [1.0, 0.0] and c_out.tolist() == [0.0, 0.5]  # input at t = 0, network at t = 1


# ----------------------------------------------------------------------------- loss weighting


def test_snr_clamp_weights_have_the_known_values() -> None:
    flow = RectifiedFlow("x0", loss_weighting="snr_clamp", snr_max=5.0)
    t = torch.tensor([0.0, 0.2, 0.4, 0.5, 0.8, 1.0])
    # SNR = ((1 - t) / t)^2: inf, 16, 2.25, 1, 1/16, 0 -> clamped to [1, 5]
    torch.testing.assert_close(flow.loss_weight(t), torch.tensor([5.0, 5.0, 2.25, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(RectifiedFlow("x0", loss_weighting="snr_clamp", snr_max=20.0).loss_weight(t),
                               torch.tensor([20.0, 16.0, 2.25, 1.0, 1.0, 1.0]))
    assert RectifiedFlow("x0").loss_weight(t) is None and GaussianDiffusion().loss_weight(t) is None


def test_weighted_training_loss_is_the_hand_weighted_mean() -> None:
    """A network that predicts zeros has per-sample x0 error mean(x0^2) over the noisy frames; the
    weighted loss must be the mean of those errors times each sample's weight at its drawn time."""
    x0 = torch.randn(6, 5, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    zeros = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    flow = RectifiedFlow("x0", loss_weighting="snr_clamp", snr_max=5.0)
    got = flow.training_loss(zeros, x0, 2, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the draws of training_loss: the noise, then the times
    torch.randn(x0.shape, generator=g)
    t = torch.rand(6, generator=g)
    weight = (((1 - t) / t) ** 2).clamp(1, 5)
    assert weight.min() < 1.5 and weight.max() > 4  # the draw covers both ends of the clamp
    per_sample = x0[:, 2:].pow(2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(got, (weight * per_sample).mean())
    plain = RectifiedFlow("x0").training_loss(zeros, x0, 2, generator=torch.Generator().manual_seed(7))
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

    flow = RectifiedFlow("x0", loss_weighting="snr_clamp", snr_max=5.0)
    got = flow.training_loss(zeros, x0, 2, generator=torch.Generator().manual_seed(7), per_frame_noise=True)
    g = torch.Generator().manual_seed(7)  # the draws: the noise, then one time per frame
    torch.randn(x0.shape, generator=g)
    t = torch.rand(4 * 5, generator=g).view(4, 5)
    torch.testing.assert_close(seen[0], torch.where(torch.arange(5) < 2, 0.0, t) * 1000)  # prompts stay at 0
    assert (seen[0][:, 2:].std(dim=1) > 0).all()  # the frames of one clip differ
    weight = (((1 - t) / t) ** 2).clamp(1, 5)[:, 2:]  # (4, 3): per frame
    per_frame = x0[:, 2:].pow(2).mean(dim=(2, 3, 4))  # (4, 3)
    torch.testing.assert_close(got, (weight * per_frame).mean())
    shared = flow.training_loss(zeros, x0, 2, generator=torch.Generator().manual_seed(7))
    assert (seen[1][:, 2:].std(dim=1) == 0).all() and not torch.isclose(shared, got)  # the default: one per clip
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        frame_prompt_loss(x0, torch.zeros_like(x0), 2, weight=torch.ones(4, 4))
    from vidgpt.config import load_config

    assert load_config(None, ["--diffusion.per_frame_noise=true"]).diffusion.build().per_frame_noise is True
    assert load_config(None, []).diffusion.build().per_frame_noise is False


def test_loss_weighting_options_are_checked() -> None:
    import dataclasses

    from vidgpt.config import ConfigError, load_config
    from vidgpt.export import exported_diffusion

    x0 = ["--diffusion.process=flow", "--diffusion.prediction=x0"]
    cfg = load_config(None, [*x0, "--diffusion.loss_weighting=snr_clamp", "--diffusion.snr_max=20"])
    built = build_diffusion(cfg.diffusion.build())
    assert isinstance(built, RectifiedFlow) and (built.loss_weighting, built.snr_max) == ("snr_clamp", 20.0)
    again = exported_diffusion({"diffusion": dataclasses.asdict(cfg.diffusion)})
    assert isinstance(again, RectifiedFlow) and again.loss_weighting == "snr_clamp"
    for bad, match in [
        (["--diffusion.process=flow", "--diffusion.loss_weighting=snr_clamp"], "needs prediction 'x0'"),
        (["--diffusion.loss_weighting=snr_clamp"], "apply to process='flow' only"),
        ([*x0, "--diffusion.loss_weighting=snr_clamp", "--diffusion.snr_max=0.5"], "snr_max must be a number >= 1"),
        ([*x0, "--diffusion.loss_weighting=minsnr"], "diffusion.loss_weighting"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, bad)
    with pytest.raises(ValueError, match="needs prediction 'x0'"):
        RectifiedFlow("velocity", loss_weighting="snr_clamp")
