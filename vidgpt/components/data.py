"""The training data: the `[data]` section, the dataset checks made before anything starts, the train
and validation loaders, and batches moved to the training device for the objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from data_pipeline import storage
from data_pipeline.loader import DataError, LatentLoader, LoaderConfig, ShardTable, load_table
from vidgpt.errors import ConfigError
from vidgpt.model import text_mask_or_none
from vidgpt.objective import LossBatch


@dataclass
class DataConfig:
    """The `[data]` section: where the latent shards are and how clips are batched."""

    path: str = ""
    """Dataset root (local or s3://), an index.json, or shards (comma list or brace pattern)."""
    num_frames: int = 16
    """Frames per training clip (prompt + noisy)."""
    batch_size: int = 2
    """Clips per micro-batch on each rank."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0: read in the training process with a read-ahead thread)."""
    shuffle_buffer: int = 256
    """Samples shuffled together."""
    crop: Literal["random", "whole"] = "random"
    """random: a random window of num_frames; whole: clips from their first frame, padded and masked."""
    max_bad_fraction: float = 0.01
    """Stop when more than this fraction of samples are corrupt (fail their CRC-32, or do not parse)."""
    read_retries: int = 4
    """A read that fails for a network or storage reason is retried this many times with exponential
    backoff (2, 4, 8, ... s), then training stops with a line saying so; it never counts as bad data."""

    def __post_init__(self) -> None:
        for key in ("num_frames", "batch_size", "shuffle_buffer"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key}: must be >= 1, got {getattr(self, key)}")
        if self.read_retries < 0:
            raise ConfigError(f"data.read_retries: must be >= 0, got {self.read_retries}")
        if self.num_frames < 2:
            raise ConfigError("data.num_frames: need >= 2 (one prompt frame and one noisy frame)")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be >= 0, got {self.num_workers}")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(f"data.max_bad_fraction: must be in [0, 1], got {self.max_bad_fraction}")

    def loader_config(self, source: str, seed: int, *, num_workers: int | None = None,
                      pin_memory: bool = False) -> LoaderConfig:
        """The loader of `source` with this section's batching and fault tolerance."""
        return LoaderConfig(source, num_frames=self.num_frames, batch_size=self.batch_size, crop=self.crop,
                            shuffle_buffer=self.shuffle_buffer, seed=seed,
                            num_workers=self.num_workers if num_workers is None else num_workers,
                            max_bad_fraction=self.max_bad_fraction, read_retries=self.read_retries,
                            pin_memory=pin_memory)


@dataclass
class Datasets:
    """The checked shard tables: what is trained on, and what validates (None: the eval source's own)."""

    train: ShardTable
    held_out: ShardTable | None
    short_clips: int
    """Training clips shorter than data.num_frames (padded; their padding carries no loss)."""


def check_datasets(data: DataConfig, eval_data: str, holdout_shards: int) -> Datasets:
    """Read and check the dataset before any process group starts or any file is written: locations,
    samples, clips long enough for a prompt frame and a noisy one; the held-out shards split off."""
    if not data.path:
        raise ConfigError("data.path: not set; pass --data.path=DIR (or s3://bucket/prefix) of vidgpt-encode's shards")
    for key, location in (("data.path", data.path), ("eval.data", eval_data)):
        try:
            storage.check_location(location)
        except storage.LocationError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
    table, held_out = load_table(data.path), None
    if holdout_shards and table.uris:  # the last shards validate, the rest train
        table, held_out = table.split(holdout_shards)
    if not table.uris:
        raise DataError(f"{data.path}: the dataset has no samples")
    lengths = [f for shard in table.frames for f in shard]  # frames of every clip
    unusable = sum(f < 2 for f in lengths)
    if unusable:
        raise DataError(f"{data.path}: {unusable} of {len(lengths)} clips have fewer than 2 frames; "
                        "frame-as-prompt training needs a prompt frame and a noisy one (re-encode with "
                        "vidgpt-encode --min-frames 2 or more)")
    return Datasets(table, held_out, sum(f < data.num_frames for f in lengths))


def prompt_limit(batch: dict[str, Any]) -> int:
    """The longest prompt that leaves every clip of the batch a real noisy frame (read on the CPU copy)."""
    return int(batch["valid"].sum(dim=1).min()) - 1


def loss_batch(batch: dict[str, Any], device: torch.device, use_text: bool) -> LossBatch:
    """A loader batch on the device as the objective reads it: latents as stored (fp16; noised in fp32 by
    the objective), the valid mask, and caption embedding and mask when the model takes text."""
    x0 = batch["latents"].to(device, non_blocking=True)  # (B, T, C, H, W)
    valid = batch["valid"].to(device, non_blocking=True)  # (B, T)
    limit = prompt_limit(batch)
    text, text_mask = batch.get("text"), batch.get("text_mask")
    if text is None or not use_text:
        return LossBatch(x0, valid, None, None, limit)
    text_mask = text_mask_or_none(text_mask)  # read on the CPU copy: no device sync
    text = text.to(device, non_blocking=True)
    return LossBatch(x0, valid, text, None if text_mask is None else text_mask.to(device, non_blocking=True), limit)


def build_loaders(data: DataConfig, datasets: Datasets, *, seed: int, rank: int, world: int, pin_memory: bool,
                  eval_source: str | None, eval_seed: int) -> tuple[LatentLoader, LatentLoader | None]:
    """The training loader, and the validation loader when `eval_source` is given (read in-process)."""
    train = LatentLoader(data.loader_config(data.path, seed, pin_memory=pin_memory), rank, world,
                         table=datasets.train)
    if eval_source is None:
        return train, None
    held = LatentLoader(data.loader_config(eval_source, eval_seed, num_workers=0), rank, world,
                        table=datasets.held_out)
    return train, held
