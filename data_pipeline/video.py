"""Decode videos into fixed-size RGB clips, and write mp4 files, with PyAV.

    clips = decode_clips("in.mp4", DecodeOptions(height=256, width=256, fps=8, max_frames=64))
    write_video("out.mp4", clips[0].frames, clips[0].fps)

Decoding streams: every decoded frame is resized (short side to the target, aspect kept) by
libswscale and centre-cropped at once, so only uint8 frames of the target size are held. Frame
times are measured from the first decoded frame, so `start`/`end` and `Clip.start_time` mean
seconds into the video whatever the container's start offset. A file that cannot be opened, holds
no video stream, or fails to decode to its end (truncated, corrupt) raises `VideoError` with a
one-line reason; the caller records it as a failure and moves on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import BinaryIO

import av  # noqa: TID253 - this module is the PyAV wrapper: decoding and writing video
import numpy as np

Source = str | os.PathLike[str] | BinaryIO

# Errors a broken or non-video input can raise inside PyAV (FFmpegError also subclasses
# ValueError/OSError per errno; EOFError and UnicodeDecodeError come from odd containers/metadata).
_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    av.error.FFmpegError,
    OSError,
    EOFError,
    UnicodeDecodeError,
)

# A stream whose container announces N frames may decode to a few less without being damaged
# (edit lists, a dropped leading B-frame); more missing than this means it was cut short.
_MISSING_FRAMES_TOLERANCE = 2


# libswscale threads for resizing/colour conversion. PyAV's default (0: automatic slices, also
# used inside stream.encode) splits frames by machine; one thread gives the same pixels everywhere
# and was no slower in measurement (decoding is already threaded; scaling is a small share).
_SWS_THREADS = 1

# x264's macroblock-tree rate control made run-to-run different bitstreams from identical input
# (observed on 48x48 and 64x64 frames); without it, encoding is deterministic at a small size cost.
_X264_OPTIONS = {"crf": "18", "x264-params": "mbtree=0"}


class VideoError(Exception):
    """A video that cannot be used; `str(e)` is a one-line human reason."""


@dataclass(frozen=True)
class DecodeOptions:
    height: int
    """Output frame height in pixels."""
    width: int
    """Output frame width in pixels."""
    fps: float | None = None
    """Target frame rate; None keeps the source rate. Never above it: no frames are invented."""
    frame_stride: int = 1
    """Keep every k-th frame, applied after the fps resampling."""
    min_frames: int = 1
    """Clips shorter than this are dropped."""
    max_frames: int = 1024
    """Kept frames are split into consecutive clips of at most this many frames."""
    start: float | None = None
    """Seconds into the source where the window starts (inclusive); None is the beginning."""
    end: float | None = None
    """Seconds into the source where the window ends (exclusive); None is the end."""
    buckets: tuple[tuple[int, int], ...] = ()
    """(H, W) frame sizes to choose from by the source's aspect ratio (`nearest_bucket`), replacing
    height x width; () keeps height x width."""

    def __post_init__(self) -> None:
        for name in ("height", "width", "frame_stride", "min_frames", "max_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DecodeOptions.{name} must be a positive int, got {value!r}")
        if self.min_frames > self.max_frames:
            raise ValueError(
                f"DecodeOptions.min_frames ({self.min_frames}) must be <= max_frames ({self.max_frames})"
            )
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"DecodeOptions.fps must be a positive number or None, got {self.fps!r}")
        if self.start is not None and not (math.isfinite(self.start) and self.start >= 0):
            raise ValueError(f"DecodeOptions.start must be >= 0 seconds or None, got {self.start!r}")
        if self.end is not None and not (math.isfinite(self.end) and self.end > (self.start or 0.0)):
            raise ValueError(
                f"DecodeOptions.end must be > start ({self.start or 0.0}) seconds or None, got {self.end!r}"
            )


@dataclass
class Clip:
    frames: np.ndarray
    """uint8 (T, H, W, 3) RGB."""
    frame_indices: list[int]
    """Index of each kept frame in the source's decoded frame sequence (0-based)."""
    fps: float
    """Effective frame rate of the clip after fps resampling and stride."""
    start_time: float
    """Seconds (from the first decoded frame) of the clip's first frame."""


def _one_line(e: BaseException) -> str:
    """A short reason from a PyAV/OS error: its strerror without the errno and file name."""
    reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(reason).split())


def resize_plan(src_h: int, src_w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(resized h, resized w, crop top, crop left): scale so (height, width) is covered, short side
    first, aspect kept; then a centred crop of exactly height x width."""
    scale = max(height / src_h, width / src_w)
    new_h = max(height, round(src_h * scale))
    new_w = max(width, round(src_w * scale))
    return new_h, new_w, (new_h - height) // 2, (new_w - width) // 2


@dataclass
class _Decoded:
    """What `_decode_frames` learnt about the stream after the last frame it yielded."""

    source_fps: float = 0.0
    decoded: int = 0
    expected: int = 0  # frames the container announces; 0 when unknown
    stopped_early: bool = False  # the window ended before the stream did


def parse_buckets(text: str) -> tuple[tuple[int, int], ...]:
    """'256x256,192x320' -> ((256, 256), (192, 320)); ValueError of one line naming what does not parse."""
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        h, sep, w = part.strip().lower().partition("x")
        if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
            raise ValueError(f"bucket {part.strip()!r} is not HxW with positive integers (e.g. 256x256,192x320,320x192)")
        if (int(h), int(w)) in out:
            raise ValueError(f"bucket {part.strip()} is listed twice")
        out.append((int(h), int(w)))
    return tuple(out)


def nearest_bucket(height: int, width: int, buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest to height x width's (on a log scale, so 2:1 and 1:2 are as
    far from 1:1); the first of equals."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda hw: abs(math.log(hw[1] / hw[0]) - aspect))


def _decode_frames(
    source: Source, opts: DecodeOptions, info: _Decoded
) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield (source frame index, time in seconds, (H, W, 3) uint8) of each kept frame."""
    try:
        container = av.open(source, mode="r")
    except av.error.InvalidDataError as e:
        raise VideoError(f"not a video: {_one_line(e)}") from e
    except _INPUT_ERRORS as e:
        raise VideoError(f"cannot open: {_one_line(e)}") from e
    with container:
        if not container.streams.video:
            raise VideoError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        info.source_fps = float(rate) if rate else 0.0
        info.expected = int(stream.frames or 0)

        t0: float | None = None  # time of the first decoded frame
        next_slot = 0  # index of the next 1/fps grid point (relative to the first kept frame)
        grid_t0: float | None = None  # time of the first kept frame (origin of the grid)
        passed = 0  # frames that passed the fps resampling (for the stride)
        plan: tuple[int, int, int, int] | None = None
        out_h, out_w = opts.height, opts.width  # the bucket's, once the first frame shows the source's size
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                info.decoded = index + 1
                if frame.time is not None:
                    t_abs = float(frame.time)
                elif info.source_fps > 0:
                    t_abs = index / info.source_fps
                else:
                    t_abs = float(index)
                if t0 is None:
                    t0 = t_abs
                t = t_abs - t0
                if opts.start is not None and t < opts.start - 1e-6:
                    continue
                if opts.end is not None and t >= opts.end - 1e-6:
                    info.stopped_early = True
                    break
                if opts.fps is not None:
                    if grid_t0 is None:
                        grid_t0 = t
                    slot = (t - grid_t0) * opts.fps  # position on the 1/fps grid
                    if slot < next_slot - 1e-6:
                        continue
                    next_slot = math.floor(slot + 1e-6) + 1
                passed += 1
                if (passed - 1) % opts.frame_stride:
                    continue
                if plan is None:
                    out_h, out_w = (nearest_bucket(frame.height, frame.width, opts.buckets) if opts.buckets
                                    else (opts.height, opts.width))
                    plan = resize_plan(frame.height, frame.width, out_h, out_w)
                new_h, new_w, top, left = plan
                rgb = frame.reformat(
                    width=new_w, height=new_h, format="rgb24", threads=_SWS_THREADS
                ).to_ndarray()
                # (new_h, new_w, 3) -> (H, W, 3); copy so the full-size buffer is freed
                yield index, t, rgb[top : top + out_h, left : left + out_w].copy()
        except _INPUT_ERRORS as e:
            raise VideoError(f"decode error after {info.decoded} frames: {_one_line(e)}") from e


def decode_clips(source: Source, opts: DecodeOptions) -> list[Clip]:
    """Decode the first video stream of `source` (a path or a binary file-like object) into clips of
    opts.height x opts.width RGB frames; raises VideoError when the video cannot be used."""
    info = _Decoded()
    clips: list[Clip] = []
    frames: list[np.ndarray] = []  # of the clip being filled, each (H, W, 3)
    indices: list[int] = []
    times: list[float] = []

    def close_clip() -> None:
        fps = _effective_fps(info.source_fps, opts)
        clips.append(Clip(np.stack(frames), list(indices), fps, times[0]))  # (T, H, W, 3)
        frames.clear()
        indices.clear()
        times.clear()

    for index, t, rgb in _decode_frames(source, opts, info):
        frames.append(rgb)
        indices.append(index)
        times.append(t)
        if len(frames) == opts.max_frames:
            close_clip()
    if info.decoded == 0:
        raise VideoError("no frames decoded")
    if (
        not info.stopped_early
        and info.expected > 0
        and info.decoded < info.expected - _MISSING_FRAMES_TOLERANCE
    ):
        raise VideoError(f"truncated: decoded {info.decoded} of {info.expected} frames")
    if len(frames) >= opts.min_frames:
        close_clip()
    if not clips:
        kept = len(frames)
        raise VideoError(f"too short: {kept} frames < min_frames {opts.min_frames}")
    return clips


def _effective_fps(source_fps: float, opts: DecodeOptions) -> float:
    """Frame rate after resampling (never above the source's) and stride."""
    fps = source_fps
    if opts.fps is not None:
        fps = min(opts.fps, source_fps) if source_fps > 0 else opts.fps
    return fps / opts.frame_stride


@lru_cache(maxsize=1)
def video_codec() -> str:
    """libx264 when this FFmpeg build has the encoder, else FFmpeg's own mpeg4."""
    try:
        av.codec.Codec("libx264", "w")
    except (av.error.FFmpegError, ValueError):
        return "mpeg4"
    return "libx264"


def write_video(
    path: str | os.PathLike[str] | BinaryIO, frames: np.ndarray, fps: float, *, codec: str | None = None
) -> None:
    """Write uint8 (T, H, W, 3) RGB frames to an mp4, yuv420p; codec None is `video_codec()`
    (libx264, deterministic output for the same frames, or mpeg4)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError("frames must hold at least one frame")
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even height and width, got {h}x{w}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001)
    codec = codec or video_codec()
    # faststart puts the index (moov) first, so a cut-short file still decodes up to the cut; it
    # re-reads the file by name, so file-like outputs keep the index at the end
    faststart = isinstance(path, (str, os.PathLike))
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(path, mode="w", format="mp4", options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = dict(_X264_OPTIONS)
        else:
            stream.bit_rate = max(1_000_000, int(h * w * float(rate) * 0.5))
        for i in range(t):
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame = rgb.reformat(format="yuv420p", threads=_SWS_THREADS)  # not in encode()
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)


__all__ = [
    "Clip",
    "DecodeOptions",
    "VideoError",
    "decode_clips",
    "resize_plan",
    "video_codec",
    "write_video",
]


def write_gif(path: str | os.PathLike[str], frames: np.ndarray, fps: float) -> None:
    """Write uint8 (T, H, W, 3) RGB frames as an animated GIF (FFmpeg's gif encoder, 8-bit palette)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T>0, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="gif") as container:
        stream = container.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb8"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="rgb8")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
