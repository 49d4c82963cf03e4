"""Samples during training: fixed held-out prompts continued with the kv-cache at every evaluation.

At every `eval.interval` steps (and before the first), when `eval.samples` > 0, the trainer calls
`TrainingSampler.run(...)` on every rank:
- the prompts (`HeldOutPrompts`) are the same every time: the first P frames of the first
  `eval.samples` clips of the held-out data (`dataset_prompts`), or, with `eval.synthetic`, of the
  built-in synthetic scenes of seed `eval.synthetic_seed` (`synthetic_prompts`: rendered, mp4
  round-tripped and encoded with the dataset's identity codec, as vidgpt-eval does), with their
  captions when the model has text;
- the model continues them for k x data.num_frames frames with the spec's sampling settings
  (`EvalSpec.sampling`: chunk, window, steps, guidance, kv-cache), from a fixed seed, in eval mode and
  with the EMA weights swapped in when the run keeps an EMA (`ShardedEMA.swapped_in`: under ZeRO-3
  each rank swaps only its own partitions, and every rank runs the same generation, so the parameters
  are gathered layer by layer as in training, never the whole model on one rank);
- rank 0 decodes the latents with the dataset's codec and writes RUN/samples/step_NNNNNNN/sample_KK.mp4,
  a TensorBoard image per sample under samples/ (its frames side by side: TensorBoard's video summary
  needs moviepy), and, on synthetic scenes, the evaluator's figures (presence F1 and garbage over the
  continuation; centroid error over the first clip length and its ratio to the copy-last-frame
  baseline's).
Training is unchanged by all of this: the generation has its own generator, and the weights swapped
back are the exact tensors that were swapped out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.codecs import Codec
from data_pipeline.loader import DataError, LatentLoader, LoaderConfig, ShardTable
from data_pipeline.synthetic import Scene
from data_pipeline.text import TextEncoder
from data_pipeline.video import write_video
from vidgpt.diffusion import Diffusion
from vidgpt.ema import ShardedEMA
from vidgpt.evaluation.generation import pad_text
from vidgpt.evaluation.measure import evaluate_videos
from vidgpt.evaluation.spec import EvalSpec
from vidgpt.evaluation.truth import synthetic_truth
from vidgpt.model import VidGPT
from vidgpt.sampling import generate_as


@dataclass(frozen=True)
class HeldOutPrompts:
    """What every sampling round starts from (the same on every rank)."""

    latents: torch.Tensor
    """(N, P, C, h, w) prompt latents, scaled as stored."""
    text: torch.Tensor | None
    """(N, L, D) caption embeddings, or None."""
    text_mask: torch.Tensor | None
    """(N, L) bool, True = valid token; None: all valid (or no text)."""
    truth: np.ndarray | None = None
    """uint8 (N, P + k*L, H, W, 3) true continuation (synthetic scenes), for the quality figures."""
    scenes: list[Scene] | None = None
    """The synthetic scenes (object metrics), or None."""


def dataset_prompts(source: str, prompt_frames: int, count: int, seed: int, use_text: bool,
                    table: ShardTable | None = None) -> HeldOutPrompts:
    """The first `prompt_frames` frames of the first `count` clips of a latent dataset (rank-independent);
    table: its shards (e.g. the held-out part), None: all of source."""
    loader = LatentLoader(LoaderConfig(source, num_frames=prompt_frames, batch_size=count, crop="whole", seed=seed,
                                       shuffle_buffer=max(count, 1)), table=table)
    batch = next(iter(loader), None)
    if batch is None:
        raise DataError(f"{source}: fewer than {count} clips for eval.samples")
    if not bool(batch["valid"].all()):
        raise DataError(f"{source}: some of the first {count} clips are shorter than eval.sampling.prompt_frames "
                        f"({prompt_frames})")
    text = batch.get("text") if use_text else None
    mask = batch.get("text_mask") if text is not None else None
    return HeldOutPrompts(batch["latents"].float(), None if text is None else text.float(), mask)


def synthetic_prompts(spec: EvalSpec, codec: Codec, text_encoder: TextEncoder | None, text_len: int) -> HeldOutPrompts:
    """Held-out synthetic scenes of `spec`, encoded with `codec`, their captions embedded with
    `text_encoder` when given."""
    truth, scenes = synthetic_truth(spec)
    latents = torch.stack([torch.from_numpy(codec.encode(v[: spec.sampling.prompt_frames])) for v in truth]).float()
    text = mask = None
    if text_encoder is not None:
        text, mask = pad_text(text_encoder.encode([s.caption() for s in scenes]), text_len)
    return HeldOutPrompts(latents, text, mask, truth, scenes)


def frame_strip(video: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (H, T*W + (T-1), 3): the frames side by side with 1-pixel white gaps."""
    t, h, w, _ = video.shape
    strip = np.full((h, t * (w + 1) - 1, 3), 255, dtype=np.uint8)
    for i, frame in enumerate(video):
        strip[:, i * (w + 1) : i * (w + 1) + w] = frame
    return strip


@contextlib.contextmanager
def sampling_weights(model: torch.nn.Module, ema: ShardedEMA | None) -> Iterator[None]:
    """The model in eval mode with the EMA weights (if any) for the duration; restored exactly after."""
    was_training = model.training
    model.eval()
    try:
        with ema.swapped_in() if ema is not None else contextlib.nullcontext():
            yield
    finally:
        model.train(was_training)


class TrainingSampler:
    """Continues the same held-out prompts at every evaluation; writes the videos and, on synthetic
    scenes, measures them."""

    def __init__(self, *, prompts: HeldOutPrompts, spec: EvalSpec, decode: Callable[[torch.Tensor], np.ndarray] | None,
                 fps: float, run_dir: Path, writer: Any | None, autocast: torch.dtype | None) -> None:
        """spec: prompt frames, clip length, multiples and the sampling settings; decode: latents (T, C, h, w)
        -> uint8 (T, H, W, 3), on rank 0 only (None elsewhere); writer: rank 0's TensorBoard SummaryWriter
        or None; autocast: the network's dtype under torch.autocast (the training precision's; None: fp32)."""
        self.prompts, self.spec, self.decode, self.fps = prompts, spec, decode, fps
        self.run_dir, self.writer, self.autocast = run_dir, writer, autocast

    @torch.no_grad()
    def run(self, model: VidGPT, diffusion: Diffusion, ema: ShardedEMA | None, step: int, seed: int) -> dict[str, float]:
        """One round on every rank (collective under ZeRO-3); returns the scalars rank 0 logged."""
        s, prompts = self.spec.sampling, self.prompts
        device = next(model.parameters()).device
        start = time.perf_counter()
        with sampling_weights(model, ema):
            latents = generate_as(
                s, model, diffusion, prompts.latents.to(device), self.spec.generated_frames,
                generator=torch.Generator(device).manual_seed(seed),
                text=None if prompts.text is None else prompts.text.to(device),
                text_mask=None if prompts.text_mask is None else prompts.text_mask.to(device), autocast=self.autocast,
            )  # (N, P + k*L, C, h, w)
        values = {"sample_seconds": time.perf_counter() - start}
        if self.decode is None:  # not rank 0
            return values
        videos = np.stack([self.decode(z.float().cpu()) for z in latents])  # (N, T, H, W, 3)
        self._write(step, videos)
        if prompts.truth is not None and prompts.scenes is not None:
            values.update(self._quality(videos))
        return values

    def _write(self, step: int, videos: np.ndarray) -> None:
        out = self.run_dir / "samples" / f"step_{step:07d}"
        out.mkdir(parents=True, exist_ok=True)
        for i, video in enumerate(videos):
            write_video(out / f"sample_{i:02d}.mp4", video, self.fps)
            if self.writer is not None:
                self.writer.add_image(f"samples/{i:02d}", frame_strip(video), step, dataformats="HWC")

    def _quality(self, videos: np.ndarray) -> dict[str, float]:
        assert self.prompts.truth is not None
        report = evaluate_videos(self.prompts.truth, {"model": videos}, self.spec, self.prompts.scenes)
        row = report.summary.methods["model"].objects
        assert row is not None  # synthetic scenes: the object figures are there
        return {"presence_f1": float(row.presence_f1), "garbage": float(row.garbage),
                "centroid_error_first_clip": float(row.centroid_error_first_clip),
                "copy_last_centroid_error_first_clip": float(row.copy_last_centroid_error_first_clip),
                "centroid_ratio_first_clip": float(row.centroid_ratio_first_clip)}
