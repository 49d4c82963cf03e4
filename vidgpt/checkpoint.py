"""Sharded checkpoints of a run: DeepSpeed's model/optimizer/scheduler shards plus the trainer's state.

    RUN/checkpoints/step_0000300/   DeepSpeed ZeRO shards (every rank), trainer_rankNNNNN.pt (every rank:
                                    data-loader position, RNG states, EMA shard), meta.json (rank 0, last)
    RUN/checkpoints/latest          the tag of the newest complete checkpoint
    RUN/checkpoints/step_0000300_universal/   DeepSpeed's universal format of it (vidgpt-convert, or
                                    made at start-up to resume on another number of ranks)

A save is complete once every rank has written its part: only then does rank 0 write meta.json and
replace `latest` (atomically), so a process killed mid-save leaves the previous checkpoint as `latest`.
meta.json records every file's size and SHA-256 (each rank hashes a share of the files once they are
written, reading them back from the page cache); resume and export verify the files they read against
it, so a file damaged on disk is named instead of loaded.
Older complete checkpoints beyond keep_last, and incomplete ones older than the newest complete one,
are then removed. Trainer state files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from vidgpt import distributed
from vidgpt.errors import ConfigError

LATEST = "latest"
META = "meta.json"
CHECKSUMS = "checksums"
"""meta.json's record of every other file of the step: {name: {"bytes": N, "sha256": HEX}}."""

Parts = Literal["all", "ema", "model"]
"""What of a checkpoint a reader needs: all (resume), ema (the trainer states that hold the EMA shards:
EMA export), model (DeepSpeed's model and optimizer shards, which hold the fp32 weights: weight export)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used."""


@dataclass
class CheckpointConfig:
    """The `[checkpoint]` section."""

    interval: int = 100
    """Save every this many optimizer steps (and at the end)."""
    keep_last: int = 3
    """Checkpoints kept; older ones are removed once a newer one is complete."""

    def __post_init__(self) -> None:
        for key in ("interval", "keep_last"):
            if getattr(self, key) < 1:
                raise ConfigError(f"checkpoint.{key}: must be >= 1, got {getattr(self, key)}")


def tag_for(step: int) -> str:
    return f"step_{step:07d}"


TAG = re.compile(r"step_\d{7}")
"""What `latest` may name: a step directory of the same checkpoints/ directory, nothing else."""


def read_latest(checkpoints: Path) -> tuple[str | None, str]:
    """The tag `checkpoints/latest` names, or None with why not (missing, unreadable, empty, not a step
    tag such as '../../etc' (a pointer never leads outside its directory), or a step that is not there)."""
    latest = checkpoints / LATEST
    try:
        text = latest.read_text().strip()
    except FileNotFoundError:
        return None, f"{latest} is missing"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{latest} is unreadable ({one_line(exc)})"
    if not TAG.fullmatch(text):
        return None, f"{latest} names {text[:40]!r}, not a step directory"
    if not (checkpoints / text).is_dir():
        return None, f"{latest} names {text}, which is not there"
    return text, ""


def step_dirs(checkpoints: Path) -> list[Path]:
    """The step directories of `checkpoints`, newest first (universal conversions excluded)."""
    return sorted((p for p in checkpoints.glob("step_*") if p.is_dir() and TAG.fullmatch(p.name)), reverse=True)


def trainer_state_name(rank: int) -> str:
    return f"trainer_rank{rank:05d}.pt"


@dataclass(frozen=True)
class StepCheckpoint:
    """A complete checkpoint: its step directory and the meta.json rank 0 wrote last."""

    path: Path
    """RUN/checkpoints/step_NNNNNNN."""
    meta: dict[str, Any]

    @property
    def tag(self) -> str:
        return self.path.name


def one_line(exc: BaseException) -> str:
    """'Type: first line of the message' of an exception."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


NEARLY_FULL_BYTES = 16 * 2**20
"""A failed save with less free space than this on the checkpoint's file system is said as a full disk."""


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return NEARLY_FULL_BYTES  # unknown: not called full


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _needed(name: str, parts: Parts) -> bool:
    """Whether a reader of `parts` reads the checkpoint file `name`."""
    if parts == "all":
        return True
    is_trainer_state = name.startswith("trainer_rank")
    return is_trainer_state if parts == "ema" else not is_trainer_state


def read_step_checkpoint(path: Path, parts: Parts = "all") -> StepCheckpoint:
    """The checkpoint in step directory `path`, checked for completeness: meta.json readable, and every
    saving rank's trainer state and DeepSpeed model state present (of them, the files `parts` needs)."""
    meta_path = path / META
    if not meta_path.exists():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {META}; was its save interrupted?)")
    try:
        meta = json.loads(meta_path.read_text())
        world = int(meta["world"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable ({type(exc).__name__}: {exc})") from exc
    missing = [trainer_state_name(r) for r in range(world) if not (path / trainer_state_name(r)).exists()]
    if meta.get("zero_stage") == 3:
        missing += [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)
                    if not (path / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt").exists()]
        missing += [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)  # bf16_ prefix under bf16
                    if not list(path.glob(f"*zero_pp_rank_{r}_mp_rank_00_optim_states.pt"))]
    recorded = meta.get(CHECKSUMS) or {}
    missing += [name for name in recorded if not (path / name).exists() and name not in missing]
    missing = [name for name in missing if _needed(name, parts)]
    if missing:
        raise CheckpointError(f"{path}: damaged checkpoint, missing {', '.join(missing[:4])}"
                              + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    for file in sorted(path.glob("*.pt")):  # every rank checks every file: they all fail alike, before any collective
        if _needed(file.name, parts):
            _check_torch_file(file)
        if file.name in recorded and file.stat().st_size != recorded[file.name]["bytes"] and _needed(file.name, parts):
            raise CheckpointError(f"{file}: {file.stat().st_size} bytes, {recorded[file.name]['bytes']} when it was "
                                  "saved: damaged; resume an older checkpoint")
    return StepCheckpoint(path, meta)


def sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checksum_share(path: Path, rank: int, world: int) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of this rank's share of the files of step directory `path` (of the sorted names,
    every world-th from the rank's; meta.json aside), so the ranks hash a checkpoint in parallel."""
    names = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != META)
    return {name: {"bytes": (path / name).stat().st_size, "sha256": sha256(path / name)}
            for name in names[rank::world]}


def checksum_problems(found: StepCheckpoint, names: list[str]) -> list[str]:
    """One line per file of `names` whose bytes are not those recorded at save (files without a record
    are not checked)."""
    recorded = found.meta.get(CHECKSUMS) or {}
    problems = []
    for name in names:
        file, want = found.path / name, recorded.get(name)
        if want is None:
            continue
        if not file.exists():
            problems.append(f"{file}: missing")
        elif file.stat().st_size != want["bytes"]:
            problems.append(f"{file}: {file.stat().st_size} bytes, {want['bytes']} when it was saved")
        elif sha256(file) != want["sha256"]:
            problems.append(f"{file}: its SHA-256 differs from the one recorded when it was saved (damaged on disk)")
    return problems


def verify(found: StepCheckpoint, parts: Parts = "all", *, rank: int = 0, world: int = 1) -> list[str]:
    """checksum_problems of this rank's share of the files `parts` needs (all of them for one process)."""
    names = sorted(name for name in (found.meta.get(CHECKSUMS) or {}) if _needed(name, parts))
    return checksum_problems(found, names[rank::world])


def _check_torch_file(file: Path) -> None:
    """torch.save writes a zip archive whose directory sits at its end: reading that directory (a few
    KB, whatever the file's size) finds a truncated or overwritten file without loading it."""
    try:
        with zipfile.ZipFile(file) as archive:
            if not archive.namelist():
                raise zipfile.BadZipFile("no members")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{file}: truncated or corrupt, not a complete torch file ({one_line(exc)}); resume "
                              "an older checkpoint (--resume PATH)") from exc


def newest_complete(checkpoints: Path, before: str | None = None, parts: Parts = "all") -> StepCheckpoint | None:
    """The newest step directory of `checkpoints` that `read_step_checkpoint` accepts (older than `before`)."""
    for path in step_dirs(checkpoints):
        if before is not None and path.name >= before:
            continue
        try:
            return read_step_checkpoint(path, parts)
        except CheckpointError:
            continue
    return None


def resolve(run_dir: Path, resume: str | None, parts: Parts = "all") -> StepCheckpoint | None:
    """The checkpoint a run starts from.

    None (no --resume) or "none": a fresh run, refused when `run_dir` already holds a checkpoint that was
    complete once (starting over would overwrite it). auto: the checkpoint `latest` names (a damaged one
    is an error naming the newest complete one); when `latest` is missing or unreadable (a partial copy,
    an interrupted rsync), the newest complete step found on disk, said on stderr; None when the run has
    no checkpoint yet. auto-fallback: as auto, but past a damaged `latest` to the newest complete one.
    PATH: that step directory (or a checkpoints/ directory's latest). parts: what the caller reads of it
    (a damaged file it does not read does not count)."""
    checkpoints = run_dir / "checkpoints"
    if resume is None or resume == "none":
        saved = [p for p in step_dirs(checkpoints) if (p / META).exists()]
        if saved:
            raise CheckpointError(
                f"{run_dir} already holds checkpoints (newest: {saved[0].name}); starting a new run there would "
                "overwrite them: pass --resume auto to continue it, or another --run_dir to start a new run")
        return None
    if resume in ("auto", "auto-fallback"):
        tag, why = read_latest(checkpoints)
        if tag is None:
            found = newest_complete(checkpoints, parts=parts)
            if found is not None:
                print(f"vidgpt: {why}; resuming the newest complete checkpoint found on disk, {found.path}",
                      file=sys.stderr)
                return found
            once_complete = [p.name for p in step_dirs(checkpoints) if (p / META).exists()]
            if once_complete:
                raise CheckpointError(f"{why}, and no checkpoint in {checkpoints} is complete "
                                      f"({', '.join(once_complete[:3])} damaged); repair one and pass it as --resume "
                                      "PATH, or start a new --run_dir")
            return None  # no checkpoint yet (at most a first save that was interrupted): start from step 0
        try:
            return read_step_checkpoint(checkpoints / tag, parts)
        except CheckpointError as exc:
            older = newest_complete(checkpoints, before=tag, parts=parts)
            if resume == "auto-fallback" and older is not None:
                print(f"vidgpt: {exc}; resuming the newest complete checkpoint, {older.path} (--resume "
                      "auto-fallback)", file=sys.stderr)
                return older
            hint = (f"; the newest complete one is {older.path}: resume it with --resume auto-fallback"
                    if older is not None else "; no complete checkpoint is left")
            raise CheckpointError(f"{exc} (latest){hint}") from exc
    path = Path(resume)
    if (path / LATEST).exists():  # a checkpoints/ directory
        tag, why = read_latest(path)
        if tag is None:
            raise CheckpointError(f"--resume {resume}: {why}; pass a step directory instead")
        path = path / tag
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such checkpoint directory")
    return read_step_checkpoint(path, parts)


def find_checkpoint(path: Path, parts: Parts = "all") -> StepCheckpoint:
    """The checkpoint a command-line argument names: a run directory or a checkpoints/ directory (its
    `latest`), or a step directory (vidgpt-export, vidgpt-convert); its files that `parts` needs are
    verified against the checksums recorded at save."""
    if (path / "checkpoints").is_dir():
        found = resolve(path, "auto", parts)
        if found is None:
            raise CheckpointError(f"{path}: the run has no complete checkpoint")
    else:
        found = resolve(path, str(path), parts) if (path / LATEST).exists() else read_step_checkpoint(path, parts)
    problems = verify(found, parts)
    if problems:
        raise CheckpointError(f"{problems[0]}" + (f" (and {len(problems) - 1} more files)" if len(problems) > 1 else "")
                              + "; use an older checkpoint")
    return found


def check_model_config(found: StepCheckpoint, model_cfg: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """CheckpointError unless the checkpoint's network has these hyperparameters (the flavor label aside).
    defaults: the value of each setting a checkpoint written before the setting existed lacks (ModelConfig's
    defaults: what that older version built)."""
    saved = {**(defaults or {}), **found.meta.get("model", {})}
    labels = ("flavor", "init_from", "init_reinit")  # not the network's shape
    diff = sorted(k for k in set(saved) | set(model_cfg) if k not in labels and saved.get(k) != model_cfg.get(k))
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
        try:
            engine.save_checkpoint(str(self.dir), tag=tag, save_latest=False)
            torch.save(trainer_state, path / trainer_state_name(self.env.rank))
        except (OSError, RuntimeError) as exc:  # torch wraps a failed write in RuntimeError
            # torch reports a full disk as "unexpected pos N vs M", without errno: look at the free space too
            nospace = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "No space left" in str(exc)
                       or _free_bytes(self.dir) < NEARLY_FULL_BYTES)
            shutil.rmtree(path, ignore_errors=True)  # never leave a half-written step behind
            what = "no space left on the device" if nospace else f"write failed ({one_line(exc)})"
            raise CheckpointError(f"{self.dir}: {what} while saving step {step}; the half-written {path.name} was "
                                  f"removed, the previous checkpoint is intact") from exc
        distributed.barrier()  # every rank's part is on disk: hash it, each rank a share
        shares = distributed.all_gather_objects(checksum_share(path, self.env.rank, self.env.world))
        if self.env.is_main:
            sums = {name: entry for share in shares for name, entry in share.items()}  # type: ignore[union-attr]
            _write_atomic(path / META, json.dumps({**meta, "step": step, "world": self.env.world, CHECKSUMS: sums},
                                                  indent=1))
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
                for universal in [p.with_name(p.name + "_universal"), *self.dir.glob(f".{p.name}_universal.tmp-*")]:
                    shutil.rmtree(universal, ignore_errors=True)

    @staticmethod
    def load_trainer_state(found: StepCheckpoint, rank: int) -> dict[str, Any]:
        """One saving rank's trainer state (what a resume on the same number of ranks reads)."""
        file = found.path / trainer_state_name(rank)
        if not file.exists():
            raise CheckpointError(f"{found.path}: missing {file.name}")
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file: torch raises many kinds
            raise CheckpointError(f"{file}: unreadable, truncated or corrupt ({one_line(exc)}); resume an older "
                                  "checkpoint (--resume PATH)") from exc

    @staticmethod
    def load_trainer_states(found: StepCheckpoint) -> list[dict[str, Any]]:
        """Every saving rank's trainer state, in rank order (export; resume on another world size)."""
        return [Checkpointer.load_trainer_state(found, rank) for rank in range(int(found.meta["world"]))]


UNIVERSAL_DONE = "universal.json"
"""Written last into a universal conversion: its presence is what makes the conversion count as done."""


def universal_dir(found: StepCheckpoint) -> Path:
    return found.path.with_name(found.tag + "_universal")


def universal_done(found: StepCheckpoint) -> bool:
    return (universal_dir(found) / UNIVERSAL_DONE).exists()


def to_universal(found: StepCheckpoint, *, workers: int = 1) -> str:
    """Convert a ZeRO checkpoint to DeepSpeed's universal format (to load on another number of ranks);
    returns the new tag (`<tag>_universal`, next to the original, reused once complete).

    The conversion is written into a temporary directory, marked complete (UNIVERSAL_DONE) and only
    then renamed into place, so a conversion killed partway never counts as done: the next call
    removes what it left and starts over. Run it on one process (rank 0, or `vidgpt-convert` before
    launching); other ranks wait with `wait_for_universal`."""
    from deepspeed.checkpoint import ds_to_universal

    out = universal_dir(found)
    if universal_done(found):
        return out.name
    for stale in [out, *out.parent.glob(f".{out.name}.tmp-*")]:  # a killed conversion, or a pre-marker one
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    args = argparse.Namespace(
        input_folder=str(found.path), output_folder=str(tmp), num_extract_workers=workers,
        num_merge_workers=workers, keep_temp_folder=False, strict=True, inject_missing_state=False,
    )
    ds_to_universal.main(args)
    _write_atomic(tmp / UNIVERSAL_DONE, json.dumps({"source": found.tag, "world": found.meta.get("world")}) + "\n")
    os.replace(tmp, out)
    return out.name


def wait_for_universal(found: StepCheckpoint, *, poll_s: float = 2.0, timeout_s: float | None = None,
                       alive: Callable[[], bool] | None = None) -> str:
    """Wait (polling the file system, not in a collective with a timeout) until another process has
    finished `to_universal(found)`; returns the tag. `alive()` returning False (the converting rank is
    gone) or the timeout ends the wait with a CheckpointError."""
    start = time.monotonic()
    while not universal_done(found):
        if alive is not None and not alive():
            raise CheckpointError(f"{found.path}: the rank converting it to the universal format stopped "
                                  f"before finishing; run `vidgpt-convert {found.path}`, then resume")
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise CheckpointError(f"{found.path}: no universal conversion after {timeout_s:.0f} s")
        time.sleep(poll_s)
    return universal_dir(found).name


def convert_main(argv: list[str] | None = None) -> int:
    """vidgpt-convert: convert a checkpoint to the universal format offline, before resuming it on
    another number of ranks (the trainer would otherwise convert on rank 0 while the rest wait)."""
    ap = argparse.ArgumentParser(
        prog="vidgpt-convert",
        description="Convert a sharded checkpoint to DeepSpeed's universal format, so that `vidgpt-train "
                    "--resume` can load it on a different number of ranks without converting at start-up. "
                    "Safe to interrupt: an unfinished conversion is redone by the next run.")
    ap.add_argument("checkpoint", help="a checkpoint step directory, a checkpoints/ directory or a run directory")
    ap.add_argument("--workers", type=int, default=4, help="extract/merge processes (default: 4)")
    args = ap.parse_args(argv)
    try:
        found = find_checkpoint(Path(args.checkpoint))
        if args.workers < 1:
            raise CheckpointError(f"--workers must be >= 1, got {args.workers}")
        if universal_done(found):
            print(f"vidgpt-convert: {universal_dir(found)} is already complete")
            return 0
        print(f"vidgpt-convert: converting {found.path} ({found.meta.get('world')} ranks) ...", flush=True)
        start = time.monotonic()
        to_universal(found, workers=args.workers)
    except CheckpointError as exc:
        print(f"vidgpt-convert: error: {exc}", file=sys.stderr)
        return 1
    print(f"vidgpt-convert: wrote {universal_dir(found)} in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(convert_main())
