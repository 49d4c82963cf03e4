"""Damaged checkpoints, malformed locations and file modes: found by reading files, one clear line."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from data_pipeline import storage
from data_pipeline.encode import main as encode
from vidgpt import distributed
from vidgpt.checkpoint import (
    CHECKSUMS,
    Checkpointer,
    CheckpointError,
    StepCheckpoint,
    check_model_config,
    find_checkpoint,
    resolve,
    tag_for,
    trainer_state_name,
    verify,
)
from vidgpt.components.checkpointing import MODEL_DEFAULTS
from vidgpt.model import FLAVORS


def fake_checkpoint(checkpoints: Path, step: int, world: int = 2) -> Path:
    """The files of a complete ZeRO-3 checkpoint: real torch files whose contents these checks do not read."""
    path = checkpoints / tag_for(step)
    path.mkdir(parents=True)
    for r in range(world):
        for name in (trainer_state_name(r), f"zero_pp_rank_{r}_mp_rank_00_model_states.pt",
                     f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt"):
            torch.save({"rank": r}, path / name)
    (path / "meta.json").write_text(json.dumps({"step": step, "world": world, "zero_stage": 3}))
    (checkpoints / "latest").write_text(path.name + "\n")
    return path


def test_a_damaged_latest_checkpoint_is_named_with_the_newest_complete_one(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    checkpoints = tmp_path / "checkpoints"
    older = fake_checkpoint(checkpoints, 100)
    latest = fake_checkpoint(checkpoints, 200)
    assert resolve(tmp_path, "auto").path == latest
    (latest / "zero_pp_rank_1_mp_rank_00_model_states.pt").unlink()  # a rank's DeepSpeed file lost
    with pytest.raises(CheckpointError) as exc:
        resolve(tmp_path, "auto")
    msg = str(exc.value)
    assert "damaged checkpoint, missing zero_pp_rank_1_mp_rank_00_model_states.pt" in msg
    assert f"the newest complete one is {older}" in msg and "--resume auto-fallback" in msg
    assert resolve(tmp_path, "auto-fallback").path == older  # only when asked, and said
    assert f"resuming the newest complete checkpoint, {older}" in capsys.readouterr().err
    (latest / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json: unreadable"):
        resolve(tmp_path, "auto")
    for name in [trainer_state_name(0), "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"]:
        (older / name).unlink()
    with pytest.raises(CheckpointError, match="no complete checkpoint is left"):
        resolve(tmp_path, "auto-fallback")


def test_a_run_directory_with_checkpoints_is_never_started_over(tmp_path: Path) -> None:
    """Without --resume (or with none) a run directory holding a checkpoint is refused, saying what to pass;
    one that holds only an interrupted first save (no meta.json) starts from step 0."""
    checkpoints = tmp_path / "checkpoints"
    assert resolve(tmp_path, None) is None  # a new run directory
    partial = checkpoints / tag_for(10)
    partial.mkdir(parents=True)  # a first save killed halfway: nothing to lose
    assert resolve(tmp_path, None) is None and resolve(tmp_path, "auto") is None
    fake_checkpoint(checkpoints, 20)
    for resume in (None, "none"):
        with pytest.raises(CheckpointError) as exc:
            resolve(tmp_path, resume)
        assert "already holds checkpoints (newest: step_0000020)" in str(exc.value)
        assert "--resume auto" in str(exc.value) and "--run_dir" in str(exc.value)
        assert len(str(exc.value).splitlines()) == 1
    (checkpoints / "latest").unlink()  # an interrupted copy: the pointer lost, the steps still there
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        resolve(tmp_path, None)


@pytest.mark.parametrize("pointer", [None, "", "../../../etc", "step_0000099", "step_1"])
def test_resume_auto_without_a_readable_latest_takes_the_newest_complete_step(
        pointer: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lost, empty, escaping or dangling `latest` resumes the newest complete step on disk and says so,
    with auto and auto-fallback alike (never a restart from step 0 that would overwrite the run)."""
    checkpoints = tmp_path / "checkpoints"
    fake_checkpoint(checkpoints, 10)
    newest = fake_checkpoint(checkpoints, 20)
    (checkpoints / tag_for(30)).mkdir()  # a save interrupted after step 20's
    latest = checkpoints / "latest"
    if pointer is None:
        latest.unlink()
    else:
        latest.write_text(pointer + "\n")
    for resume in ("auto", "auto-fallback"):
        assert resolve(tmp_path, resume).path == newest
        err = capsys.readouterr().err
        assert f"resuming the newest complete checkpoint found on disk, {newest}" in err
    for step in (10, 20):  # every step damaged: refused, not restarted
        (checkpoints / tag_for(step) / trainer_state_name(0)).unlink()
    with pytest.raises(CheckpointError, match="no checkpoint in .* is complete"):
        resolve(tmp_path, "auto")


class _DiskFullEngine:
    """A DeepSpeed engine whose save hits a full disk halfway through its files. (ENOSPC cannot be made
    for real without mounting a small file system, which a test machine may not allow.)"""

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool) -> None:
        step = Path(save_dir, tag)
        step.mkdir(parents=True, exist_ok=True)
        (step / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(step / "zero_pp_rank_0_mp_rank_00_optim_states.pt"))


def test_a_full_disk_during_a_save_says_so_and_leaves_no_half_written_step(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    previous = fake_checkpoint(checkpoints, 100, world=1)
    env = distributed.DistEnv(rank=0, world=1, local_rank=0, master_addr="127.0.0.1", master_port=0, source="single")
    with pytest.raises(CheckpointError) as exc:
        Checkpointer(tmp_path, keep_last=2, env=env).save(_DiskFullEngine(), 200, {"step": 200}, {"zero_stage": 3})
    assert str(exc.value).startswith(f"{checkpoints}: no space left on the device while saving step 200")
    assert not (checkpoints / tag_for(200)).exists()
    assert (checkpoints / "latest").read_text().strip() == previous.name and resolve(tmp_path, "auto").path == previous


class _FileEngine:
    """A DeepSpeed engine's save: the files of a one-rank ZeRO-3 checkpoint, real torch files."""

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool) -> None:
        step = Path(save_dir, tag)
        step.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.arange(1000.0)}, step / "zero_pp_rank_0_mp_rank_00_model_states.pt")
        torch.save({"exp_avg": torch.ones(5000)}, step / "zero_pp_rank_0_mp_rank_00_optim_states.pt")


def _overwrite_inside(file: Path, offset: int, count: int) -> None:
    """Damage as a failing disk or a stray write does: bytes inside the file change, its size does not."""
    data = bytearray(file.read_bytes())
    data[offset : offset + count] = bytes(255 - b for b in data[offset : offset + count])
    file.write_bytes(bytes(data))


def test_checkpoints_record_checksums_and_damage_inside_a_file_is_named(tmp_path: Path) -> None:
    """meta.json records the size and SHA-256 of every file of the step; bytes changed inside the optimizer
    shard (its size and zip directory intact) are named by resume and by every export that reads the file,
    and not by the EMA export, which does not; a truncated optimizer shard does not stop the EMA export."""
    env = distributed.DistEnv(rank=0, world=1, local_rank=0, master_addr="127.0.0.1", master_port=0, source="single")
    files = Checkpointer(tmp_path, keep_last=2, env=env)
    path = files.save(_FileEngine(), 10, {"step": 10, "ema": {"w": torch.zeros(3)}}, {"zero_stage": 3, "ema": True})
    meta = json.loads((path / "meta.json").read_text())
    names = sorted(p.name for p in path.iterdir() if p.name != "meta.json")
    assert sorted(meta[CHECKSUMS]) == names and len(names) == 3
    optim = path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    assert meta[CHECKSUMS][optim.name]["bytes"] == optim.stat().st_size
    found = find_checkpoint(tmp_path)
    assert verify(found) == []
    _overwrite_inside(optim, 4000, 4000)  # 1,000 exp_avg values
    assert resolve(tmp_path, "auto").path == path  # cheap checks (zip directory, sizes) cannot see it
    assert verify(found) == [f"{optim}: its SHA-256 differs from the one recorded when it was saved (damaged on disk)"]
    for parts in ("all", "model"):
        with pytest.raises(CheckpointError, match=f"{optim}: its SHA-256 differs"):
            find_checkpoint(tmp_path, parts)  # type: ignore[arg-type]
    assert find_checkpoint(tmp_path, "ema").path == path
    optim.write_bytes(optim.read_bytes()[:-100])  # truncated
    assert find_checkpoint(tmp_path, "ema").path == path
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        find_checkpoint(tmp_path, "model")


@pytest.mark.parametrize("bad", ["s3:/bucket/x", "s3:bucket/x", "S3:/b", "s3://", "s3:///key"])
def test_malformed_s3_urls_are_refused_everywhere(bad: str, tmp_path: Path) -> None:
    with pytest.raises(storage.LocationError, match="S3 URL"):
        storage.join(bad, "index.json")
    with pytest.raises(SystemExit) as exc:  # an argument error, from argparse
        encode([str(tmp_path), bad])
    assert exc.value.code == 2
    assert not any(p.name.lower().startswith("s3:") for p in Path.cwd().iterdir())  # no local 's3:' folder


def test_small_files_get_the_same_mode_as_shards(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    storage.write_bytes(str(target), b"{}")
    shard = tmp_path / "shard.tar"
    shard.write_bytes(b"x")  # written with open(): 0666 & ~umask
    assert stat.S_IMODE(os.stat(target).st_mode) == stat.S_IMODE(os.stat(shard).st_mode)


def test_a_model_setting_newer_than_the_checkpoint_counts_as_its_default(tmp_path: Path) -> None:
    """A checkpoint written before `temporal_scope` existed built the default ('position'): resuming it with
    the default passes, with the other value it is refused, and a setting that differs is still named."""
    now = dataclasses.asdict(FLAVORS["tiny"])
    older = {k: v for k, v in now.items() if k != "temporal_scope"}
    found = StepCheckpoint(tmp_path / "step_0000001", {"model": older})
    check_model_config(found, now, MODEL_DEFAULTS)
    with pytest.raises(CheckpointError, match="temporal_scope: checkpoint 'position' vs config 'frame'"):
        check_model_config(found, {**now, "temporal_scope": "frame"}, MODEL_DEFAULTS)
    with pytest.raises(CheckpointError, match="temporal_scope: checkpoint None vs config 'position'"):
        check_model_config(found, now)  # without the defaults a missing setting is a difference
    with pytest.raises(CheckpointError, match="depth: checkpoint 2 vs config 3"):
        check_model_config(found, {**now, "depth": 3}, MODEL_DEFAULTS)
