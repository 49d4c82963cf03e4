"""Diffusion processes and the frame-as-prompt training objective, separate from the network.

Two processes share one small interface (native time units differ, the network sees `model_time`):
- `GaussianDiffusion`: the paper's DDPM: 1000 steps, linear betas, epsilon prediction; DDIM sampling
  with any number of steps (eta=0 deterministic, eta=1 ancestral-like).
- `RectifiedFlow`: x_t = (1 - t) x0 + t eps, velocity (eps - x0) prediction, Euler sampling.

Frame as prompt: a clip of L frames is split into P clean prompt frames (timestep 0, optionally lightly
noised while still labelled 0) and L - P noisy frames; the loss is averaged over noisy frames only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Predictor = Callable[..., Tensor]


# ----------------------------------------------------------------------------- prompt lengths


@dataclass(frozen=True)
class PromptSampling:
    """How many clean prompt frames a training clip gets; drawn once per batch, or once per clip."""

    rule: Literal["uniform", "chunked"] = "uniform"
    """uniform: P in [min_len, L-1]; chunked: P in {1, 1+chunk, 1+2*chunk, ...} below L."""
    min_len: int = 1
    """Smallest prompt length of the uniform rule; 0 also trains clips with no prompt at all, generated
    from the caption alone (what text to video, `vidgpt-sample --caption` without `--prompt`, needs)."""
    chunk: int = 8
    """Step of the chunked rule (the paper: 8, giving {1, 9, 17, 25} for L = 33)."""
    per_clip: bool = False
    """False: one length for the whole batch (the paper's code); True: each clip of a batch draws its own,
    so every optimizer step mixes prompt lengths."""

    def __post_init__(self) -> None:
        if self.rule not in ("uniform", "chunked"):
            raise ValueError(f"prompt rule must be 'uniform' or 'chunked', got {self.rule!r}")
        if self.min_len < 0 or self.chunk < 1:
            raise ValueError(f"prompt min_len must be >= 0 and chunk >= 1, got {self.min_len}, {self.chunk}")

    def choices(self, clip_len: int) -> list[int]:
        """Every prompt length the rule allows for clips of `clip_len` frames (at least one noisy frame)."""
        if self.rule == "uniform":
            out = list(range(self.min_len, clip_len))
        else:
            out = list(range(1, clip_len, self.chunk))
        if not out:
            raise ValueError(f"clips of {clip_len} frames leave no room for a prompt under {self}")
        return out

    def sample(self, clip_len: int, generator: torch.Generator | None = None, limit: int | None = None) -> int:
        """A prompt length for clips of `clip_len` frames; limit: the most it may be (a batch whose shortest
        clip has v real frames passes v - 1, so that every clip keeps a real noisy frame; padding frames
        carry no loss). The draw is the same as without a limit whenever the limit cuts nothing."""
        options = self._allowed(clip_len, limit)
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    def draw(self, clip_len: int, batch: int, generator: torch.Generator | None = None,
             limit: int | None = None) -> Tensor:
        """Prompt lengths of a batch, (batch,) int64 on the CPU: `sample`'s one draw repeated (the same
        random stream as `sample`), or with per_clip one draw per clip from the same choices."""
        if not self.per_clip:
            return torch.full((batch,), self.sample(clip_len, generator, limit), dtype=torch.long)
        options = torch.tensor(self._allowed(clip_len, limit), dtype=torch.long)
        return options[torch.randint(len(options), (batch,), generator=generator)]

    def _allowed(self, clip_len: int, limit: int | None) -> list[int]:
        options = self.choices(clip_len)
        if limit is not None and limit < options[-1]:
            options = [p for p in options if p <= limit] or [max(min(1, self.min_len), limit)]
        return options


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

    def loss_weight(self, t: Tensor) -> Tensor | None:
        """Per-sample loss weights (B,) at the training times t (B,), or None: every sample weighs 1."""
        return None

    def training_loss(
        self,
        model: Predictor,
        x0: Tensor,
        prompt_len: int | Tensor,
        *,
        generator: torch.Generator | None = None,
        valid: Tensor | None = None,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
        text_drop_prob: float = 0.0,
        prompt_noise: tuple[float, float] = (0.0, 0.0),
        input_dtype: torch.dtype | None = None,
        per_frame_noise: bool = False,
    ) -> Tensor:
        """Frame-as-prompt loss of one batch.

        x0: clean latents (B, L, C, H, W), any float dtype: the noising, the target and the loss are
        computed in float32, and only the network's input is cast to `input_dtype` (the training
        precision; None keeps float32). Noising in bf16 would round x_t as if t were another time than
        the one the network is told.
        prompt_len: P clean prompt frames (0 <= P < L; 0: the whole clip is generated, text to video),
        one for the batch or (B,) one per clip (`PromptSampling.draw`);
        valid: (B, L) bool, False for padding frames (excluded from the loss);
        text_drop_prob: probability that a sample's caption becomes the null embedding (CFG);
        prompt_noise: (lo, hi) fraction of the noise range used to lightly noise prompt frames,
        which still carry timestep 0. (0, 0) keeps them clean.
        per_frame_noise: every noisy frame draws its own timestep (Diffusion Forcing) instead of one per
        sample; each frame's error then carries its own loss weight. Sampling is unchanged (a chunk's
        frames share one level, one of the mixes trained).
        """
        B, L = x0.shape[:2]
        device = x0.device
        lens = prompt_lengths(prompt_len, B, L).to(device, non_blocking=True)  # (B,)
        x0 = x0.float()
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=torch.float32)
        is_prompt = torch.arange(L, device=device)[None, :] < lens[:, None]  # (B, L)
        levels = L if per_frame_noise else 1  # noise levels per clip: one per frame, or one shared
        t_frames = self.sample_time(B * levels, generator, device).view(B, levels).expand(B, L)  # (B, L)
        t = torch.where(is_prompt, torch.zeros_like(t_frames), t_frames)  # (B, L)

        lo, hi = prompt_noise
        if hi > 0:  # noise augmentation of prompt frames, still labelled t = 0
            u = lo + (hi - lo) * torch.rand(B, generator=generator, device=device)
            prompt_in = self.add_noise(x0, noise, self.time_at(u)[:, None].expand(B, L))
        else:
            prompt_in = x0
        x_in = torch.where(is_prompt[:, :, None, None, None], prompt_in, self.add_noise(x0, noise, t))

        drop = None
        if text is not None and text_drop_prob > 0:
            drop = torch.rand(B, generator=generator, device=device) < text_drop_prob
        if text is not None and text_mask is not None:  # samples without a caption: the null embedding
            no_caption = ~text_mask.bool().any(dim=1)
            drop = no_caption if drop is None else drop | no_caption
        if input_dtype is not None:
            x_in = x_in.to(input_dtype)
            text = None if text is None else text.to(input_dtype)
        pred = model(x_in, self.model_time(t), text=text, text_mask=text_mask, drop_text=drop)
        return frame_prompt_loss(pred, self.target(x0, noise, t), lens, valid, self.loss_weight(t_frames))


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
      Sampling converts F to x0_hat and steps as for "x0". Measured on the CPU demo (600 steps) it is
      worse than "x0": the skip passes the noise the network fails to cancel at low t on to the sample
      (speckle again, shapes fading: presence F1 0.53 against 0.75).
    time_sampling: training timesteps uniform in [0, 1] or logit-normal (SD3: sigmoid of N(0, 1), which
    concentrates training on the middle of the path).
    loss_weighting: "snr_clamp" (x0 only) weights each sample's x0 error by its signal-to-noise ratio
    ((1 - t) / t)^2 clamped to [1, snr_max] (after min-SNR weighting, Hang et al. 2023, floored at 1 so the
    high-noise half, where the frames come from the context alone, keeps its full weight): the low-noise
    third weighs up to snr_max times more. Unweighted, the x0 error there is small next to the high-noise
    error, and a small network barely learns to keep the detail of an almost clean input (on the CPU
    demo's model at t = 0.02 its estimate is 13x further from x0 than its input is); the sampler's last
    steps return that estimate, so every sample is blurred to it.
    Measured on the CPU demo's settings (single process, 600 steps, 16 held-out scenes, 4x the clip): at
    t = 0.02 the estimate's error falls 0.0089 -> 0.0040, presence F1 0.736 -> 0.811 (0.796 -> 0.832 with
    context guidance 2), largest part 0.907 -> 0.960, centroid error unchanged (0.96x -> 0.98x copy-last's);
    snr_max 20 was worse than 5 (F1 0.777, 1.04x).
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
        loss_weighting: Literal["none", "snr_clamp"] = "none",
        snr_max: float = 5.0,
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
        if loss_weighting not in ("none", "snr_clamp"):
            raise ValueError(f"flow loss_weighting must be 'none' or 'snr_clamp', got {loss_weighting!r}")
        if loss_weighting == "snr_clamp" and prediction != "x0":
            raise ValueError(f"loss_weighting 'snr_clamp' weights the x0 error: it needs prediction 'x0', got {prediction!r}")
        if not (math.isfinite(snr_max) and snr_max >= 1):
            raise ValueError(f"flow snr_max must be a number >= 1, got {snr_max}")
        self.prediction = prediction
        self.time_sampling = time_sampling
        self.eta = eta
        self.loss_weighting = loss_weighting
        self.snr_max = snr_max

    def sample_time(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        if self.time_sampling == "logit_normal":
            return torch.sigmoid(torch.randn(batch, generator=generator, device=device))
        return torch.rand(batch, generator=generator, device=device)

    def time_at(self, fraction: Tensor) -> Tensor:
        return fraction.clamp(0, 1).float()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        tt = t.to(x0.dtype)[:, :, None, None, None]
        return (1 - tt) * x0 + tt * noise

    def loss_weight(self, t: Tensor) -> Tensor | None:
        if self.loss_weighting == "none":
            return None
        snr = ((1 - t.double()) / t.double().clamp_min(1e-12)) ** 2  # t = 0: infinite, clamped to snr_max
        return snr.clamp(1.0, self.snr_max).float()

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


# ----------------------------------------------------------------------------- loss


def prompt_lengths(prompt_len: int | Tensor, batch: int, clip_len: int) -> Tensor:
    """prompt_len as (batch,) int64, on the device it came on (a CPU int: the CPU); ValueError unless
    every length is in [0, clip_len - 1]. Check a tensor while it is on the CPU: on a GPU this syncs."""
    lens = torch.as_tensor(prompt_len, dtype=torch.long).reshape(-1)
    if lens.numel() == 1:
        lens = lens.expand(batch)
    if lens.shape != (batch,):
        raise ValueError(f"prompt_len must be one length or one per clip ({batch}), got shape {tuple(lens.shape)}")
    if lens.device.type == "cpu" and not bool(((lens >= 0) & (lens < clip_len)).all()):
        raise ValueError(f"prompt_len must be in [0, {clip_len - 1}] for clips of {clip_len} frames, "
                         f"got {lens.tolist() if batch > 1 else int(lens[0])}")
    return lens


def frame_prompt_loss(
    pred: Tensor, target: Tensor, prompt_len: int | Tensor, valid: Tensor | None = None, weight: Tensor | None = None,
) -> Tensor:
    """Mean squared error over noisy frames only.

    pred, target: (B, L, C, H, W); frames < prompt_len (one for the batch, or (B,) one per clip) are
    prompts and contribute nothing (their gradient is exactly zero); valid: (B, L) bool masks padding
    frames out as well; weight: (B,) multiplies each sample's frame errors, (B, L) each frame's (the
    mean is still over the frames counted, not the weights).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    B, L = pred.shape[:2]
    per_frame = (pred.float() - target.float()).pow(2).mean(dim=(2, 3, 4))  # (B, L)
    lens = prompt_lengths(prompt_len, B, L).to(pred.device)
    keep = torch.arange(L, device=pred.device)[None, :] >= lens[:, None]  # (B, L)
    if valid is not None:
        if valid.shape != (B, L):
            raise ValueError(f"valid mask must be (B, L)={(B, L)}, got {tuple(valid.shape)}")
        keep = keep & valid.bool()
    if weight is not None:
        if weight.shape not in ((B,), (B, L)):
            raise ValueError(f"loss weight must be (B,)={(B,)} or (B, L)={(B, L)}, got {tuple(weight.shape)}")
        per_frame = per_frame * (weight[:, None] if weight.ndim == 1 else weight).to(per_frame.dtype)
    count = keep.sum()
    return torch.where(keep, per_frame, torch.zeros_like(per_frame)).sum() / count.clamp_min(1)


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DiffusionConfig:
    """Which process, its schedule, and the frame-as-prompt training options."""

    process: Literal["ddpm", "flow"] = "ddpm"
    """ddpm: the paper's epsilon-prediction DDPM; flow: rectified flow."""
    prediction: Literal["velocity", "x0", "x0_skip"] = "velocity"
    """flow only: the network predicts the velocity eps - x0, the clean frames x0, or x0 through EDM's
    skip preconditioning (see RectifiedFlow)."""
    data_std: float = 0.5
    """flow x0_skip only: the data's standard deviation in the preconditioning (EDM's sigma_data)."""
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    """flow only: training timesteps uniform or logit-normal."""
    loss_weighting: Literal["none", "snr_clamp"] = "none"
    """flow x0 only: "snr_clamp" weights each sample's x0 error by its SNR clamped to [1, snr_max]."""
    snr_max: float = 5.0
    """The upper clamp of "snr_clamp" (the weight of the least noisy samples)."""
    num_steps: int = 1000
    """DDPM training steps."""
    beta_start: float = 1e-4
    """DDPM linear beta schedule start."""
    beta_end: float = 0.02
    """DDPM linear beta schedule end."""
    ddim_eta: float = 0.0
    """Sampling stochasticity, 0 = deterministic (ddpm: DDIM's eta; flow: the share of fresh noise per step)."""
    prompt_noise: tuple[float, float] = (0.0, 0.0)
    """Light noise on prompt frames as a (lo, hi) fraction of the noise range; paper: (0.05, 0.1)."""
    per_frame_noise: bool = False
    """Every noisy training frame draws its own timestep (Diffusion Forcing) instead of one per clip."""
    text_drop_prob: float = 0.1
    """Probability of replacing a caption by the null embedding in training (CFG)."""
    prompt: PromptSampling = PromptSampling()
    """Prompt-length rule."""

    def __post_init__(self) -> None:
        lo, hi = self.prompt_noise
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"prompt_noise must satisfy 0 <= lo <= hi <= 1, got {self.prompt_noise}")
        if not 0 <= self.text_drop_prob <= 1:
            raise ValueError(f"text_drop_prob must be in [0, 1], got {self.text_drop_prob}")
        if self.ddim_eta < 0 or (self.process == "flow" and self.ddim_eta > 1):
            raise ValueError(f"ddim_eta must be >= 0 (flow: in [0, 1]), got {self.ddim_eta}")
        if self.process != "flow" and (self.prediction, self.time_sampling, self.loss_weighting) != (
                "velocity", "uniform", "none"):
            raise ValueError("prediction, time_sampling and loss_weighting apply to process='flow' only "
                             "(ddpm predicts the noise)")
        build_diffusion(self)  # the process's own checks (prediction, time sampling, weighting, snr_max, ...)


def build_diffusion(cfg: DiffusionConfig) -> Diffusion:
    if cfg.process == "ddpm":
        return GaussianDiffusion(cfg.num_steps, cfg.beta_start, cfg.beta_end, cfg.ddim_eta)
    if cfg.process == "flow":
        return RectifiedFlow(cfg.prediction, cfg.time_sampling, cfg.ddim_eta, cfg.data_std,
                             cfg.loss_weighting, cfg.snr_max)
    raise ValueError(f"diffusion process must be 'ddpm' or 'flow', got {cfg.process!r}")
