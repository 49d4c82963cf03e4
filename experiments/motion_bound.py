"""How well can any model place the shapes after P prompt frames? A bound for the demo's centroid goal.

    python -m experiments.motion_bound [--prompt-frames 2] [--clips 64] [--samples 2000]

The demo's motion goal compares a model's centroid error over the first clip length (L frames after
P prompt frames) with the copy-last-frame baseline's. Whether a ratio is reachable at all depends on
how much of each shape's motion the prompt frames reveal: the shapes move 0.3-1.3 px per frame and are
drawn with hard edges, so from 2 frames the velocity is known only roughly. This benchmark measures
that, on the held-out synthetic scenes vidgpt-eval uses, for ideal predictors:
- `extrapolate`: each colour's measured centroid (mp4 round-tripped frames, as vidgpt-eval measures
  them) in the last prompt frame plus the measured per-frame displacement over the prompt, times k;
- `bayes_mean` and `perfect_sampler`: the posterior over a shape's (x, y, vx, vy) given the exact pixel
  masks of its P prompt frames (no mp4 noise, no occlusion: more than any model sees), under the
  generator's own prior (`synthetic_scene`), drawn by rejection sampling. `bayes_mean` predicts the
  posterior mean position (the best any deterministic predictor can do in squared error);
  `perfect_sampler` is the expected error of one posterior draw: a generative model that samples
  exactly the true conditional distribution.
Each is reported as centroid error in pixels and as a ratio to copy-last's, averaged over (shape,
frame) pairs of the first L generated frames, with the true (analytic, bounce-aware) centres.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

import numpy as np

from data_pipeline.synthetic import MovingShape, SyntheticTask, bounce, synthetic_scene
from vidgpt.cli import add_dataclass_options, dataclass_from_options
from vidgpt.evaluation import EvalSpec, scene_object_stats, synthetic_truth
from vidgpt.sampling import SamplingSpec


def shape_masks(shape: MovingShape, cx: np.ndarray, cy: np.ndarray, size: int, supersample: int = 1) -> np.ndarray:
    """What the renderer draws of `shape` (its kind and radius) centred at (cx, cy) of any shape (...): bool
    (..., S, S) pixel masks, or with supersample s > 1 the coverage counts (..., S, S) of each pixel's s x s
    points (uint8, 0..s^2), which the anti-aliased colours reveal exactly (up to rounding and the mp4)."""
    if supersample > 1:
        points = _point_masks(shape, cx, cy, size, supersample)  # (..., S*s, S*s)
        blocks = points.reshape(*points.shape[:-2], size, supersample, size, supersample)
        return blocks.sum(axis=(-3, -1), dtype=np.uint8)
    return _point_masks(shape, cx, cy, size, 1)


def _point_masks(shape: MovingShape, cx: np.ndarray, cy: np.ndarray, size: int, supersample: int) -> np.ndarray:
    """Points covered on a grid of s x s points per pixel: bool (..., S*s, S*s)."""
    grid = (np.arange(size * supersample) + 0.5) / supersample
    xx, yy = grid[None, :], grid[:, None]  # (1, S), (S, 1)
    cx, cy = cx[..., None, None], cy[..., None, None]
    r = shape.radius
    if shape.kind == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape.kind == "square":
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    below_apex = yy - (cy - r)
    return (below_apex >= 0) & (yy <= cy + r) & (np.abs(xx - cx) <= below_apex / 2)


def centres(x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray, r: float, t: np.ndarray,
            size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bouncing centres of M shapes at frames t: each (M, len(t))."""
    return (bounce(x[:, None] + vx[:, None] * t, r, size - r), bounce(y[:, None] + vy[:, None] * t, r, size - r))


def _matches(shape: MovingShape, x: np.ndarray, y: np.ndarray, observed: np.ndarray, size: int,
             task: SyntheticTask, batch: int = 2000) -> np.ndarray:
    """bool (M,): whether the shape drawn at (x, y), each (M, ...), matches `observed` (..., S, S): the same
    hard-edged pixels, or with anti-aliased edges every pixel's coverage count within one point (of s^2: the
    8-bit colours' rounding; exact counts would make the posterior of a circle a sliver no proposal hits);
    in batches of `batch` rows (supersampled masks are s^2 times larger)."""
    out = np.empty(len(x), dtype=bool)
    for i in range(0, len(x), batch):
        masks = shape_masks(shape, x[i : i + batch], y[i : i + batch], size, task.supersample)
        diff = np.abs(masks.astype(np.int16) - observed[None].astype(np.int16))
        out[i : i + batch] = (diff <= (task.supersample > 1)).reshape(len(masks), -1).all(axis=1)
    return out


def position_box(supersample: int) -> float:
    """Half-width in px of the proposal box around the true position (and velocity): `posterior`."""
    return 1.5 if supersample == 1 else 2.0 / supersample


def posterior(shape: MovingShape, prompt_frames: int, size: int, rng: np.random.Generator, *,
              task: SyntheticTask = SyntheticTask(), want: int = 2000, rounds: int = 40, proposals: int = 20000,
              per_position: int = 50) -> np.ndarray:
    """(M, 4) draws of (x, y, vx, vy) whose drawings (`shape_masks` with the task's supersampling) match the
    shape's true ones in frames 0..P-1 (`_matches`), under the generator's prior (uniform position, speed uniform in
    [1%, 4%] of the frame times the task's speed, uniform angle). Two-stage rejection: positions matching
    frame 0 (a +-1.5 px box holds them all with hard edges; with s x s points per pixel the drawing changes
    whenever an edge crosses a point 1/s px away, so +-2/s px holds them), then velocities matching the later
    prompt frames: from the prior with hard edges; with anti-aliased ones from a +-2/s px-per-frame box around
    the true velocity, kept with probability proportional to the prior's density there (uniform speed and
    angle: 1/|v| on its annulus), which the likelihood never reaches beyond. Every kept pair is an exact
    posterior draw as long as those boxes hold the likelihood's support (the tests check that no draw comes
    near their edges)."""
    t_prompt = np.arange(prompt_frames, dtype=float)
    tx, ty = centres(np.array([shape.x]), np.array([shape.y]), np.array([shape.vx]), np.array([shape.vy]),
                     shape.radius, t_prompt, size)
    observed = shape_masks(shape, tx[0], ty[0], size, task.supersample)  # (P, S, S)
    kept: list[np.ndarray] = []
    s = task.supersample
    box = position_box(s)
    lo, hi = 0.01 * size * task.speed, 0.04 * size * task.speed  # the prior's speeds
    for _ in range(rounds):
        x = shape.x + rng.uniform(-box, box, proposals)
        y = shape.y + rng.uniform(-box, box, proposals)
        first = _matches(shape, x, y, observed[0], size, task)
        x, y = np.repeat(x[first], per_position), np.repeat(y[first], per_position)
        if not len(x):
            continue
        if s == 1 or prompt_frames == 1:
            speed = rng.uniform(lo, hi, len(x))
            angle = rng.uniform(0, 2 * np.pi, len(x))
            vx, vy = speed * np.cos(angle), speed * np.sin(angle)
        else:  # near the true velocity, kept in proportion to the prior's density 1/|v| on [lo, hi]
            vx = shape.vx + rng.uniform(-box, box, len(x))
            vy = shape.vy + rng.uniform(-box, box, len(x))
            speed = np.hypot(vx, vy)
            keep = (speed >= lo) & (speed <= hi) & (rng.uniform(0, 1, len(x)) < lo / np.maximum(speed, lo))
            x, y, vx, vy = x[keep], y[keep], vx[keep], vy[keep]
        if prompt_frames > 1:
            cx, cy = centres(x, y, vx, vy, shape.radius, t_prompt[1:], size)
            ok = _matches(shape, cx, cy, observed[1:], size, task)
            x, y, vx, vy = x[ok], y[ok], vx[ok], vy[ok]
        kept.append(np.stack([x, y, vx, vy], axis=1))
        if sum(len(k) for k in kept) >= want:
            break
    return np.concatenate(kept) if kept else np.zeros((0, 4))


def ideal_errors(prompt_frames: int, clip_len: int, clips: int, size: int, seed: int, samples: int,
                 rng: np.random.Generator, task: SyntheticTask = SyntheticTask()) -> dict[str, float]:
    """Mean centroid errors (px) of copy-last, the posterior mean and a posterior draw, over every shape
    of `clips` scenes and the first `clip_len` frames after the prompt."""
    t_after = np.arange(prompt_frames, prompt_frames + clip_len, dtype=float)
    errors: dict[str, list[np.ndarray]] = {"copy_last": [], "bayes_mean": [], "perfect_sampler": []}
    for i in range(clips):
        for shape in synthetic_scene(i, size=size, seed=seed, speed=task.speed).shapes:
            draws = posterior(shape, prompt_frames, size, rng, task=task, want=samples)
            if not len(draws):
                continue
            tx, ty = centres(np.array([shape.x]), np.array([shape.y]), np.array([shape.vx]), np.array([shape.vy]),
                             shape.radius, np.arange(prompt_frames + clip_len, dtype=float), size)
            truth = np.stack([tx[0, prompt_frames:], ty[0, prompt_frames:]], axis=-1)  # (L, 2)
            last = np.array([tx[0, prompt_frames - 1], ty[0, prompt_frames - 1]])
            px, py = centres(*draws.T, shape.radius, t_after, size)  # (M, L)
            drawn = np.stack([px, py], axis=-1)  # (M, L, 2)
            errors["copy_last"].append(np.linalg.norm(truth - last, axis=-1))
            errors["bayes_mean"].append(np.linalg.norm(drawn.mean(axis=0) - truth, axis=-1))
            errors["perfect_sampler"].append(np.linalg.norm(drawn - truth, axis=-1).mean(axis=0))
    return {k: float(np.mean(np.concatenate(v))) for k, v in errors.items()}


def extrapolation_errors(prompt_frames: int, clip_len: int, clips: int, size: int, seed: int,
                         task: SyntheticTask = SyntheticTask()) -> dict[str, float]:
    """Copy-last and linear extrapolation of measured centroids, on mp4 round-tripped frames classified
    as vidgpt-eval does (colours present in every prompt frame and in the target frame)."""
    spec = EvalSpec(sampling=SamplingSpec(prompt_frames=prompt_frames), clip_len=clip_len, multiples=1,
                    num_clips=clips, synthetic_seed=seed, size=size, task=task)
    truth, scenes = synthetic_truth(spec)
    copy, extrap = [], []
    for stats in scene_object_stats(truth, scenes, spec):
        c, present = stats.centroids, stats.presence  # (T, K, 2), (T, K)
        for k in range(prompt_frames, prompt_frames + clip_len):
            for colour in range(c.shape[1]):
                if not (present[:prompt_frames, colour].all() and present[k, colour]):
                    continue
                last = c[prompt_frames - 1, colour]
                velocity = (last - c[0, colour]) / max(prompt_frames - 1, 1)
                copy.append(np.linalg.norm(last - c[k, colour]))
                extrap.append(np.linalg.norm(last + (k - prompt_frames + 1) * velocity - c[k, colour]))
    return {"copy_last": float(np.mean(copy)), "extrapolate": float(np.mean(extrap))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.motion_bound", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-frames", type=int, nargs="+", default=[2], help="P values to measure (default: 2)")
    ap.add_argument("--clip-len", type=int, default=8, help="frames after the prompt measured (default: 8, the demo's)")
    ap.add_argument("--clips", type=int, default=64, help="held-out scenes (default: 64)")
    ap.add_argument("--size", type=int, default=32, help="frame size (default: 32, the demo's)")
    ap.add_argument("--seed", type=int, default=1000, help="scene seed (default: 1000, vidgpt-eval's held-out)")
    ap.add_argument("--samples", type=int, default=2000, help="posterior draws per shape (default: 2000)")
    add_dataclass_options(ap, SyntheticTask)  # the task measured (vidgpt-make-synthetic's)
    args = ap.parse_args(argv)
    try:
        task = dataclass_from_options(SyntheticTask, args)
    except ValueError as exc:
        ap.error(str(exc))
    if min(args.prompt_frames) < 1 or args.clip_len < 1 or args.clips < 1 or args.samples < 1:
        ap.error("--prompt-frames, --clip-len, --clips and --samples must be >= 1")
    start = time.monotonic()
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"clip_len": args.clip_len, "clips": args.clips, "size": args.size,
                           "task": dataclasses.asdict(task), "by_prompt_frames": {}}
    for p in args.prompt_frames:
        ideal = ideal_errors(p, args.clip_len, args.clips, args.size, args.seed, args.samples, rng, task)
        measured = extrapolation_errors(p, args.clip_len, args.clips, args.size, args.seed, task)
        out["by_prompt_frames"][str(p)] = {
            **{f"{k}_px": v for k, v in ideal.items()},
            "bayes_mean_ratio": ideal["bayes_mean"] / ideal["copy_last"],
            "perfect_sampler_ratio": ideal["perfect_sampler"] / ideal["copy_last"],
            "measured_copy_last_px": measured["copy_last"], "measured_extrapolate_px": measured["extrapolate"],
            "extrapolate_ratio": measured["extrapolate"] / measured["copy_last"],
        }
    out["seconds"] = time.monotonic() - start
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
