"""Aspect-ratio buckets: vidgpt-encode --buckets sends each video to the bucket nearest its aspect ratio,
the loader builds every batch from one bucket with equal batches per rank and exact resume (also on
another number of ranks), the model trains on several sizes, and vidgpt-sample picks the bucket nearest
a prompt's aspect ratio (or takes --size)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.encode import main as encode
from data_pipeline.loader import LatentLoader, LoaderConfig
from data_pipeline.video import DecodeOptions, decode_clips, nearest_bucket, parse_buckets
from vidgpt.export import main as export

from test_loader import epoch, make_dataset
from test_real_footage import CLIPS, encode_footage, footage
from test_train import logs, losses, train

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(4, 4), (2, 6), (6, 2)]
BUCKETS = "32x32,24x40,40x24"


def test_bucket_lists_parse_and_the_nearest_aspect_ratio_wins() -> None:
    assert parse_buckets("256x256, 192X320,320x192") == ((256, 256), (192, 320), (320, 192))
    for bad, why in (("256x", "is not HxW"), ("256*256", "is not HxW"), ("0x32", "is not HxW"),
                     ("32x32,32x32", "listed twice"), ("", "is not HxW")):
        with pytest.raises(ValueError, match=why):
            parse_buckets(bad)
    buckets = parse_buckets(BUCKETS)
    assert nearest_bucket(720, 1280, buckets) == (24, 40)  # 16:9 -> 5:3
    assert nearest_bucket(272, 640, buckets) == (24, 40)  # 2.35:1, wider than every bucket
    assert nearest_bucket(144, 176, buckets) == (32, 32)  # 11:9 is nearer 1:1 than 5:3 on a log scale
    assert nearest_bucket(1280, 720, buckets) == (40, 24)  # portrait
    assert nearest_bucket(100, 100, ((10, 20), (20, 10))) == (10, 20)  # equals: the first


@pytest.fixture
def bucketed(tmp_path: Path) -> tuple[str, dict[str, tuple[int, int]]]:
    root = str(tmp_path / "ds")
    clips = make_dataset(root, [3, 11, 6, 14, 2, 9], shapes=SHAPES)  # 45 samples in three latent sizes
    return root, {key: (lat.shape[2], lat.shape[3]) for key, lat in clips.items()}


def cfg(root: str, **kw: object) -> LoaderConfig:
    return LoaderConfig(root, **{"num_frames": 4, "batch_size": 3, "shuffle_buffer": 5, "num_workers": 0, "seed": 7,
                                 **kw})  # type: ignore[arg-type]


def keys(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["keys"]]


def assert_one_bucket_each(batches: list[dict], shape_of: dict[str, tuple[int, int]]) -> None:
    for b in batches:
        assert len({shape_of[k] for k in b["keys"]}) == 1 and tuple(b["latents"].shape[-2:]) == shape_of[b["keys"][0]]


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_every_batch_is_one_bucket_and_every_rank_gets_as_many(bucketed, world: int, workers: int) -> None:  # noqa: ANN001
    root, shape_of = bucketed
    loaders = [LatentLoader(cfg(root, num_workers=workers), r, world) for r in range(world)]
    per_rank = [epoch(loader) for loader in loaders]
    assert len({len(batches) for batches in per_rank}) == 1 and len(per_rank[0]) == len(loaders[0]) > 0
    seen = [k for batches in per_rank for k in keys(batches)]
    assert len(seen) == len(set(seen))  # each sample at most once an epoch
    for batches in per_rank:
        assert_one_bucket_each(batches, shape_of)
    # what sits out: under one batch per bucket (the units), then the equalising remainder across readers
    per_bucket = Counter(shape_of.values())
    units = sum(n // 3 for n in per_bucket.values())
    readers = world * max(1, workers)
    assert len(seen) == units // readers * readers * 3
    assert {shape_of[k] for k in seen} == set(SHAPES)
    # another epoch: another order of units, still one bucket each
    again = epoch(loaders[0])
    assert keys(again) != keys(per_rank[0])
    assert_one_bucket_each(again, shape_of)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("consumed", [1, 3])
def test_bucketed_resume_equals_uninterrupted(bucketed, workers: int, consumed: int) -> None:  # noqa: ANN001
    root, _ = bucketed
    uninterrupted = LatentLoader(cfg(root, num_workers=workers))
    full, next_epoch = epoch(uninterrupted), epoch(uninterrupted)
    loader = LatentLoader(cfg(root, num_workers=workers))
    head = epoch(loader, limit=consumed)
    resumed = LatentLoader(cfg(root, num_workers=workers))
    resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
    tail = epoch(resumed)
    assert keys(head + tail) == keys(full)
    assert all(torch.equal(x["latents"], y["latents"]) for x, y in zip(head + tail, full, strict=True))
    assert keys(epoch(resumed)) == keys(next_epoch)


@pytest.mark.parametrize("new_world,new_workers", [(1, 0), (3, 1)])
def test_bucketed_resume_on_another_number_of_ranks(bucketed, new_world: int, new_workers: int) -> None:  # noqa: ANN001
    root, shape_of = bucketed
    planned: set[str] = set()
    for r in range(2):
        planned |= set(keys(epoch(LatentLoader(cfg(root, num_workers=2), r, 2))))
    old = [LatentLoader(cfg(root, num_workers=2), r, 2) for r in range(2)]
    consumed = [k for loader in old for k in keys(epoch(loader, limit=2))]
    state = old[0].state_dict()
    after: list[dict] = []
    lengths = []
    for r in range(new_world):
        loader = LatentLoader(cfg(root, num_workers=new_workers), r, new_world)
        loader.load_state_dict(state)
        batches = epoch(loader)
        lengths.append(len(batches))
        after += batches
        assert loader.epoch == 1
    assert len(set(lengths)) == 1  # equal batches per rank
    assert_one_bucket_each(after, shape_of)
    seen = keys(after)
    assert len(seen) == len(set(seen)) and not set(seen) & set(consumed)  # nothing twice
    remaining = planned - set(consumed)
    assert set(seen) <= remaining
    units, readers = len(remaining) // 3, new_world * max(1, new_workers)
    assert len(seen) == units // readers * readers * 3  # only the equalising remainder sits out


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def mp4_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def footage_in_buckets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three real clips at 8 fps in 16-frame clips, each in the bucket nearest its aspect ratio."""
    return encode_footage(tmp_path_factory.mktemp("buckets"), CLIPS, "--buckets", BUCKETS, "--fps", "8",
                          "--min-frames", "8", "--max-frames", "16")


def test_bucketed_training_resumes_exactly_on_two_ranks(footage_in_buckets: Path, tmp_path: Path) -> None:
    """Batches of 24x40 and of 32x32 frames under ZeRO-3 on 2 ranks (each rank's batch one bucket); stopped
    at step 2 and resumed, the run reproduces the uninterrupted one loss for loss."""
    uninterrupted, resumed = tmp_path / "A", tmp_path / "B"
    extra = ["--model.in_channels=3", "--model.text_dim=0", "--checkpoint.interval=2"]
    assert train(uninterrupted, 2, *extra, "--training.steps=6", data=footage_in_buckets) == [0, 0], logs(uninterrupted)
    assert train(resumed, 2, *extra, "--training.steps=2", data=footage_in_buckets) == [0, 0], logs(resumed)
    assert train(resumed, 2, *extra, "--training.steps=6", "--resume", "auto", data=footage_in_buckets) == [0, 0]
    a, b = losses(uninterrupted), losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(abs(a[s] - b[s]) <= 1e-6 for s in a), (a, b)
    # the 6 steps (3 epochs of 2 batches per rank, the trainer's loader settings) met both buckets
    shapes = set()
    for rank in range(2):
        loader = LatentLoader(LoaderConfig(str(footage_in_buckets), num_frames=8, batch_size=2, shuffle_buffer=64,
                                           seed=0), rank, 2)
        shapes |= {tuple(b["latents"].shape[-2:]) for _ in range(3) for b in epoch(loader)}
    assert shapes == {(24, 40), (32, 32)}


def test_real_footage_in_buckets_trained_on_and_continued_at_the_nearest_bucket(footage_in_buckets: Path,
                                                                                tmp_path: Path) -> None:
    import av

    data = footage_in_buckets
    index = json.loads((data / "index.json").read_text())
    assert index["buckets"] == [[32, 32], [24, 40], [40, 24]]
    sizes = Counter(tuple(hw) for shard in index["shards"] for hw in shard["sizes"])
    want: Counter[tuple[int, int]] = Counter()
    for name in CLIPS:  # each clip resized and cropped to the bucket nearest its aspect ratio, as decode_clips does
        with av.open(str(footage(name))) as container:
            stream = container.streams.video[0]
            bucket = nearest_bucket(stream.height, stream.width, parse_buckets(BUCKETS))
        (same,) = decode_clips(str(footage(name)), DecodeOptions(height=bucket[0], width=bucket[1], fps=8,
                                                                   max_frames=10_000))
        n = same.frames.shape[0]
        want[bucket] += n // 16 + (n % 16 >= 8)
    assert sizes == want and set(sizes) == {(24, 40), (32, 32)}  # 16:9 and 2.35:1 -> 24x40; 11:9 -> 32x32

    run_dir = tmp_path / "run"
    done = run("vidgpt.train", "--config", str(ROOT / "configs" / "demo_cpu.toml"), f"--run_dir={run_dir}",
               f"--data.path={data}", "--model.flavor=tiny", "--model.text_dim=0", "--model.in_channels=3",
               "--model.patch=2", "--training.steps=6", "--checkpoint.interval=100", "--logging.interval=3",
               "--data.batch_size=2", "--eval.interval=0")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert export([str(run_dir), str(tmp_path / "export")]) == 0
    common = ["--prompt-frames", "2", "--frames", "2", "--chunk", "1", "--steps", "2"]
    for name, hw in (("bikes.mp4", (24, 40)), ("carphone_pristine.mp4", (32, 32))):
        out = tmp_path / name
        done = run("vidgpt.sample", str(tmp_path / "export"), "--prompt", str(footage(name)), *common, "--out", str(out))
        assert done.returncode == 0, done.stderr[-2000:]
        assert mp4_frames(out / "sample_000.mp4").shape == (4, *hw, 3)
    done = run("vidgpt.sample", str(tmp_path / "export"), "--prompt", str(footage("bikes.mp4")), *common,
               "--size", "16", "48", "--out", str(tmp_path / "sized"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert mp4_frames(tmp_path / "sized" / "sample_000.mp4").shape == (4, 16, 48, 3)
    done = run("vidgpt.sample", str(tmp_path / "export"), "--prompt", str(footage("bikes.mp4")), *common,
               "--size", "1", "48", "--out", str(tmp_path / "tiny"))
    assert done.returncode == 2 and not (tmp_path / "tiny").exists()
    assert done.stderr.strip().splitlines()[-1].endswith(
        "--size 1 48: must be multiples of 2 (the model's patch 2 x the codec's downsampling 1), at least one patch")


def test_a_bucket_list_that_does_not_parse_is_refused_before_anything_is_written(tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    for bad, why in (("32x32,24by40", "bucket '24by40' is not HxW with positive integers"),
                     ("32x32,32x32", "bucket 32x32 is listed twice")):
        with pytest.raises(SystemExit) as exit_info:
            encode([str(tmp_path), str(tmp_path / "out"), "--buckets", bad])
        assert exit_info.value.code == 2 and not (tmp_path / "out").exists()
        assert f"--buckets {bad}: {why}" in capsys.readouterr().err.strip().splitlines()[-1]
    with pytest.raises(SystemExit):
        encode([str(tmp_path), str(tmp_path / "out"), "--buckets", "32x32", "--size", "64"])
    assert capsys.readouterr().err.strip().endswith("--buckets replaces --size: give one of them")


def test_a_corrupt_sample_is_stood_in_for_by_one_of_its_own_bucket(bucketed, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    root, shape_of = bucketed
    index = json.loads(Path(root, "index.json").read_text())
    shard = next(s for s in index["shards"] if s["path"].endswith("part-003.tar"))
    data = bytearray(Path(root, shard["path"]).read_bytes())
    for offset in shard["offsets"][:-1]:  # a byte of every sample's latent values: each fails its CRC-32
        data[offset + 512 + 128 + 10] ^= 0xFF
    Path(root, shard["path"]).write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="vidgpt.data"):
        batches = epoch(LatentLoader(cfg(root, max_bad_fraction=0.9, shuffle_buffer=45)))
    assert sum("checksum mismatch" in r.getMessage() for r in caplog.records) >= 10
    assert not {k for b in batches for k in b["keys"]} & set(shard["keys"])  # every bad one stood in for ...
    assert_one_bucket_each(batches, shape_of)  # ... by a sample of its own size
