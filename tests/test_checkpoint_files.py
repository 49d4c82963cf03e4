"""Damaged checkpoints, malformed locations and file modes: found by reading files, one clear line."""

from __future__ import annotations

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
from vidgpt.checkpoint import Checkpointer, CheckpointError, resolve, tag_for, trainer_state_name


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
