"""Ground truth: held-out synthetic scenes (deterministic physics, so rendering more frames gives the
true continuation) after the same mp4 round trip as the training videos, or clips of a latent dataset
long enough for P + k*L frames, decoded with the dataset's codec."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.codecs import Codec
from data_pipeline.loader import LatentLoader, LoaderConfig, load_table
from data_pipeline.synthetic import Scene, synthetic_scene
from data_pipeline.video import DecodeOptions, decode_clips, write_video
from vidgpt.evaluation.generation import pad_text
from vidgpt.evaluation.spec import EvalSpec


def mp4_round_trip(frames: np.ndarray, fps: float) -> np.ndarray:
    """uint8 (T, H, W, 3) -> the same frames written to an in-memory mp4 and decoded again (yuv420p
    chroma subsampling and x264 quantisation, like the training videos went through)."""
    buffer = io.BytesIO()
    write_video(buffer, frames, fps)
    buffer.seek(0)
    t, h, w, _ = frames.shape
    decoded = decode_clips(buffer, DecodeOptions(height=h, width=w, max_frames=t))[0].frames
    if decoded.shape != frames.shape:
        raise RuntimeError(f"mp4 round trip changed the frames' shape: {frames.shape} -> {decoded.shape}")
    return decoded


def synthetic_truth(spec: EvalSpec) -> tuple[np.ndarray, list[Scene]]:
    """Held-out synthetic clips: uint8 (N, P + k*L, S, S, 3) after the mp4 round trip, and their scenes.

    Clip i is `synthetic_scene(i, size=S, seed=spec.synthetic_seed, speed=spec.task.speed)` rendered for
    P + k*L frames with the task's supersampling."""
    scenes = [synthetic_scene(i, size=spec.size, seed=spec.synthetic_seed, speed=spec.task.speed)
              for i in range(spec.num_clips)]
    truth = np.stack([mp4_round_trip(s.render(spec.total_frames, spec.task.supersample), spec.fps) for s in scenes])
    return truth, scenes


@dataclass
class DatasetTruth:
    """Clips of a latent dataset, decoded."""

    frames: np.ndarray
    """uint8 (N, P + k*L, H, W, 3)."""
    captions: list[str | None]
    """Each clip's caption, if the dataset has one."""
    text: torch.Tensor | None
    """(N, L, D) caption embeddings when every clip has them, else None."""
    text_mask: torch.Tensor | None
    """(N, L) bool, True = valid token."""


def dataset_truth(path: str, spec: EvalSpec, codec: Codec, *, seed: int = 0) -> DatasetTruth:
    """The first spec.num_clips clips (in the loader's seeded order) of at least P + k*L frames,
    decoded from their first frame; ValueError when the dataset has too few of them."""
    need = spec.total_frames
    table = load_table(path)
    lengths = [n for shard in table.frames for n in shard]
    long_enough = sum(n >= need for n in lengths)
    if long_enough < spec.num_clips:
        raise ValueError(
            f"{path}: {long_enough} of {len(lengths)} clips have >= {need} frames (P + k*L = "
            f"{spec.sampling.prompt_frames} + {spec.multiples}*{spec.clip_len}; longest {max(lengths, default=0)}), "
            f"need {spec.num_clips}: use fewer --clips, --multiples or --prompt-frames"
        )
    loader = LatentLoader(LoaderConfig(path, num_frames=need, batch_size=1, crop="whole", seed=seed), table=table)
    latents: list[np.ndarray] = []
    captions: list[str | None] = []
    texts: list[np.ndarray | None] = []
    for batch in loader:
        if not bool(batch["valid"].all()):
            continue
        if latents and tuple(batch["latents"].shape[-2:]) != latents[0].shape[-2:]:
            continue  # a bucketed dataset: the clips of the first clip's bucket (one size per evaluation)
        latents.append(batch["latents"][0].float().numpy())  # (T, C, h, w)
        captions.append(batch["captions"][0])
        text = batch.get("text")
        texts.append(None if text is None or not bool(batch["text_mask"].any()) else
                     text[0][batch["text_mask"][0]].float().numpy())  # (L_i, D)
        if len(latents) == spec.num_clips:
            break
    if len(latents) < spec.num_clips:
        raise ValueError(f"{path}: only {len(latents)} clips of >= {need} frames have the latent size "
                         f"{latents[0].shape[-2:] if latents else '?'} of the first (a bucketed dataset is evaluated "
                         f"one size at a time), need {spec.num_clips}: use fewer --clips")
    frames = np.stack([codec.decode(z) for z in latents])  # (N, T, H, W, 3)
    text_t = mask_t = None
    if all(t is not None for t in texts):
        text_t, mask_t = pad_text([t for t in texts if t is not None])
    return DatasetTruth(frames, captions, text_t, mask_t)
