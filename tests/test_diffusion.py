from __future__ import annotations

import dataclasses

import pytest
import torch

from vidgpt.checkpoint import CheckpointError
from vidgpt.config import load_config
from vidgpt.diffusion import DiffusionConfig, GaussianDiffusion, RectifiedFlow, build_diffusion
from vidgpt.export import exported_diffusion
from vidgpt.objective import FramePromptObjective

PROCESSES = [GaussianDiffusion(), RectifiedFlow(), RectifiedFlow(prediction="x0")]


# ----------------------------------------------------------------------------- prompt lengths


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
        FramePromptObjective(prompt_noise=[0.2, 0.1])
    with pytest.raises(ValueError, match="text_drop_prob"):
        FramePromptObjective(text_drop_prob=1.5)
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


def test_an_export_rebuilds_the_diffusion_it_was_trained_with() -> None:
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


