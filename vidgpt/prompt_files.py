"""The user's own prompt files for `vidgpt-sample`: a video file to continue or an image file to animate,
with an optional caption.

    frames = load_prompt_frames("clip.mp4", size=(256, 256), fps=8, last=9)   # uint8 (<=9, 256, 256, 3)
    items = read_prompt_list("prompts.jsonl")                                  # [PromptItem(path, caption)]

Frames are resized and cropped as the training data was (`data_pipeline.video.resize_plan`: the short
side scaled to cover the frame, then a centred crop), at the training frame rate for videos.
Problems are one-line `PromptError`s naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_pipeline.video import DecodeOptions, VideoError, decode_clips, resize_plan

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


class PromptError(ValueError):
    """A prompt file or prompt list that cannot be used (the message names it and says why)."""


@dataclass(frozen=True)
class PromptItem:
    path: str | None
    """A video or image file; None: text only."""
    caption: str | None
    """The caption, or None."""


def prompt_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a prompt image or video as stored (before any resizing)."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"{path}: no such file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        rgb = _open_image(path)
        return rgb.height, rgb.width
    try:
        import av  # noqa: PLC0415 - PyAV, the data extra

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return stream.codec_context.height, stream.codec_context.width
    except Exception as exc:  # noqa: BLE001 - any reason it cannot be read is one line
        raise PromptError(f"{path}: not a readable video or image ({type(exc).__name__})") from exc


def _open_image(path: Path) -> Image.Image:
    """The image as RGB, or a one-line PromptError naming the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise PromptError(f"{path}: not a readable image ({type(exc).__name__})") from exc


def _load_image(path: Path, height: int, width: int) -> np.ndarray:
    rgb = _open_image(path)
    new_h, new_w, top, left = resize_plan(rgb.height, rgb.width, height, width)
    resized = np.asarray(rgb.resize((new_w, new_h), Image.Resampling.BICUBIC))  # (new_h, new_w, 3)
    return resized[None, top : top + height, left : left + width].copy()  # (1, H, W, 3)


def load_prompt_frames(path: str | Path, *, size: tuple[int, int], fps: float | None, last: int) -> np.ndarray:
    """uint8 (T, H, W, 3) with T = 1 for an image, else the last min(last, frames) frames of the video."""
    path = Path(path)
    if last < 1:
        raise PromptError(f"need at least one prompt frame, got {last}")
    if not path.is_file():
        raise PromptError(f"{path}: no such file")
    height, width = size
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _load_image(path, height, width)
    try:
        clips = decode_clips(str(path), DecodeOptions(height=height, width=width, fps=fps, max_frames=1 << 20))
    except VideoError as exc:
        raise PromptError(f"{path}: not a readable video or image ({exc})") from exc
    frames = np.concatenate([c.frames for c in clips])  # (T, H, W, 3)
    return frames[-last:]


def read_prompt_list(path: str | Path) -> list[PromptItem]:
    """A JSON-lines file of {"path": ..., "caption": ...} (either may be missing, not both)."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"{path}: no such file")
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not (row.get("path") or row.get("caption")):
            raise PromptError(f'{path}:{number}: expected {{"path": ..., "caption": ...}} with at least one of them')
        source = row.get("path")
        if source is not None and not Path(source).is_absolute():
            source = str(path.parent / source)  # relative to the list
        items.append(PromptItem(source, row.get("caption")))
    if not items:
        raise PromptError(f"{path}: no prompts in it")
    return items
