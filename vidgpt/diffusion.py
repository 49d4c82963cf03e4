"""Diffusion processes, separate from the network and from the training objective (`vidgpt.objective`).

Two processes share one small interface (native time units differ, the network sees `model_time`):
- `GaussianDiffusion`: the paper's DDPM: 1000 steps, linear betas, epsilon prediction; DDIM sampling
  with any number of steps (eta=0 deterministic, eta=1 ancestral-like).
- `RectifiedFlow`: x_t = (1 - t) x0 + t eps, velocity (eps - x0) prediction, Euler sampling.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

# ----------------------------------------------------------------------------- processes


class Diffusion(ABC):
    """A forward noising process, its training target and a deterministic sampler."""

    @abstractmethod
    def sample_time(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Training timesteps (batch,) in native units."""

    @abstractmethod
    def time_at(self, fraction: Tensor) -> Tensor:
        """Native time at a fraction in [0, 1] of the way from clean to pure noise."""

    @abstractmethod
    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t from clean x0 (B, T, C, H, W), noise of the same shape and per-frame t (B, T)."""

    @abstractmethod
    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network is trained to predict."""

    @abstractmethod
    def model_time(self, t: Tensor) -> Tensor:
        """The timestep values fed to the network (0 = clean, up to ~1000)."""

    @abstractmethod
    def schedule(self, steps: int) -> list[tuple[float, float]]:
        """Sampling as (t, t_next) pairs from pure noise down to clean."""

    @abstractmethod
    def step(self, pred: Tensor, x: Tensor, t: float, t_next: float, noise: Tensor | None = None) -> Tensor:
        """One sampling update x_t -> x_{t_next} given the network's prediction at t."""

    def needs_step_noise(self) -> bool:
        return False


class GaussianDiffusion(Diffusion):
    """DDPM with linear betas and epsilon prediction; native time: integer step 0..num_steps-1."""

    def __init__(
        self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, eta: float = 0.0
    ) -> None:
        if num_steps < 2 or not 0 < beta_start < beta_end < 1:
            raise ValueError(f"bad DDPM schedule: num_steps={num_steps}, betas=({beta_start}, {beta_end})")
        self.num_steps = num_steps
        self.eta = eta  # DDIM stochasticity at sampling
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # (num_steps,), float64

    def _abar(self, t: Tensor) -> Tensor:
        return self.alphas_cumprod.to(t.device)[t.long()]

    def sample_time(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        return torch.randint(self.num_steps, (batch,), generator=generator, device=device)

    def time_at(self, fraction: Tensor) -> Tensor:
        return torch.round(fraction.clamp(0, 1) * (self.num_steps - 1)).long()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        abar = self._abar(t)[:, :, None, None, None]  # (B, T, 1, 1, 1)
        return (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).to(x0.dtype)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return noise

    def model_time(self, t: Tensor) -> Tensor:
        return t.float()

    def schedule(self, steps: int) -> list[tuple[float, float]]:
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"DDIM steps must be in [1, {self.num_steps}], got {steps}")
        ts = [self.num_steps - 1]
        if steps > 1:
            ts = torch.linspace(self.num_steps - 1, 0, steps, dtype=torch.float64).round().long().tolist()
        nxt = ts[1:] + [-1]  # -1: fully clean
        return [(float(a), float(b)) for a, b in zip(ts, nxt)]

    def step(self, pred: Tensor, x: Tensor, t: float, t_next: float, noise: Tensor | None = None) -> Tensor:
        """DDIM update with eta = 0 when noise is None, else with the given eta-scaled noise."""
        abar = float(self.alphas_cumprod[int(t)])
        abar_next = 1.0 if t_next < 0 else float(self.alphas_cumprod[int(t_next)])
        x0 = (x - math.sqrt(1 - abar) * pred) / math.sqrt(abar)
        sigma = 0.0
        if noise is not None and t_next >= 0:
            sigma = self.eta * math.sqrt((1 - abar_next) / (1 - abar) * (1 - abar / abar_next))
        out = math.sqrt(abar_next) * x0 + math.sqrt(max(1 - abar_next - sigma**2, 0.0)) * pred
        if sigma:
            out = out + sigma * noise
        return out

    def needs_step_noise(self) -> bool:
        return self.eta > 0


class RectifiedFlow(Diffusion):
    """Rectified flow; native time t in [0, 1] (0 = clean, 1 = noise), x_t = (1 - t) x0 + t eps.

    prediction: what the network outputs.
    - "velocity": eps - x0 (the usual flow target). The clean estimate is x_t - t * pred, so at high t
      the network must cancel the input noise exactly; an undertrained one does not, and Euler sampling
      carries the leftover noise to t = 0 (speckle).
    - "x0": the clean frames. Each Euler step moves x_t toward the estimate along the straight line,
      x_{t'} = x_t + (t' - t) (x_t - x0_hat) / t, so whatever the network's error, the noise in x_t is
      removed in proportion t'/t and the last step returns x0_hat itself: errors show up as blur, not
      as noise. The loss is plain MSE on x0. But the network must rebuild every detail of x0 from its
      own features, even at t ~ 0 where x_t already is x0: a small one returns patch-sized blocks.
    - "x0_skip": x0 with EDM's preconditioning (Karras et al. 2022) on the straight path:
      x0_hat = c_skip(t) x_t + c_out(t) F, c_skip = (1-t) s^2 / ((1-t)^2 s^2 + t^2), c_out = t s /
      sqrt((1-t)^2 s^2 + t^2), s = `data_std`. At low noise x0_hat is mostly x_t itself (a skip
      connection that carries the detail), at high noise mostly the network's F (no noise to cancel,
      as with x0); the training target of F, (x0 - c_skip x_t) / c_out, has unit variance at every t.
      Sampling converts F to x0_hat and steps as for "x0". The skip also passes on the noise the network
      fails to cancel at low t.
    time_sampling: training timesteps uniform in [0, 1] or logit-normal (SD3: sigmoid of N(0, 1), which
    concentrates training on the middle of the path).
    eta: stochastic sampling. Each step re-noises the clean estimate to the next level with a noise made of
    the estimated noise (weight sqrt(1 - eta^2)) and fresh noise (weight eta): x_{t'} = (1 - t') x0_hat +
    t' (sqrt(1 - eta^2) eps_hat + eta z), the DDIM family on the straight path; eta = 0 is the Euler step.
    """

    def __init__(
        self,
        prediction: Literal["velocity", "x0", "x0_skip"] = "velocity",
        time_sampling: Literal["uniform", "logit_normal"] = "uniform",
        eta: float = 0.0,
        data_std: float = 0.5,
    ) -> None:
        if prediction not in ("velocity", "x0", "x0_skip"):
            raise ValueError(f"flow prediction must be 'velocity', 'x0' or 'x0_skip', got {prediction!r}")
        if not data_std > 0:
            raise ValueError(f"flow data_std must be > 0, got {data_std}")
        self.data_std = data_std
        if time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"flow time_sampling must be 'uniform' or 'logit_normal', got {time_sampling!r}")
        if not 0 <= eta <= 1:
            raise ValueError(f"flow eta must be in [0, 1], got {eta}")
        self.prediction = prediction
        self.time_sampling = time_sampling
        self.eta = eta

    def sample_time(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        if self.time_sampling == "logit_normal":
            return torch.sigmoid(torch.randn(batch, generator=generator, device=device))
        return torch.rand(batch, generator=generator, device=device)

    def time_at(self, fraction: Tensor) -> Tensor:
        return fraction.clamp(0, 1).float()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        tt = t.to(x0.dtype)[:, :, None, None, None]
        return (1 - tt) * x0 + tt * noise

    def skip_scales(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(c_skip, c_out) of the "x0_skip" preconditioning at times t (any shape, or a float)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        s2 = self.data_std**2
        norm = (1 - t) ** 2 * s2 + t**2
        return (1 - t) * s2 / norm, t * self.data_std / norm.sqrt()

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.prediction == "x0_skip":  # F's target; 0 at t = 0 (prompt frames, which carry no loss)
            c_skip, c_out = (c.to(x0.dtype)[:, :, None, None, None] for c in self.skip_scales(t))
            x_t = self.add_noise(x0, noise, t)
            return torch.where(c_out > 0, (x0 - c_skip * x_t) / c_out.clamp_min(1e-12), torch.zeros_like(x0))
        return x0 if self.prediction == "x0" else noise - x0

    def model_time(self, t: Tensor) -> Tensor:
        return t.float() * 1000.0

    def schedule(self, steps: int) -> list[tuple[float, float]]:
        if steps < 1:
            raise ValueError(f"flow sampling needs >= 1 step, got {steps}")
        ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
        return list(zip(ts[:-1], ts[1:]))

    def step(self, pred: Tensor, x: Tensor, t: float, t_next: float, noise: Tensor | None = None) -> Tensor:
        if self.prediction == "x0_skip":  # F -> x0_hat, then as "x0"
            c_skip, c_out = (float(c) for c in self.skip_scales(t))
            pred = c_skip * x + c_out * pred
        if noise is not None and t_next > 0:  # stochastic: re-noise the clean estimate
            x0 = pred if self.prediction != "velocity" else x - t * pred
            eps = (x - (1 - t) * x0) / t  # t > 0 at every step of the schedule
            return (1 - t_next) * x0 + t_next * (math.sqrt(1 - self.eta**2) * eps + self.eta * noise)
        if self.prediction != "velocity":  # velocity (x_t - x0_hat) / t
            return x + (t_next - t) / t * (x - pred)
        return x + (t_next - t) * pred

    def needs_step_noise(self) -> bool:
        return self.eta > 0


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DiffusionConfig:
    """The `[diffusion]` section: which noising process, its schedule and its sampler's stochasticity."""

    process: Literal["ddpm", "flow"] = "ddpm"
    """ddpm: the paper's epsilon-prediction DDPM; flow: rectified flow."""
    prediction: Literal["velocity", "x0", "x0_skip"] = "velocity"
    """flow: what the network predicts: the velocity eps - x0, the clean frames x0 (an imperfect network
    leaves blur, not noise), or x0 through EDM's skip preconditioning (see RectifiedFlow)."""
    data_std: float = 0.5
    """flow x0_skip: the data's standard deviation in the preconditioning (EDM's sigma_data)."""
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    """flow: distribution of training timesteps (logit_normal: SD3's sigmoid of a standard normal)."""
    ddim_eta: float = 0.0
    """Sampling stochasticity, 0 = deterministic (ddpm: DDIM's eta; flow: the share of fresh noise in each
    step's re-noising). Used by vidgpt-sample and vidgpt-eval through the export; their --eta overrides it."""
    num_steps: int = 1000
    """ddpm: training steps."""
    beta_start: float = 1e-4
    """ddpm: linear beta schedule start."""
    beta_end: float = 0.02
    """ddpm: linear beta schedule end."""

    def __post_init__(self) -> None:
        if self.ddim_eta < 0 or (self.process == "flow" and self.ddim_eta > 1):
            raise ValueError(f"ddim_eta must be >= 0 (flow: in [0, 1]), got {self.ddim_eta}")
        if self.process != "flow" and (self.prediction, self.time_sampling) != ("velocity", "uniform"):
            raise ValueError("prediction and time_sampling apply to process='flow' only (ddpm predicts the noise)")
        build_diffusion(self)  # the process's own checks (prediction, time sampling, schedule, ...)


def build_diffusion(cfg: DiffusionConfig) -> Diffusion:
    if cfg.process == "ddpm":
        return GaussianDiffusion(cfg.num_steps, cfg.beta_start, cfg.beta_end, cfg.ddim_eta)
    if cfg.process == "flow":
        return RectifiedFlow(cfg.prediction, cfg.time_sampling, cfg.ddim_eta, cfg.data_std)
    raise ValueError(f"diffusion process must be 'ddpm' or 'flow', got {cfg.process!r}")
