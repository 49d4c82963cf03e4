from __future__ import annotations

import dataclasses
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from data_pipeline.s3_server import S3ServerError, start_moto_server
from data_pipeline.storage import s3_client
from vidgpt.attention import Backend, use_backend
from vidgpt.diffusion import RectifiedFlow
from vidgpt.kv_cache import TemporalKVCache
from vidgpt.model import FLAVORS, ModelConfig, VidGPT
from vidgpt.sampling import generate
from vidgpt.testing import randomize_weights_

TINY: ModelConfig = FLAVORS["tiny"]
TINY_NO_TEXT: ModelConfig = dataclasses.replace(TINY, text_dim=0)


def tiny_model(text: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32) -> VidGPT:
    """The tiny flavor with random non-zero weights (a fresh model predicts exactly zero)."""
    torch.manual_seed(seed)
    model = VidGPT(TINY if text else TINY_NO_TEXT)
    return randomize_weights_(model, seed=seed).to(dtype).eval()


def assert_cache_equals_no_cache(model: VidGPT, shape: tuple[int, int, int, int], chunk: int, window: int,
                                 frames: int) -> None:
    """`generate` with and without the kv-cache agrees (float64) from a (B, 2, C, H, W) prompt, until the
    first eviction; and something was generated."""
    B, C, H, W = shape
    prompt = torch.randn(B, 2, C, H, W, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    runs = [generate(model, RectifiedFlow(), prompt, frames, chunk=chunk, window=window, steps=4, use_cache=cached,
                     generator=torch.Generator().manual_seed(4)) for cached in (True, False)]
    torch.testing.assert_close(runs[0], runs[1], atol=1e-9, rtol=1e-9)
    assert (runs[0][:, 2:] - prompt[:, -1:]).abs().max() > 1e-3


def assert_teacher_forced_equals_cached(model: VidGPT, shape: tuple[int, int, int, int], frames: int) -> None:
    """One teacher-forced call on [clean, noisy] predicts each noisy frame as the cached frame-by-frame calls do."""
    B, C, H, W = shape
    g = torch.Generator().manual_seed(5)
    clean, noisy = (torch.randn(B, frames, C, H, W, generator=g) for _ in range(2))
    t = torch.rand(B, frames, generator=g) * 1000
    with torch.no_grad():
        both = model(torch.cat([clean, noisy], 1), torch.cat([torch.zeros(B, frames), t], 1), teacher_forced=True)
        cache = TemporalKVCache(window=frames)
        for i in range(frames):
            cached = model(noisy[:, i:i + 1], t[:, i:i + 1], cache=cache)[:, 0]
            torch.testing.assert_close(both[:, frames + i], cached, atol=1e-5, rtol=1e-5)
            model(clean[:, i:i + 1], torch.zeros(B, 1), cache=cache, write_cache=True)


def counted_flops(model: VidGPT, shape: tuple[int, int, int, int], frames: int, cached: int) -> int:
    """FLOPs torch's counter sees in one call on `frames` noisy frames (reference attention kernel), after
    `cached` clean frames went into the kv-cache; a 5-token caption when the model takes text."""
    B, C, H, W = shape
    g = torch.Generator().manual_seed(6)
    text = torch.randn(B, 5, model.cfg.text_dim, generator=g) if model.cfg.text_dim else None
    cache = None
    if cached:
        cache = TemporalKVCache(window=8)
        model(torch.randn(B, cached, C, H, W, generator=g), torch.zeros(B, cached), text=text, cache=cache,
              write_cache=True)
    with use_backend(Backend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(B, frames, C, H, W, generator=g), torch.rand(B, frames, generator=g) * 1000, text=text,
              cache=cache)
    return counter.get_total_flops()


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
