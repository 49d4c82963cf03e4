"""The frame-as-prompt training objective: which frames are prompts, how the rest is noised, how the
error is weighted. One object, the `[objective]` section of a run config, serves the training step and
validation (`FramePromptObjective.loss`).

A clip of L frames is split into P clean prompt frames (labelled t = 0, optionally lightly noised while
still labelled 0) and L - P noisy frames; the loss is the mean squared error over the noisy frames only.

Teacher forcing (`teacher_forcing = true`) instead shows the network the clip twice, clean and noisy, and
every noisy frame i sees the clean frames before it and itself (`VidGPT.forward(teacher_forced=True)`):
frame i is trained as the first frame generated after a prompt of i true frames, for every i at once, which
is exactly what frame-by-frame sampling with the kv-cache asks of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from vidgpt.diffusion import Diffusion, RectifiedFlow

Predictor = Callable[..., Tensor]


@dataclass
class LossBatch:
    """One batch as the objective reads it, on the training device."""

    latents: Tensor
    """(B, L, C, H, W) clean latents, any float dtype (as stored: fp16)."""
    valid: Tensor | None = None
    """(B, L) bool, False for padding frames (no loss)."""
    text: Tensor | None = None
    """(B, N, D) caption embeddings, or None (no text conditioning)."""
    text_mask: Tensor | None = None
    """(B, N) caption token mask; a row without any token is a clip without a caption."""
    prompt_limit: int | None = None
    """Longest prompt that leaves every clip a real noisy frame (the shortest clip's length - 1)."""


@dataclass(frozen=True)
class FramePromptObjective:
    """The `[objective]` section: prompt lengths, prompt noise, per-frame noise, loss weighting and text
    dropout of frame-as-prompt training, and the loss they define."""

    prompt_rule: Literal["uniform", "chunked"] = "uniform"
    """uniform: P in [prompt_min_len, L-1]; chunked: P in {1, 1+c, 1+2c, ...} below L (c = prompt_chunk)."""
    prompt_min_len: int = 1
    """Smallest prompt length of the uniform rule; 0 also trains clips without a prompt (generated from the
    caption alone), which text to video and context guidance need."""
    prompt_chunk: int = 8
    """Step c of the chunked rule (the paper: 8, giving {1, 9, 17, 25} for L = 33)."""
    prompt_per_clip: bool = False
    """false: one prompt length per batch (the paper's code); true: one per clip, so every step mixes them."""
    prompt_noise: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """[lo, hi] fraction of the noise range used to lightly noise prompt frames, which stay labelled t = 0
    (paper: [0.05, 0.1]); [0, 0] keeps them clean."""
    per_frame_noise: bool = False
    """Every noisy training frame draws its own timestep (Diffusion Forcing) instead of one per clip; with
    snr_clamp each frame carries its own weight. Sampling is unchanged."""
    loss_weighting: Literal["none", "snr_clamp"] = "none"
    """snr_clamp (flow with prediction x0): each x0 error is weighted by its signal-to-noise ratio
    ((1 - t) / t)^2 clamped to [1, snr_max], so the network learns to keep the detail of nearly clean frames."""
    snr_max: float = 5.0
    """snr_clamp: the largest weight (that of the samples with t <= 1 / (1 + sqrt(snr_max)))."""
    text_drop_prob: float = 0.1
    """Probability of replacing a caption by the null embedding in training (classifier-free guidance)."""
    teacher_forcing: bool = False
    """Every frame i >= prompt_min_len is trained as the frame generated right after i clean frames (the clip
    is fed twice, clean and noisy; twice the tokens per step), instead of one prompt length per clip. Needs the
    uniform rule and sampling frame by frame ([eval.sampling] chunk = 1): noisy frames never see each other."""

    def __post_init__(self) -> None:
        if self.prompt_rule not in ("uniform", "chunked"):
            raise ValueError(f"prompt_rule must be 'uniform' or 'chunked', got {self.prompt_rule!r}")
        if self.prompt_min_len < 0 or self.prompt_chunk < 1:
            raise ValueError(f"prompt_min_len must be >= 0 and prompt_chunk >= 1, got {self.prompt_min_len}, "
                             f"{self.prompt_chunk}")
        if len(self.prompt_noise) != 2:
            raise ValueError(f"prompt_noise: expected [lo, hi], got {self.prompt_noise}")
        lo, hi = self.prompt_noise
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"prompt_noise must satisfy 0 <= lo <= hi <= 1, got {self.prompt_noise}")
        if not 0 <= self.text_drop_prob <= 1:
            raise ValueError(f"text_drop_prob must be in [0, 1], got {self.text_drop_prob}")
        if self.loss_weighting not in ("none", "snr_clamp"):
            raise ValueError(f"loss_weighting must be 'none' or 'snr_clamp', got {self.loss_weighting!r}")
        if not (math.isfinite(self.snr_max) and self.snr_max >= 1):
            raise ValueError(f"snr_max must be a number >= 1, got {self.snr_max}")
        if self.teacher_forcing and self.prompt_rule != "uniform":
            raise ValueError("teacher_forcing trains every prompt length from prompt_min_len up at once: it needs "
                             f"prompt_rule 'uniform', got {self.prompt_rule!r}")

    def check_process(self, diffusion: Diffusion) -> None:
        """ValueError when the weighting does not fit the process (snr_clamp weights a flow's x0 error)."""
        if self.loss_weighting == "snr_clamp" and not (
                isinstance(diffusion, RectifiedFlow) and diffusion.prediction == "x0"):
            raise ValueError("loss_weighting 'snr_clamp' weights the x0 error: it needs diffusion.process 'flow' "
                             "with prediction 'x0'")

    @property
    def trains_without_prompt(self) -> bool:
        """Some clips have no prompt frame, so the model learns to generate with no earlier frame."""
        return self.prompt_rule == "uniform" and self.prompt_min_len == 0

    # -------------------------------------------------------------------------------- prompt lengths

    def prompt_choices(self, clip_len: int) -> list[int]:
        """Every prompt length the rule allows for clips of `clip_len` frames (at least one noisy frame)."""
        if self.prompt_rule == "uniform":
            out = list(range(self.prompt_min_len, clip_len))
        else:
            out = list(range(1, clip_len, self.prompt_chunk))
        if not out:
            raise ValueError(f"clips of {clip_len} frames leave no room for a prompt under the {self.prompt_rule} "
                             f"rule (prompt_min_len {self.prompt_min_len}, prompt_chunk {self.prompt_chunk})")
        return out

    def sample_prompt_length(self, clip_len: int, generator: torch.Generator | None = None,
                             limit: int | None = None) -> int:
        """A prompt length for clips of `clip_len` frames; limit: the most it may be (a batch whose shortest
        clip has v real frames passes v - 1, so that every clip keeps a real noisy frame; padding frames
        carry no loss). The draw is the same as without a limit whenever the limit cuts nothing."""
        options = self._allowed(clip_len, limit)
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    def draw_prompt_lengths(self, clip_len: int, batch: int, generator: torch.Generator | None = None,
                            limit: int | None = None) -> Tensor:
        """Prompt lengths of a batch, (batch,) int64 on the CPU: one draw repeated (the same random stream
        as `sample_prompt_length`), or with prompt_per_clip one draw per clip from the same choices. Under
        teacher forcing nothing is drawn: every clip gets the shortest allowed length, the first frame in
        the loss (each later frame has its own clean prompt)."""
        if self.teacher_forcing:
            return torch.full((batch,), self._allowed(clip_len, limit)[0], dtype=torch.long)
        if not self.prompt_per_clip:
            return torch.full((batch,), self.sample_prompt_length(clip_len, generator, limit), dtype=torch.long)
        options = torch.tensor(self._allowed(clip_len, limit), dtype=torch.long)
        return options[torch.randint(len(options), (batch,), generator=generator)]

    def _allowed(self, clip_len: int, limit: int | None) -> list[int]:
        options = self.prompt_choices(clip_len)
        if limit is not None and limit < options[-1]:
            options = [p for p in options if p <= limit] or [max(min(1, self.prompt_min_len), limit)]
        return options

    # -------------------------------------------------------------------------------- the loss

    def loss_weight(self, t: Tensor) -> Tensor | None:
        """Loss weights at the training times t (any shape; flow time in [0, 1]), or None: every frame weighs 1."""
        if self.loss_weighting == "none":
            return None
        snr = ((1 - t.double()) / t.double().clamp_min(1e-12)) ** 2  # t = 0: infinite, clamped to snr_max
        return snr.clamp(1.0, self.snr_max).float()

    def loss(self, model: Predictor, diffusion: Diffusion, batch: LossBatch, noise: torch.Generator | None,
             prompt: torch.Generator | None, *, training: bool = True,
             input_dtype: torch.dtype | None = None) -> Tensor:
        """The loss of one batch: prompt lengths drawn from `prompt` (a CPU generator), noise, timesteps,
        prompt noise and text dropout from `noise` (on the batch's device). training=False (validation)
        keeps every caption (no text dropout)."""
        x0 = batch.latents
        lens = self.draw_prompt_lengths(x0.shape[1], x0.shape[0], prompt, limit=batch.prompt_limit)
        return self.loss_at(model, diffusion, x0, lens, generator=noise, valid=batch.valid, text=batch.text,
                            text_mask=batch.text_mask, training=training, input_dtype=input_dtype)

    def loss_at(
        self,
        model: Predictor,
        diffusion: Diffusion,
        x0: Tensor,
        prompt_len: int | Tensor,
        *,
        generator: torch.Generator | None = None,
        valid: Tensor | None = None,
        text: Tensor | None = None,
        text_mask: Tensor | None = None,
        training: bool = True,
        input_dtype: torch.dtype | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """The loss of one batch at given prompt lengths.

        x0: clean latents (B, L, C, H, W), any float dtype: the noising, the target and the loss are
        computed in float32, and only the network's input is cast to `input_dtype` (the training
        precision; None keeps float32). Noising in bf16 would round x_t as if t were another time than
        the one the network is told.
        prompt_len: P clean prompt frames (0 <= P < L; 0: the whole clip is generated, text to video),
        one for the batch or (B,) one per clip; valid: (B, L) bool, False for padding frames. Under teacher
        forcing every frame i >= P is in the loss, predicted from the clean frames before it.
        context: None, or latents shaped like x0 that the network sees in place of x0's prompt frames (for
        instance its own generated frames, to train on its own rollouts); they get the same prompt noise and
        label t = 0, while the noisy frames, the target and the random draws stay those of x0. Frames at or
        after the prompt length are not read (under teacher forcing all are: they are the clean half).
        """
        B, L = x0.shape[:2]
        device = x0.device
        lens = prompt_lengths(prompt_len, B, L).to(device, non_blocking=True)  # (B,)
        if context is not None and context.shape != x0.shape:
            raise ValueError(f"context must be shaped like x0 {tuple(x0.shape)}, got {tuple(context.shape)}")
        x0 = x0.float()
        seen = x0 if context is None else context.to(device=device, dtype=torch.float32)  # what prompts show
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=torch.float32)
        is_prompt = torch.arange(L, device=device)[None, :] < lens[:, None]  # (B, L)
        levels = L if self.per_frame_noise else 1  # noise levels per clip: one per frame, or one shared
        t_frames = diffusion.sample_time(B * levels, generator, device).view(B, levels).expand(B, L)  # (B, L)
        t = torch.where(is_prompt, torch.zeros_like(t_frames), t_frames)  # (B, L)

        lo, hi = self.prompt_noise
        if hi > 0:  # noise augmentation of prompt frames, still labelled t = 0
            u = lo + (hi - lo) * torch.rand(B, generator=generator, device=device)
            prompt_in = diffusion.add_noise(seen, noise, diffusion.time_at(u)[:, None].expand(B, L))
        else:
            prompt_in = seen
        x_t = diffusion.add_noise(x0, noise, t_frames)
        if self.teacher_forcing:  # [clean clip, noisy clip]: every noisy frame sees the clean ones before it
            x_in = torch.cat([prompt_in, x_t], dim=1)
            t_in = torch.cat([torch.zeros_like(t_frames), t_frames], dim=1)  # (B, 2L)
        else:
            x_in = torch.where(is_prompt[:, :, None, None, None], prompt_in, x_t)
            t_in = t

        drop = None
        drop_prob = self.text_drop_prob if training else 0.0
        if text is not None and drop_prob > 0:
            drop = torch.rand(B, generator=generator, device=device) < drop_prob
        if text is not None and text_mask is not None:  # samples without a caption: the null embedding
            no_caption = ~text_mask.bool().any(dim=1)
            drop = no_caption if drop is None else drop | no_caption
        if input_dtype is not None:
            x_in = x_in.to(input_dtype)
            text = None if text is None else text.to(input_dtype)
        layout = {"teacher_forced": True} if self.teacher_forcing else {}
        pred = model(x_in, diffusion.model_time(t_in), text=text, text_mask=text_mask, drop_text=drop,
                     **layout)[:, -L:]  # teacher forcing: the noisy half
        return frame_prompt_loss(pred, diffusion.target(x0, noise, t), lens, valid, self.loss_weight(t_frames))


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
