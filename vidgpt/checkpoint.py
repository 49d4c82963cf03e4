"""Sharded checkpoints of a run: DeepSpeed's model/optimizer/scheduler shards plus the trainer's state.

    RUN/checkpoints/step_0000300/   DeepSpeed ZeRO shards (every rank), trainer_rankNNNNN.pt (every rank:
                                    data-loader position, RNG states, EMA shard), meta.json (rank 0, last)
    RUN/checkpoints/latest          the tag of the newest complete checkpoint

A save is complete once every rank has written its part: only then does rank 0 write meta.json and
replace `latest` (atomically), so a process killed mid-save leaves the previous checkpoint as `latest`.
Older complete checkpoints beyond keep_last, and incomplete ones older than the newest complete one,
are then removed. Trainer state files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vidgpt import distributed

LATEST = "latest"
META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used."""


def tag_for(step: int) -> str:
    return f"step_{step:07d}"


def trainer_state_name(rank: int) -> str:
    return f"trainer_rank{rank:05d}.pt"


@dataclass(frozen=True)
class Found:
    path: Path  # the step directory
    meta: dict[str, Any]

    @property
    def tag(self) -> str:
        return self.path.name


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_found(path: Path) -> Found:
    meta_path = path / META
    if not meta_path.exists():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {META}; was its save interrupted?)")
    return Found(path, json.loads(meta_path.read_text()))


def resolve(run_dir: Path, resume: str | None) -> Found | None:
    """--resume auto: the run's `latest` checkpoint if any; --resume PATH: that step directory."""
    if resume is None or resume == "none":
        return None
    if resume == "auto":
        latest = run_dir / "checkpoints" / LATEST
        if not latest.exists():
            return None
        return read_found(run_dir / "checkpoints" / latest.read_text().strip())
    path = Path(resume)
    if (path / LATEST).exists():  # a checkpoints/ directory
        path = path / (path / LATEST).read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such checkpoint directory")
    return read_found(path)


def check_model_config(found: Found, model_cfg: dict[str, Any]) -> None:
    saved = found.meta.get("model", {})
    diff = sorted(k for k in set(saved) | set(model_cfg) if saved.get(k) != model_cfg.get(k))
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {model_cfg.get(k)!r}" for k in diff)
        raise CheckpointError(f"{found.path} is from another model config ({details})")


class Checkpointer:
    def __init__(self, run_dir: Path, keep_last: int, env: distributed.DistEnv) -> None:
        self.dir = run_dir / "checkpoints"
        self.keep_last = keep_last
        self.env = env

    def save(self, engine: Any, step: int, trainer_state: dict[str, Any], meta: dict[str, Any]) -> Path:
        tag = tag_for(step)
        path = self.dir / tag
        if self.env.is_main:
            if path.exists():  # an interrupted save of this step: start over
                shutil.rmtree(path)
            self.dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        engine.save_checkpoint(str(self.dir), tag=tag, save_latest=False)
        torch.save(trainer_state, path / trainer_state_name(self.env.rank))
        distributed.barrier()  # every rank's part is on disk
        if self.env.is_main:
            _write_atomic(path / META, json.dumps({**meta, "step": step, "world": self.env.world}, indent=1))
            _write_atomic(self.dir / LATEST, tag + "\n")
            self._prune(tag)
        distributed.barrier()
        return path

    def _prune(self, newest: str) -> None:
        steps = sorted(p for p in self.dir.glob("step_*") if p.is_dir() and not p.name.endswith("_universal"))
        complete = [p for p in steps if (p / META).exists()]
        keep = {p.name for p in complete[-self.keep_last :]} | {newest}
        for p in steps:
            if p.name not in keep and p.name < newest:
                shutil.rmtree(p, ignore_errors=True)
                shutil.rmtree(p.with_name(p.name + "_universal"), ignore_errors=True)

    @staticmethod
    def load_trainer_states(found: Found) -> list[dict[str, Any]]:
        """Every saving rank's trainer state, in rank order."""
        states = []
        for rank in range(int(found.meta["world"])):
            file = found.path / trainer_state_name(rank)
            if not file.exists():
                raise CheckpointError(f"{found.path}: missing {file.name}")
            states.append(torch.load(file, map_location="cpu", weights_only=True))
        return states


def to_universal(found: Found) -> str:
    """Convert a ZeRO checkpoint to DeepSpeed's universal format (to load on another number of ranks);
    returns the new tag. Run on rank 0 only; cached next to the original."""
    from argparse import Namespace

    from deepspeed.checkpoint import ds_to_universal

    out = found.path.with_name(found.tag + "_universal")
    if not (out / "zero").exists():
        shutil.rmtree(out, ignore_errors=True)
        args = Namespace(
            input_folder=str(found.path), output_folder=str(out), num_extract_workers=1, num_merge_workers=1,
            keep_temp_folder=False, strict=True, inject_missing_state=False,
        )
        ds_to_universal.main(args)
    return out.name
