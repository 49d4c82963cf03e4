"""Checkpoint and resume for the trainer: which checkpoint a run resumes, its conversion to DeepSpeed's
universal format when the number of ranks changed, loading it into the engine, and saving.

The files themselves (layout, completeness, pruning, conversion) are `vidgpt.checkpoint`'s.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vidgpt import distributed
from vidgpt.checkpoint import (
    CHECKSUMS,
    CheckpointConfig,
    Checkpointer,
    CheckpointError,
    StepCheckpoint,
    check_model_config,
    newest_complete,
    one_line,
    resolve,
    to_universal,
    verify,
    wait_for_universal,
)
from vidgpt.components.data import DataConfig
from vidgpt.components.seeds import RandomStreams
from vidgpt.ema import ShardedEMA
from vidgpt.model import ModelConfig


@dataclass
class Restored:
    """What a rank reads back from a checkpoint besides the engine's own state."""

    step: int
    own: dict[str, Any]
    """This rank's trainer state; on another number of ranks, rank 0's (its counters and loader position)."""
    every_rank: list[dict[str, Any]] | None
    """Every saving rank's trainer state when the number of ranks changed (to re-shard the EMA), else None."""
    saved_config: dict[str, Any]
    """The run config the checkpoint was saved with."""

    @property
    def same_world(self) -> bool:
        return self.every_rank is None


class TrainingCheckpoints:
    """The run's checkpoints: the one to resume (resolved before any process group starts, so errors are
    cheap), and saving every `checkpoint.interval` steps."""

    def __init__(self, cfg: CheckpointConfig, run_dir: Path, env: distributed.DistEnv, resume: str | None,
                 model_cfg: ModelConfig) -> None:
        self.cfg, self.env, self.mode = cfg, env, resume
        self.model = dataclasses.asdict(model_cfg)
        self.resume_from: StepCheckpoint | None = resolve(run_dir, resume)
        if self.resume_from is not None:
            check_model_config(self.resume_from, self.model)
        self.files = Checkpointer(run_dir, cfg.keep_last, env)
        self.universal_tag: str | None = None

    @property
    def needs_conversion(self) -> bool:
        return self.resume_from is not None and int(self.resume_from.meta["world"]) != self.env.world

    def verify(self, log: Callable[[str], None]) -> None:
        """Once the process group has started, before anything is read: every rank hashes a share of the
        files to resume and the ranks agree on what is damaged (all of them raise, or fall back, alike). A
        file whose bytes differ from those recorded at save is an error naming it, or with --resume
        auto-fallback the next older complete checkpoint is verified and resumed instead."""
        while self.resume_from is not None:
            found = self.resume_from
            if not found.meta.get(CHECKSUMS):
                log(f"{found.path}: saved without checksums (by an older vidgpt): its files are not verified")
                return
            shares = distributed.all_gather_objects(verify(found, rank=self.env.rank, world=self.env.world))
            problems = sorted(line for share in shares for line in share)  # type: ignore[union-attr]
            if not problems:
                return
            older = newest_complete(found.path.parent, before=found.tag)
            more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
            if self.mode == "auto-fallback" and older is not None:
                log(f"{problems[0]}{more}; resuming the newest complete checkpoint before it, {older.path} "
                    "(--resume auto-fallback)")
                check_model_config(older, self.model)
                self.resume_from = older
                continue
            hint = (f"; the newest complete one before it is {older.path}: resume it with --resume auto-fallback"
                    if older is not None else "; no older complete checkpoint is left")
            raise CheckpointError(f"{problems[0]}{more}{hint}")

    def convert_if_needed(self, log: Any) -> None:
        """Before the engine's first collective: a checkpoint of another number of ranks is converted to the
        universal format by rank 0 while the others poll the file system for its completion marker (not
        wait in a collective), so a long conversion cannot run into a collective's timeout."""
        found = self.resume_from
        if found is None or not self.needs_conversion:
            return
        if self.env.is_main:
            log(f"resuming {found.meta['world']}-rank checkpoint on {self.env.world} ranks: converting "
                f"to DeepSpeed's universal format (vidgpt-convert does this ahead of time)")
            self.universal_tag = to_universal(found)
        else:
            self.universal_tag = wait_for_universal(found)

    def due(self, step: int, last_step: int) -> bool:
        return step % self.cfg.interval == 0 and step < last_step

    def load(self, engine: Any) -> Restored:
        """The engine's model, optimizer and scheduler from the checkpoint being resumed, and the trainer
        state to restore the rest from."""
        found = self.resume_from
        assert found is not None
        tag = self.universal_tag or found.tag
        try:
            load_path, _ = engine.load_checkpoint(str(found.path.parent), tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        except Exception as exc:  # noqa: BLE001 - DeepSpeed asserts or torch fails on a damaged file
            raise CheckpointError(f"{found.path.parent / tag}: DeepSpeed could not load it ({one_line(exc)}); a "
                                  "model or optimizer file is damaged: resume an older checkpoint") from exc
        if load_path is None:
            raise CheckpointError(f"{found.path}: DeepSpeed could not load it")
        if int(found.meta["world"]) == self.env.world:  # this rank's own file only (its EMA shard included)
            own, every_rank = Checkpointer.load_trainer_state(found, self.env.rank), None
        else:  # every rank's, to re-shard
            every_rank = Checkpointer.load_trainer_states(found)
            own = every_rank[0]
        return Restored(int(own["step"]), own, every_rank, found.meta.get("config", {}))

    def restore(self, engine: Any, *, loader: Any, streams: RandomStreams, ema: ShardedEMA | None, seed: int,
                device: torch.device, data: DataConfig, log: Callable[[str], None]) -> tuple[Restored, RandomStreams]:
        """Resume: the engine, the loader's position, the EMA and the random streams (restarted at the step,
        still deterministic, when the number of ranks changed) from the checkpoint; returns what was read
        and the streams to train on."""
        restored = self.load(engine)
        own, found = restored.own, self.resume_from
        assert found is not None
        loader.load_state_dict(json.loads(own["loader"]))
        if restored.same_world:
            streams.load_state_dict(own)
        else:
            streams = RandomStreams.for_training(seed, self.env.rank, device, restored.step)
        if ema is not None:
            if "ema" not in own:
                raise CheckpointError(f"{found.path} has no EMA but training.ema_decay > 0")
            if restored.every_rank is None:
                ema.load_shards(own["ema"])
            else:
                ema.load_state_dict([s["ema"] for s in restored.every_rank], self.env.rank)
        saved = restored.saved_config.get("data", {})
        changed = [f"data.{k} {saved[k]} -> {getattr(data, k)}" for k in ("batch_size", "num_frames")
                   if k in saved and saved[k] != getattr(data, k)]
        if changed:  # the data position stays right; the optimizer sees other batches from here on
            log(f"resuming with a changed {', '.join(changed)} (the checkpoint's run used the former)")
        return restored, streams

    def save(self, engine: Any, step: int, trainer_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        return self.files.save(engine, step, trainer_state, meta)
