"""Learning or sampling? The network as a next-frame predictor, against copy-last.

    from experiments.predictor import one_step_figures
    figures = one_step_figures(model, diffusion, truth, scenes, spec)

Issue 22 asks, before any sampler is tuned, whether the network has learned the motion at all: given P clean
prompt frames and pure noise (t = 1) for the next `chunk` frames, its one-call clean estimate x0_hat is its
prediction of those frames (for x0 prediction the network's output itself; for velocity x_1 - v). On the
nearly deterministic synthetic task the posterior mean is close to the truth, so a network that learned the
motion places x0_hat's shapes where the truth has them. Measured in pixels after the codec's decoding:
- `mse_ratio`: x0_hat's MSE over the chunk / copy-last's (the last prompt frame repeated); < 1 beats copying;
- `centroid_ratio`: the mean centroid error of x0_hat's colours / copy-last's, over the colours present in
  both (x0_hat is blurry where the network is unsure, so a colour may be missing: `presence_f1` says how often).
If these do not beat copy-last, the failure is in learning (data, model, objective) and no sampler setting
will fix it; if they do while sampled rollouts do not, the failure is in sampling or in the rollout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from data_pipeline.codecs import Codec
from data_pipeline.synthetic import Scene
from vidgpt import metrics
from vidgpt.diffusion import Diffusion
from vidgpt.evaluation import EvalSpec, scene_object_stats
from vidgpt.model import VidGPT


@torch.no_grad()
def one_step_prediction(model: VidGPT, diffusion: Diffusion, prompts: torch.Tensor, frames: int, *,
                        seed: int = 0) -> torch.Tensor:
    """x0_hat of `frames` frames after the prompts, from pure noise in one network call:
    prompts (N, P, C, H, W) clean latents -> (N, frames, C, H, W)."""
    n, p = prompts.shape[:2]
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, frames, *prompts.shape[2:]), generator=gen)
    x = torch.cat([prompts, noise], dim=1)  # (N, P + frames, C, H, W)
    t = torch.cat([torch.zeros(n, p), torch.ones(n, frames)], dim=1)  # (N, P + frames): 0 clean, 1 noise
    pred = model(x, diffusion.model_time(t))[:, p:]
    return diffusion.step(pred, noise, 1.0, 0.0)  # the clean estimate at t = 1


def one_step_figures(model: VidGPT, diffusion: Diffusion, codec: Codec, truth: np.ndarray, scenes: Sequence[Scene],
                     spec: EvalSpec, *, seed: int = 0) -> dict[str, float]:
    """mse_ratio, centroid_ratio and presence_f1 of the one-step prediction of the first chunk (module
    docstring), with the copy-last figures they are ratios of; truth uint8 (N, >= P + chunk, H, W, 3), encoded
    and decoded with `codec` (the identity codec on the synthetic task)."""
    p, chunk = spec.sampling.prompt_frames, spec.sampling.chunk
    assert chunk is not None
    target = truth[:, p : p + chunk]
    prompts = torch.stack([torch.from_numpy(codec.encode(v[:p])) for v in truth])  # (N, P, C, h, w)
    latents = one_step_prediction(model, diffusion, prompts, chunk, seed=seed)  # (N, chunk, C, h, w)
    guess = np.stack([codec.decode(z) for z in latents])  # (N, chunk, H, W, 3) uint8
    copy = np.repeat(truth[:, p - 1 : p], chunk, axis=1)
    true_stats = scene_object_stats(target, scenes, spec)
    out: dict[str, float] = {}
    for name, frames in (("model", guess), ("copy_last", copy)):
        stats = scene_object_stats(frames, scenes, spec)
        errors = np.concatenate([metrics.centroid_error(s, t) for s, t in zip(stats, true_stats, strict=True)])
        out[f"{name}_mse"] = float(metrics.mse(frames, target).mean())
        out[f"{name}_centroid_px"] = float(np.nanmean(errors)) if np.isfinite(errors).any() else math.nan
        out[f"{name}_presence_f1"] = metrics.presence_f1(np.stack([s.presence for s in stats]),
                                                         np.stack([t.presence for t in true_stats]))
    out["mse_ratio"] = out["model_mse"] / out["copy_last_mse"]
    out["centroid_ratio"] = out["model_centroid_px"] / out["copy_last_centroid_px"]
    out["presence_f1"] = out.pop("model_presence_f1")
    return out
