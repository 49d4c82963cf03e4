"""A built-in synthetic video dataset: coloured shapes bouncing on a dark background, with captions.

    vidgpt-make-synthetic data/synth --num 100 --size 64 --frames 48 --fps 8

Video i of a seed is `synthetic_scene(i, size=..., seed=..., speed=...)` rendered and written to
`synth_{i:05d}.mp4`, its caption to `synth_{i:05d}.txt`, and one line {"path", "caption"} per video
to `manifest.jsonl`; `synthetic.json` records the task (seed, size, frames, fps, speed, supersample), so
the true continuation of any video can be rendered again. Scenes depend only on (seed, i), so video i is
the same whatever `num` is. Drawing is numpy only: one boolean mask per shape over all frames at once,
on a grid of `supersample` x `supersample` points per pixel when edges are anti-aliased.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.cli_types import finite_float
from data_pipeline.video import write_video

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "white": (240, 240, 240),
    "magenta": (220, 50, 220),
}
KINDS: tuple[str, ...] = ("circle", "square", "triangle")
SYNTHETIC_JSON = "synthetic.json"
"""What vidgpt-make-synthetic writes beside the videos: seed, size, frames, fps and the task's fields;
vidgpt-encode copies it into index.json as "synthetic"."""


@dataclass(frozen=True)
class MovingShape:
    kind: str
    """One of KINDS."""
    colour: str
    """A key of PALETTE."""
    radius: float
    """Half the shape's extent in pixels (circle radius, half the square's side)."""
    x: float
    """Centre at frame 0, pixels from the left."""
    y: float
    """Centre at frame 0, pixels from the top."""
    vx: float
    """Pixels per frame (the sign flips at each bounce)."""
    vy: float
    """Pixels per frame (the sign flips at each bounce)."""

    def centres(self, frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Centre (x, y) at each frame, each (T,), bouncing off the frame edges."""
        t = np.arange(frames, dtype=np.float64)
        return (
            bounce(self.x + self.vx * t, self.radius, size - self.radius),
            bounce(self.y + self.vy * t, self.radius, size - self.radius),
        )

    def mask(self, frames: int, size: int, supersample: int = 1) -> np.ndarray:
        """Points covered at each frame: bool (T, size * s, size * s) on a grid of s x s points per pixel
        (s = supersample; 1: the pixel centres)."""
        cx, cy = self.centres(frames, size)
        cx, cy = cx[:, None, None], cy[:, None, None]  # (T, 1, 1)
        grid = (np.arange(size * supersample, dtype=np.float64) + 0.5) / supersample  # sample points, in pixels
        xx, yy = grid[None, None, :], grid[None, :, None]  # (1, 1, W), (1, H, 1)
        r = self.radius
        if self.kind == "circle":
            return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        if self.kind == "square":
            return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
        if self.kind == "triangle":  # apex up at (cx, cy - r), base from cx - r to cx + r at cy + r
            below_apex = yy - (cy - r)  # 0 at the apex, 2r at the base
            return (below_apex >= 0) & (yy <= cy + r) & (np.abs(xx - cx) <= below_apex / 2)
        raise ValueError(f"unknown shape kind {self.kind!r}; expected one of {KINDS}")


def bounce(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold free positions p into [lo, hi] as a ball reflecting off both walls (a triangle wave)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(p, (lo + hi) / 2)
    q = np.mod(p - lo, 2 * span)
    return lo + span - np.abs(span - q)


@dataclass(frozen=True)
class Scene:
    size: int
    """Frame height and width in pixels."""
    background: tuple[int, int, int]
    """Dark RGB background."""
    shapes: tuple[MovingShape, ...]
    """Back to front: later shapes occlude earlier ones."""

    def caption(self) -> str:
        """E.g. 'a red circle, a blue square and a green triangle bouncing'."""
        names = [f"a {s.colour} {s.kind}" for s in self.shapes]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"{listed} bouncing"

    def render(self, frames: int, supersample: int = 1) -> np.ndarray:
        """uint8 (T, size, size, 3) RGB. supersample s > 1: each pixel is the mean colour of s x s points
        (area coverage), so edges blend with what lies behind them and sub-pixel motion shows."""
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        side = self.size * supersample
        video = np.empty((frames, side, side, 3), dtype=np.uint8)
        video[:] = self.background
        for shape in self.shapes:  # back to front
            video[shape.mask(frames, self.size, supersample)] = PALETTE[shape.colour]
        if supersample == 1:
            return video
        blocks = video.reshape(frames, self.size, supersample, self.size, supersample, 3)  # (T, H, s, W, s, 3)
        return np.rint(blocks.mean(axis=(2, 4), dtype=np.float64)).astype(np.uint8)


@dataclass(frozen=True)
class SyntheticTask:
    """How the built-in scenes move and are drawn; training videos and their ground truth share it."""

    speed: float = 1.0
    """Multiplier of every shape's speed (1: 1-4% of the frame per frame). The draws are the same at every
    speed: only the velocities scale."""
    supersample: int = 1
    """Points per pixel side: 1 draws hard edges at the pixel centres; s > 1 gives each pixel the mean colour
    of s x s points (anti-aliased edges, sub-pixel positions visible in every frame)."""

    @classmethod
    def of_index(cls, index: dict[str, Any]) -> SyntheticTask | None:
        """The task a dataset's index.json records (vidgpt-encode copies the videos' synthetic.json into
        its "synthetic" key); None when it records none (not synthetic, or encoded before the key)."""
        record = index.get("synthetic")
        if not isinstance(record, dict):
            return None
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record})

    def __post_init__(self) -> None:
        if not (np.isfinite(self.speed) and self.speed > 0):
            raise ValueError(f"speed must be a number > 0, got {self.speed}")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")


def synthetic_scene(index: int, *, size: int = 64, seed: int = 0, speed: float = 1.0) -> Scene:
    """Scene `index` of dataset `seed`: 1-3 shapes of distinct colours, random positions and
    constant speeds (about 1-4% of the frame per frame, times `speed`)."""
    rng = np.random.default_rng([seed, index])
    count = int(rng.integers(1, 4))
    colours = rng.choice(list(PALETTE), size=count, replace=False)
    shapes: list[MovingShape] = []
    for colour in colours:
        radius = float(rng.uniform(0.08, 0.18) * size)
        pace = float(rng.uniform(0.01, 0.04) * size) * speed
        angle = float(rng.uniform(0, 2 * np.pi))
        shapes.append(
            MovingShape(
                kind=str(rng.choice(KINDS)),
                colour=str(colour),
                radius=radius,
                x=float(rng.uniform(radius, size - radius)),
                y=float(rng.uniform(radius, size - radius)),
                vx=pace * np.cos(angle),
                vy=pace * np.sin(angle),
            )
        )
    r, g, b = (int(v) for v in rng.integers(0, 40, size=3))
    return Scene(size=size, background=(r, g, b), shapes=tuple(shapes))


def _write_one(out_dir: Path, i: int, size: int, frames: int, fps: float, seed: int, task: SyntheticTask) -> str:
    """Write synth_NNNNN.mp4 and .txt of scene i; return its manifest line."""
    scene = synthetic_scene(i, size=size, seed=seed, speed=task.speed)
    path = out_dir / f"synth_{i:05d}.mp4"
    write_video(path, scene.render(frames, task.supersample), fps)
    caption = scene.caption()
    path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return json.dumps({"path": path.name, "caption": caption})


def make_synthetic_videos(
    out_dir: Path, num: int, *, size: int = 64, frames: int = 48, fps: float = 8.0, seed: int = 0,
    task: SyntheticTask = SyntheticTask(), workers: int = 1,
) -> list[Path]:
    """Write `num` videos synth_NNNNN.mp4 with captions synth_NNNNN.txt, manifest.jsonl and synthetic.json
    (the task) into out_dir, in `workers` processes (the same files whatever their number); return the mp4
    paths."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if size < 8 or size % 2:
        raise ValueError(f"size must be an even number >= 8 (yuv420p), got {size}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write = functools.partial(_write_one, out_dir, size=size, frames=frames, fps=fps, seed=seed, task=task)
    if workers == 1 or num < 2 * workers:
        lines = [write(i) for i in range(num)]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            lines = pool.map(write, range(num), chunksize=max(1, num // (8 * workers)))
    paths = [out_dir / f"synth_{i:05d}.mp4" for i in range(num)]
    (out_dir / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    record = {"seed": seed, "size": size, "frames": frames, "fps": fps, **dataclasses.asdict(task)}
    (out_dir / SYNTHETIC_JSON).write_text(json.dumps(record) + "\n", encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vidgpt-make-synthetic",
        description="Write a synthetic dataset of bouncing coloured shapes: synth_NNNNN.mp4, a caption "
        "synth_NNNNN.txt per video, and manifest.jsonl ({'path', 'caption'} per line).",
    )
    parser.add_argument("out", metavar="OUT", type=Path, help="output directory (created if missing)")
    parser.add_argument("--num", type=int, default=32, help="number of videos (default: %(default)s)")
    parser.add_argument(
        "--size", type=int, default=64, help="frame height and width in pixels, even (default: %(default)s)"
    )
    parser.add_argument("--frames", type=int, default=48, help="frames per video (default: %(default)s)")
    parser.add_argument(
        "--fps", type=finite_float, default=8.0, help="frame rate of the mp4 files (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="dataset seed: same seed, same videos (default: %(default)s)"
    )
    parser.add_argument("--speed", type=finite_float, default=1.0,
                        help="multiplier of the shapes' speeds, 1-4%% of the frame per frame at 1 (default: %(default)s)")
    parser.add_argument("--supersample", type=int, default=1,
                        help="points per pixel side: 1 draws hard edges, 4 anti-aliases them by area coverage "
                        "(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes writing videos; the files do not depend on it (default: the CPU count, "
                        "at most 8: %(default)s)")
    args = parser.parse_args(argv)
    try:
        task = SyntheticTask(speed=args.speed, supersample=args.supersample)
        paths = make_synthetic_videos(
            args.out, args.num, size=args.size, frames=args.frames, fps=args.fps, seed=args.seed, task=task,
            workers=args.workers,
        )
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote {len(paths)} videos with captions and manifest.jsonl to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
