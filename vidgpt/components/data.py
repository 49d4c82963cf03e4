"""The training data: the `[data]` section, the dataset checks made before anything starts, the train
and validation loaders, and batches moved to the training device for the objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from data_pipeline import storage
from data_pipeline.loader import DataError, LatentLoader, LoaderConfig, LoaderSettings, ShardTable, load_table
from vidgpt.errors import ConfigError
from vidgpt.model import text_mask_or_none
from vidgpt.objective import LossBatch


@dataclass(frozen=True, kw_only=True)
class DataConfig(LoaderSettings):
    """The `[data]` section: where the latent shards are, and the loader's settings
    (`data_pipeline.loader.LoaderSettings`: clip length, batch size, shuffling, workers, fault tolerance)."""

    path: str = ""
    """Dataset root (local or s3://), an index.json, or shards (comma list or brace pattern)."""

    def __post_init__(self) -> None:
        if self.num_frames == 1:
            raise ConfigError("data.num_frames: need >= 2 (one prompt frame and one noisy frame)")
        for key, why in self.problems():
            raise ConfigError(f"data.{key}: {why}")

    def loader_config(self, source: str, seed: int, *, num_workers: int | None = None,
                      pin_memory: bool = False) -> LoaderConfig:
        """The loader of `source` with this section's settings."""
        settings = self.settings()
        if num_workers is not None:
            settings["num_workers"] = num_workers
        return LoaderConfig(source, seed=seed, pin_memory=pin_memory, **settings)  # type: ignore[arg-type]


@dataclass
class Datasets:
    """The checked shard tables: what is trained on, and what validates (None: the eval source's own)."""

    train: ShardTable
    held_out: ShardTable | None
    short_clips: int
    """Training clips shorter than data.num_frames (padded; their padding carries no loss)."""


def check_datasets(data: DataConfig, eval_data: str, holdout_shards: int, in_channels: int | None = None) -> Datasets:
    """Read and check the dataset before any process group starts or any file is written: locations,
    samples, clips long enough for a prompt frame and a noisy one, latents of the model's `in_channels`
    (when the index records its codec); the held-out shards split off."""
    if not data.path:
        raise ConfigError("data.path: not set; pass --data.path=DIR (or s3://bucket/prefix) of vidgpt-encode's shards")
    for key, location in (("data.path", data.path), ("eval.data", eval_data)):
        try:
            storage.check_location(location)
        except storage.LocationError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
    table, held_out = load_table(data.path), None
    if in_channels is not None:
        codec = table.codec or {}  # shard lists without an index record none
        channels = codec.get("latent_channels")
        if channels is not None and channels != in_channels:
            raise ConfigError(f"model.in_channels is {in_channels} but {data.path} holds {codec.get('name')} latents "
                              f"of {channels} channels: set --model.in_channels={channels}")
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
