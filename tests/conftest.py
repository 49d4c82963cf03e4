from __future__ import annotations

import dataclasses
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from data_pipeline.s3_server import S3ServerError, start_moto_server
from data_pipeline.storage import s3_client
from vidgpt.model import FLAVORS, ModelConfig, VidGPT
from vidgpt.testing import randomize_weights_

TINY: ModelConfig = FLAVORS["tiny"]
TINY_NO_TEXT: ModelConfig = dataclasses.replace(TINY, text_dim=0)


def tiny_model(text: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32) -> VidGPT:
    """The tiny flavor with random non-zero weights (a fresh model predicts exactly zero)."""
    torch.manual_seed(seed)
    model = VidGPT(TINY if text else TINY_NO_TEXT)
    return randomize_weights_(model, seed=seed).to(dtype).eval()


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(1234)


# ----------------------------------------------------------------------------- a real S3 server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto_server (a real S3-compatible HTTP server) on 127.0.0.1 with a free port; yields its URL and
    points boto3 at it for the whole session (credentials are dummies moto accepts)."""
    try:
        proc, url = start_moto_server()
    except S3ServerError as exc:
        if "not installed" in str(exc):
            pytest.skip(str(exc))
        raise
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ENDPOINT_URL", url)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("VIDGPT_S3_MAX_ATTEMPTS", "2")
    try:
        yield url
    finally:
        mp.undo()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A fresh, empty bucket on the moto server; yields 's3://NAME'."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """A factory of small real file systems (tmpfs of the given size, e.g. "1m"), to fill up for real; the
    test is skipped where mounting is not allowed. remount(size) changes the size (space freed)."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode})")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True, capture_output=True)
