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
from vidgpt.components.seeds import RandomStreams
from vidgpt.ema import ShardedEMA
from vidgpt.errors import ConfigError
from vidgpt.model import ModelConfig

MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.default is not dataclasses.MISSING}
"""What a checkpoint written before a model setting existed built for it (`check_model_config`)."""
NOT_ON_RESUME = {
    "training.seed": "the data order and the random streams continue from the checkpoint",
    "training.zero_stage": "the checkpoint's shards are laid out for its ZeRO stage",
    "training.precision": "the optimizer's master weights and states were saved for its precision",
    "training.ema_decay": None,  # refused only when it switches the EMA on or off (see override_problem)
}
"""Settings a resume cannot honour, and why; every other changed setting takes effect from the first
resumed step (the lr schedule and AdamW's hyperparameters are re-applied over the loaded optimizer state)."""
IGNORED_ON_RESUME = ("run_dir", "data.path")
"""Where the run and its data live: a run directory copied elsewhere, a dataset moved (whether it is
still the same dataset is checked on its own, `vidgpt.components.data`)."""


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"section.key": value} of a run config as `dataclasses.asdict` gives it (training.deepspeed whole)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name != "training.deepspeed":
            out.update(flat_config(value, name + "."))
        else:
            out[name] = value
    return out


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint's value, this run's)} of the settings that differ (keys the checkpoint's run did not
    have yet, and `IGNORED_ON_RESUME`, aside)."""
    old, new = flat_config(saved), flat_config(current)
    return {k: (old[k], new[k]) for k in sorted(new) if k in old and old[k] != new[k] and k not in IGNORED_ON_RESUME
            and not k.startswith("model.")}  # model settings: check_model_config


def override_problem(key: str, old: Any, new: Any) -> str | None:
    """Why a changed setting cannot take effect on resume, or None."""
    if key == "training.ema_decay":
        return None if (old > 0) == (new > 0) else "the checkpoint's run kept an EMA" if old > 0 else \
            "the checkpoint's run kept no EMA to continue"
    return NOT_ON_RESUME.get(key)


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
                 model_cfg: ModelConfig, run_config: dict[str, Any] | None = None) -> None:
        """run_config: this run's whole config (`dataclasses.asdict`), compared with the checkpoint's."""
        self.cfg, self.env, self.mode = cfg, env, resume
        self.model = dataclasses.asdict(model_cfg)
        self.run_config = run_config or {}
        self.changes: dict[str, tuple[Any, Any]] = {}
        self.resume_from: StepCheckpoint | None = resolve(run_dir, resume)
        if self.resume_from is not None:
            self.check_target(self.resume_from)
        self.files = Checkpointer(run_dir, cfg.keep_last, env)
        self.universal_tag: str | None = None

    @property
    def needs_conversion(self) -> bool:
        return self.resume_from is not None and int(self.resume_from.meta["world"]) != self.env.world

    @property
    def last_good(self) -> str:
        """Where training would go on from, for messages: the newest complete checkpoint, or that none is."""
        found = newest_complete(self.files.dir)
        return str(found.path) if found is not None else f"none (no checkpoint in {self.files.dir} yet)"

    def check_target(self, found: StepCheckpoint) -> None:
        """CheckpointError for another model; ConfigError naming every changed setting a resume of `found`
        cannot honour (nothing is written or loaded yet); the honoured changes are kept to announce."""
        check_model_config(found, self.model, MODEL_DEFAULTS)
        self.changes = config_changes(found.meta.get("config", {}), self.run_config)
        refused = [f"{k} {old!r} -> {new!r} ({why})" for k, (old, new) in self.changes.items()
                   if (why := override_problem(k, old, new))]
        if refused:
            raise ConfigError(f"cannot change on resume: {'; '.join(refused)}; drop the override, or start a new "
                              f"run directory from {found.path} with --resume PATH")

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
                self.check_target(older)
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
                device: torch.device, log: Callable[[str], None]) -> tuple[Restored, RandomStreams]:
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
        apply_optimizer_settings(engine, self.run_config.get("optimizer", {}))
        if self.changes:  # each takes effect from the first resumed step; config.toml records them
            log("resuming with changed settings: " + ", ".join(f"{k} {old} -> {new}" for k, (old, new)
                                                                in self.changes.items()))
        return restored, streams

    def save(self, engine: Any, step: int, trainer_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        return self.files.save(engine, step, trainer_state, meta)


def apply_optimizer_settings(engine: Any, optimizer: dict[str, Any]) -> None:
    """Loading a checkpoint restores AdamW's param-group hyperparameters and the schedule's base lr as they
    were saved; put this run's `[optimizer]` back over them, and the lr at the restored step (the schedule's
    shape, warm-up and length are this run's already: its lambda is built from this config)."""
    scheduler = engine.lr_scheduler
    groups = scheduler.optimizer.param_groups
    for group in groups:
        group.update(betas=tuple(optimizer["betas"]), eps=optimizer["eps"], weight_decay=optimizer["weight_decay"])
    scheduler.base_lrs = [optimizer["lr"]] * len(groups)
    step = scheduler.last_epoch
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [group["lr"] for group in groups]
