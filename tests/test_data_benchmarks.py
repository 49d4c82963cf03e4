"""The data benchmarks run and print one JSON object with their headline figures (no timing asserted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vidgpt.benchmarks import encode as bench_encode
from vidgpt.benchmarks import loader as bench_loader

from test_real_footage import footage


def test_bench_loader_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--shards", "2", "--samples-per-shard", "8", "--frames", "4", "--latent-size", "4",
            "--batch-size", "2", "--repeats", "1", "--shuffle-buffer", "4"]
    assert bench_loader.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["samples"] == 16 and out["raw_mb_s"] > 0 and out["local_mb_s"] > 0
    assert set(out["local_mb_s_by_workers"]) == {"0", "1", "2"}
    assert out["read_ratio"] == pytest.approx(out["local_mb_s"] / out["raw_mb_s"], rel=0.02, abs=2e-3)
    assert out["s3_mb_s"] > 0  # moto_server is part of the dev extra


def test_bench_encode_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--videos", "2", "--frames", "8", "--size", "32", "--vae-width", "8"]
    assert bench_encode.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["clips"] == 2 and out["failed"] == 0
    assert 0 < out["codec_busy_fraction"] <= 1 and out["frames_s"] > 0
    assert 0 < out["text_fraction"] < 1  # the captions were embedded


def test_bench_encode_wan_vae_on_real_clips(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    os.symlink(footage("carphone_pristine.mp4"), tmp_path / "clips" / "carphone.mp4")
    args = ["--codec", "wan-vae", "--input", str(tmp_path / "clips"), "--fps", "8", "--frames", "11", "--size", "32",
            "--vae-width", "8", "--decode-workers", "0"]
    assert bench_encode.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    # 3.97 s at 8 fps = 32 frames: clips of 9 (11 cut to the 1 + 4k grid), the last 5 too short (< 8 -> 9)
    assert out["videos"] == 1 and out["clips"] == 3 and out["frames_s"] > 0 and out["failed"] == 0
    assert out["codec"].startswith("wan-vae") and 0 < out["codec_busy_fraction"] <= 1
    assert out["vae_vs_identity"] == pytest.approx(out["frames_s"] / out["identity_frames_s"], rel=0.02)
