"""Video decoding (data_pipeline.video) and the synthetic dataset, on real mp4 files written by PyAV."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av  # noqa: TID253 - these tests write and read video with PyAV itself
import numpy as np
import pytest

from data_pipeline.synthetic import KINDS, PALETTE, make_synthetic_videos, synthetic_scene
from data_pipeline.video import (
    Clip,
    DecodeOptions,
    VideoError,
    decode_clips,
    resize_plan,
    write_video,
)


def _counter_frames(n: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8 frames showing their own index in binary: 8 vertical stripes of 4
    pixels, white for 1 (readable back through lossy compression)."""
    bits = (np.arange(n)[:, None] >> np.arange(8)[None, :]) & 1  # (T, 8)
    columns = np.repeat(bits * 255, 4, axis=1).astype(np.uint8)  # (T, 32)
    return np.broadcast_to(columns[:, None, :, None], (n, 32, 32, 3)).copy()  # (T, H, W, 3)


def _counter_video(path: Path, n: int, fps: float = 24.0) -> None:
    write_video(path, _counter_frames(n), fps)


def _shown_indices(clip: Clip) -> list[int]:
    """The index each decoded counter frame shows (clip decoded at 32x32)."""
    stripes = clip.frames[:, :, 1::4][:, :, :8].astype(np.float64).mean(axis=(1, 3))  # (T, 8)
    bits = stripes > 128
    return [int(sum(1 << k for k in range(8) if b[k])) for b in bits]


def _pyav_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # (T, H, W, 3)


def _one_line_error(source: object, opts: DecodeOptions) -> str:
    with pytest.raises(VideoError) as info:
        decode_clips(source, opts)  # type: ignore[arg-type]
    reason = str(info.value)
    assert reason and "\n" not in reason
    return reason


# ---------------------------------------------------------------------------------------- synthetic


def test_synthetic_videos_decode_to_requested_size(tmp_path: Path) -> None:
    paths = make_synthetic_videos(tmp_path, 3, size=32, frames=12, fps=8.0, seed=0)
    assert [p.name for p in paths] == ["synth_00000.mp4", "synth_00001.mp4", "synth_00002.mp4"]
    manifest = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [m["path"] for m in manifest] == [p.name for p in paths]
    for path, entry in zip(paths, manifest):
        assert path.with_suffix(".txt").read_text() == entry["caption"]
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            assert float(stream.average_rate) == 8.0
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        assert len(frames) == 12
        assert frames[0].shape == (32, 32, 3)
        clips = decode_clips(path, DecodeOptions(height=32, width=32))
        assert [c.frames.shape for c in clips] == [(12, 32, 32, 3)]
        assert clips[0].fps == 8.0


def test_synthetic_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = make_synthetic_videos(tmp_path / "a", 2, size=32, frames=8, seed=3)
    b = make_synthetic_videos(tmp_path / "b", 2, size=32, frames=8, seed=3)
    c = make_synthetic_videos(tmp_path / "c", 2, size=32, frames=8, seed=4)
    for pa, pb, pc in zip(a, b, c):
        fa, fb, fc = _pyav_frames(pa), _pyav_frames(pb), _pyav_frames(pc)
        assert fa.tobytes() == fb.tobytes()
        assert fa.shape == fc.shape and fa.tobytes() != fc.tobytes()
    # video i does not depend on how many were made
    (d,) = make_synthetic_videos(tmp_path / "d", 1, size=32, frames=8, seed=3)
    assert _pyav_frames(d).tobytes() == _pyav_frames(a[0]).tobytes()
    assert synthetic_scene(0, size=32, seed=3) == synthetic_scene(0, size=32, seed=3)
    assert synthetic_scene(0, size=32, seed=3) != synthetic_scene(0, size=32, seed=4)


def test_captions_name_the_shapes_drawn(tmp_path: Path) -> None:
    paths = make_synthetic_videos(tmp_path, 12, size=64, frames=16, seed=0)
    counts: set[int] = set()
    for i, path in enumerate(paths):
        scene = synthetic_scene(i, size=64, seed=0)
        caption = path.with_suffix(".txt").read_text()
        assert caption == scene.caption()
        counts.add(len(scene.shapes))
        video = _pyav_frames(path).astype(np.int32)  # (T, H, W, 3)
        drawn = {s.colour for s in scene.shapes}
        assert len(drawn) == len(scene.shapes)  # distinct colours: the caption is unambiguous
        for shape in scene.shapes:
            assert f"a {shape.colour} {shape.kind}" in caption
            # the colour is really in the decoded video ...
            near = np.abs(video - np.array(PALETTE[shape.colour])).max(axis=-1) < 40
            assert near.sum() > 50, (caption, shape.colour)
            # ... and the kind is the drawn geometry: the area of the shape's bounding box it fills
            mask = shape.mask(1, 64)[0]  # (H, W)
            fill = mask.sum() / (2 * shape.radius) ** 2
            expected = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[shape.kind]
            assert abs(fill - expected) < 0.12, (shape.kind, fill)
        for colour in set(PALETTE) - drawn:
            near = np.abs(video - np.array(PALETTE[colour])).max(axis=-1) < 40
            assert near.sum() < 20, (caption, colour)
    assert counts == {1, 2, 3}


def test_shapes_bounce_inside_the_frame() -> None:
    scene = synthetic_scene(5, size=64, seed=1)
    for shape in scene.shapes:
        assert shape.kind in KINDS
        cx, cy = shape.centres(200, 64)  # long enough to bounce
        assert cx.min() >= shape.radius - 1e-9 and cx.max() <= 64 - shape.radius + 1e-9
        assert cy.min() >= shape.radius - 1e-9 and cy.max() <= 64 - shape.radius + 1e-9
        steps = np.abs(np.diff(cx))  # constant speed along x, reversing at the walls
        assert np.allclose(steps[steps > 1e-6].max(), abs(shape.vx), atol=1e-9)
        assert shape.mask(200, 64).reshape(200, -1).any(axis=1).all()


# ----------------------------------------------------------------------------------- resize / crop


def test_resize_plan_covers_then_centre_crops() -> None:
    assert resize_plan(64, 96, 32, 32) == (32, 48, 0, 8)
    assert resize_plan(96, 64, 32, 32) == (48, 32, 8, 0)
    assert resize_plan(64, 64, 32, 48) == (48, 48, 8, 0)
    assert resize_plan(10, 10, 40, 40) == (40, 40, 0, 0)


def test_non_square_source_is_resized_and_centre_cropped(tmp_path: Path) -> None:
    third = 32
    frame = np.zeros((64, 3 * third, 3), np.uint8)  # (H=64, W=96): red | green | blue thirds
    frame[:, :third] = (220, 30, 30)
    frame[:, third : 2 * third] = (30, 220, 30)
    frame[:, 2 * third :] = (30, 30, 220)
    path = tmp_path / "thirds.mp4"
    write_video(path, np.stack([frame] * 4), 8.0)

    (clip,) = decode_clips(path, DecodeOptions(height=32, width=32))
    assert clip.frames.shape == (4, 32, 32, 3) and clip.frames.dtype == np.uint8
    f = clip.frames[0].astype(int)
    # resized to 32x48, crop columns 8..40: red 8..16 | green 16..32 | blue 32..40 of the resized frame
    assert np.abs(f[:, 12:20].mean(axis=(0, 1)) - (30, 220, 30)).max() < 25  # centre is green
    assert np.abs(f[:, :4].mean(axis=(0, 1)) - (220, 30, 30)).max() < 25  # left edge red
    assert np.abs(f[:, -4:].mean(axis=(0, 1)) - (30, 30, 220)).max() < 25  # right edge blue

    (wide,) = decode_clips(path, DecodeOptions(height=16, width=40))
    assert wide.frames.shape == (4, 16, 40, 3)


# ---------------------------------------------------------------------------------- fps and window


def test_fps_resampling_stride_and_window(tmp_path: Path) -> None:
    path = tmp_path / "counter.mp4"
    _counter_video(path, 48, fps=24.0)

    def one(**kw: object) -> Clip:
        (clip,) = decode_clips(path, DecodeOptions(height=32, width=32, **kw))  # type: ignore[arg-type]
        assert _shown_indices(clip) == clip.frame_indices  # the indices name the frames really kept
        return clip

    every = one()
    assert every.frame_indices == list(range(48)) and every.fps == 24.0
    down = one(fps=8)
    assert down.frame_indices == list(range(0, 48, 3)) and down.fps == 8.0
    up = one(fps=60)  # no frames invented
    assert up.frame_indices == list(range(48)) and up.fps == 24.0
    strided = one(frame_stride=2)
    assert strided.frame_indices == list(range(0, 48, 2)) and strided.fps == 12.0
    both = one(fps=8, frame_stride=2)
    assert both.frame_indices == list(range(0, 48, 6)) and both.fps == 4.0
    window = one(start=0.5, end=1.0)
    assert window.frame_indices == list(range(12, 24))
    assert window.start_time == pytest.approx(0.5)
    window_down = one(fps=8, start=0.5)
    assert window_down.frame_indices == list(range(12, 48, 3))


def test_fps_resampling_non_integer_ratio(tmp_path: Path) -> None:
    path = tmp_path / "counter30.mp4"
    _counter_video(path, 30, fps=30.0)
    (clip,) = decode_clips(path, DecodeOptions(height=16, width=16, fps=12))
    # grid points every 2.5 source frames: keep the first frame at or after each
    assert clip.frame_indices == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]
    assert clip.fps == 12.0


def test_fps_resampling_follows_presentation_times(tmp_path: Path) -> None:
    """Variable frame rate: 24 frames at 24 fps, a one-second gap, 24 more. The 1/8 s grid keeps
    its phase across the gap instead of keeping every frame until it catches up."""
    path = tmp_path / "gap.mp4"
    with av.open(str(path), mode="w") as c:
        stream = c.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.bit_rate = 2_000_000
        for i, rgb in enumerate(_counter_frames(48)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = (i if i < 24 else i + 24), Fraction(1, 24)
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    (clip,) = decode_clips(path, DecodeOptions(height=32, width=32, fps=8))
    assert clip.frame_indices == list(range(0, 24, 3)) + list(range(24, 48, 3))
    assert _shown_indices(clip) == clip.frame_indices
    (late,) = decode_clips(path, DecodeOptions(height=32, width=32, start=1.5))
    assert late.frame_indices == list(range(24, 48)) and late.start_time == pytest.approx(2.0)


# -------------------------------------------------------------------------------------- clip split


def test_clip_splitting(tmp_path: Path) -> None:
    path = tmp_path / "fifty.mp4"
    _counter_video(path, 50, fps=25.0)
    clips = decode_clips(path, DecodeOptions(height=32, width=32, max_frames=20, min_frames=8))
    assert [len(c.frames) for c in clips] == [20, 20, 10]
    assert [c.frame_indices for c in clips] == [list(range(0, 20)), list(range(20, 40)), list(range(40, 50))]
    assert [c.start_time for c in clips] == pytest.approx([0.0, 0.8, 1.6])
    assert all(_shown_indices(c) == c.frame_indices for c in clips)

    clips = decode_clips(path, DecodeOptions(height=16, width=16, max_frames=20, min_frames=12))
    assert [len(c.frames) for c in clips] == [20, 20]

    short = tmp_path / "five.mp4"
    _counter_video(short, 5)
    reason = _one_line_error(short, DecodeOptions(height=16, width=16, min_frames=8))
    assert reason.startswith("too short") and "5" in reason and "8" in reason


# -------------------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def good_mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("good") / "good.mp4"
    rng = np.random.default_rng(0)  # noise: many bytes per frame, so a cut lands mid-stream
    write_video(path, rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), 24.0)
    return path.read_bytes()


def test_bad_files_raise_one_line_video_error(tmp_path: Path, good_mp4: bytes) -> None:
    opts = DecodeOptions(height=16, width=16)
    files = {
        "zero.mp4": b"",
        "text.mp4": b"this is not a video\n" * 50,
        "random.mp4": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "half.mp4": good_mp4[: len(good_mp4) // 2],
    }
    reasons = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        reasons[name] = _one_line_error(tmp_path / name, opts)
    assert reasons["zero.mp4"].startswith("not a video")
    assert reasons["text.mp4"].startswith("not a video")
    # a cut-short file decodes its first frames, then stops (silently or with an error): a failure
    assert reasons["half.mp4"].startswith(("truncated", "decode error after"))
    _one_line_error(tmp_path / "missing.mp4", opts)
    # the same in memory
    for data in files.values():
        _one_line_error(io.BytesIO(data), opts)


def test_audio_only_file_has_no_video_stream() -> None:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        stream = c.add_stream("aac", rate=8000)
        stream.layout = "mono"
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    buf.seek(0)
    assert _one_line_error(buf, DecodeOptions(height=16, width=16)) == "no video stream"


def test_bytesio_decodes_like_a_path(tmp_path: Path, good_mp4: bytes) -> None:
    path = tmp_path / "good.mp4"
    path.write_bytes(good_mp4)
    opts = DecodeOptions(height=16, width=24, fps=12, max_frames=8, min_frames=4)
    from_path = decode_clips(path, opts)
    from_str = decode_clips(str(path), opts)
    from_memory = decode_clips(io.BytesIO(good_mp4), opts)
    assert len(from_path) == len(from_memory) == len(from_str) == 3  # 20 frames at 12 fps: 8, 8, 4
    for a, b, c in zip(from_path, from_memory, from_str):
        assert a.frame_indices == b.frame_indices == c.frame_indices
        assert a.frames.tobytes() == b.frames.tobytes() == c.frames.tobytes()
        assert a.fps == b.fps == 12.0 and a.start_time == b.start_time


@pytest.mark.parametrize("codec", [None, "mpeg4"])
def test_write_video_to_memory_round_trips(codec: str | None) -> None:
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    frames[1] = 128
    buf = io.BytesIO()
    write_video(buf, frames, 10.0, codec=codec)
    (clip,) = decode_clips(io.BytesIO(buf.getvalue()), DecodeOptions(height=16, width=16))
    assert np.abs(clip.frames.astype(int) - frames).max() < 8
    assert clip.fps == 10.0


def test_write_video_is_deterministic(tmp_path: Path) -> None:
    frames = synthetic_scene(2, size=64, seed=5).render(24)
    write_video(tmp_path / "a.mp4", frames, 8.0)
    write_video(tmp_path / "b.mp4", frames, 8.0)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


# -------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"height": 0}, "height"),
        ({"width": -2}, "width"),
        ({"fps": 0.0}, "fps"),
        ({"frame_stride": 0}, "frame_stride"),
        ({"min_frames": 0}, "min_frames"),
        ({"min_frames": 9, "max_frames": 8}, "min_frames"),
        ({"start": -1.0}, "start"),
        ({"start": 2.0, "end": 1.0}, "end"),
    ],
)
def test_decode_options_validation_names_the_field(kw: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"height": 8, "width": 8, **kw}
    with pytest.raises(ValueError, match=field):
        DecodeOptions(**args)  # type: ignore[arg-type]


def test_write_video_rejects_odd_sizes_and_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8), 8.0)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.float32), 8.0)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.uint8), 0.0)


# ---------------------------------------------------------------------------------------------- CLI


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    """vidgpt-make-synthetic ARGS."""
    return subprocess.run(
        [sys.executable, "-m", "data_pipeline.synthetic", *args], capture_output=True, text=True, timeout=60
    )


def test_make_synthetic_videos_tool(tmp_path: Path) -> None:
    helped = _tool("--help")
    assert helped.returncode == 0, helped.stderr
    for flag in ("OUT", "--num", "--size", "--frames", "--fps", "--seed", "--speed", "--supersample"):
        assert flag in helped.stdout

    out = tmp_path / "synth"
    ran = _tool(str(out), "--num", "2", "--size", "32", "--frames", "8", "--seed", "7")
    assert ran.returncode == 0, ran.stderr
    assert str(out) in ran.stdout and len(ran.stdout.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.jsonl",
        "synth_00000.mp4",
        "synth_00000.txt",
        "synth_00001.mp4",
        "synth_00001.txt",
        "synthetic.json",
    ]
    assert _pyav_frames(out / "synth_00001.mp4").shape == (8, 32, 32, 3)

    bad = _tool(str(out), "--size", "33")
    assert bad.returncode == 2 and "size" in bad.stderr
