"""Continuing held-out clips with a model, the copy-last-prompt-frame baseline, and caption embeddings
padded into a batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from data_pipeline.codecs import Codec
from vidgpt.diffusion import Diffusion
from vidgpt.evaluation.spec import EvalSpec
from vidgpt.model import VidGPT
from vidgpt.sampling import generate_as, sampling_autocast


def continue_videos(
    model: VidGPT,
    diffusion: Diffusion,
    codec: Codec,
    truth: np.ndarray,
    spec: EvalSpec,
    *,
    seed: int = 0,
    text: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Continue every truth clip from its first P frames for k*L frames: uint8 (N, P + k*L, H, W, 3)
    with the (codec round-tripped) prompt frames first. P and k*L count the model's (latent) frames; with a
    video VAE the video has codec.pixel_frames(P + k*L) frames.

    truth: uint8 (N, >= P, H, W, 3); prompts are codec.encode(truth[i, :codec.pixel_frames(P)]). The model runs on the
    device of its parameters, in the mode it is in (eval for sampling), with spec.sampling's chunk,
    window, steps, guidance, kv-cache and precision; a bidirectional model is sampled without the
    kv-cache. batch_size: clips per `generate` call (None: all at once). text/text_mask: (N, L, D) /
    (N, L) caption embeddings, or None for unconditional generation (cfg_scale applies with text only).
    """
    s = spec.sampling
    P = codec.pixel_frames(s.prompt_frames)  # video frames of the P latent prompt frames
    if truth.ndim != 5 or truth.shape[1] < P:
        raise ValueError(f"truth must be (N, T >= {P}, H, W, 3), got {truth.shape}")
    device = next(model.parameters()).device
    autocast = sampling_autocast(s.precision, device)
    generator = torch.Generator(device).manual_seed(seed)
    step = batch_size or truth.shape[0]
    out: list[np.ndarray] = []
    for lo in range(0, truth.shape[0], step):
        hi = min(lo + step, truth.shape[0])
        prompt = torch.stack([torch.from_numpy(codec.encode(v[:P])) for v in truth[lo:hi]])  # (B, P latent, C, h, w)

        def report(done: int, total: int, lo: int = lo, hi: int = hi) -> None:
            if progress is not None:
                progress(f"clips {lo + 1}-{hi} of {truth.shape[0]}: {done}/{total} frames generated")

        latents = generate_as(
            s, model, diffusion, prompt.to(device), spec.generated_frames, generator=generator, progress=report,
            text=None if text is None else text[lo:hi].to(device),
            text_mask=None if text_mask is None else text_mask[lo:hi].to(device), autocast=autocast,
        )  # (B, P + k*L, C, h, w)
        out += [codec.decode(z.float().cpu()) for z in latents]  # each (T, H, W, 3) uint8
    return np.stack(out)


def copy_last(truth: np.ndarray, prompt_frames: int) -> np.ndarray:
    """The baseline: the prompt frames, then the last one repeated; uint8 (N, T, H, W, 3) like truth."""
    video = truth.copy()
    video[:, prompt_frames:] = truth[:, prompt_frames - 1 : prompt_frames]
    return video


def pad_text(embeddings: Sequence[np.ndarray], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-caption (L_i, D) embeddings -> (N, L, D) float32 zero-padded and (N, L) bool mask, each
    truncated to max_len tokens."""
    embeddings = [np.asarray(e)[:max_len] for e in embeddings]
    length = max(e.shape[0] for e in embeddings)
    dim = embeddings[0].shape[1]
    text = torch.zeros(len(embeddings), length, dim)
    mask = torch.zeros(len(embeddings), length, dtype=torch.bool)
    for i, e in enumerate(embeddings):
        text[i, : e.shape[0]] = torch.from_numpy(e.astype(np.float32))
        mask[i, : e.shape[0]] = True
    return text, mask
