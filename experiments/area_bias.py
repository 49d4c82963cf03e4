"""Do shapes shrink in one sampled frame, or only over the rollout? Colour areas of sampled frames against the truth.

    python -m experiments.area_bias runs/quality_cpu/export --clips 16 --frames 16 [--context-scale S] [--eta E]

The quality run's sheets show shapes shrinking frame after frame until small ones vanish. Two ways that can
happen: each sampled frame is a little smaller than its context even when the context is true (a per-frame
sampling bias, which compounds to area ratio r^n after n frames), or frames are right from true context and
go wrong only on the model's own context (exposure bias). This measures both on held-out scenes:
- teacher-forced: frame f sampled from the true frames before it (at most `window` of them), for every f;
- rollout: the evaluation's continuation from the P prompt frames.
`--sheet PATH` also draws the first clips' truth, teacher-forced and rollout frames, one row each.
Each frame's area of a colour is its pixel count (`metrics.classify`: edge blends count for no colour, in the
truth as in the samples); the ratio is the sum over clips and colours of sampled over true area, per frame,
over all shapes and over the smaller half (`small_shapes`: the ones that vanish first). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_pipeline.codecs import Codec
from data_pipeline.synthetic import SyntheticTask
from vidgpt import metrics
from vidgpt.diffusion import Diffusion
from vidgpt.evaluation import EvalSpec, synthetic_truth
from vidgpt.export import exported_diffusion, exported_sampling, load_exported
from vidgpt.latent_space import codec_for_export
from vidgpt.sampling import SamplingSpec, generate_as


@dataclasses.dataclass
class HeldOut:
    """An export with its sampler settings and the evaluation's held-out scenes, encoded: what the experiments
    that sample single frames from chosen contexts start from."""

    model: torch.nn.Module
    diffusion: Diffusion
    sampling: SamplingSpec
    """The export's [eval.sampling], with the overrides, filled in for its clip length."""
    spec: EvalSpec
    codec: Codec
    truth: np.ndarray
    """uint8 (N, total, H, W, 3): the held-out scenes' first `total` frames."""
    latents: torch.Tensor
    """(N, total, C, h, w): truth encoded."""
    backgrounds: list[tuple[int, int, int]]

    @property
    def prompt_frames(self) -> int:
        return self.sampling.prompt_frames

    @property
    def window(self) -> int:
        assert self.sampling.window is not None
        return self.sampling.window

    @property
    def total(self) -> int:
        return self.truth.shape[1]

    def to_pixels(self, x: torch.Tensor) -> np.ndarray:
        """(N, T, C, h, w) latents -> uint8 (N, T, H, W, 3)."""
        return np.stack([self.codec.decode(z) for z in x])

    @classmethod
    def load(cls, export: Path, clips: int, frames: int, *, speed: float = 2.5, supersample: int = 4,
             context_scale: float | None = None, steps: int | None = None, eta: float | None = None) -> HeldOut:
        """`clips` held-out scenes of the built-in task (speed, supersample), prompt plus `frames` frames each."""
        torch.set_num_threads(1)
        model, info = load_exported(export, "cpu")
        diffusion = exported_diffusion(info, eta=eta)
        codec = codec_for_export(info, model.cfg)
        changes = {k: v for k, v in (("context_scale", context_scale), ("steps", steps)) if v is not None}
        clip_len = info["data"]["num_frames"]
        sampling = dataclasses.replace(exported_sampling(info), **changes).for_clip_len(clip_len)
        spec = EvalSpec(sampling=sampling, clip_len=clip_len, multiples=-(-frames // clip_len), num_clips=clips,
                        task=SyntheticTask(speed=speed, supersample=supersample))
        truth, scenes = synthetic_truth(spec)
        truth = truth[:, : sampling.prompt_frames + frames]
        latents = torch.stack([torch.from_numpy(codec.encode(v)) for v in truth])
        return cls(model, diffusion, sampling, spec, codec, truth, latents, [s.background for s in scenes])


def colour_areas(videos: np.ndarray, backgrounds: list[tuple[int, int, int]], spec: EvalSpec) -> np.ndarray:
    """Pixel count of every palette colour: uint8 (N, T, H, W, 3) -> (N, T, K)."""
    out = []
    for video, background in zip(videos, backgrounds, strict=True):
        labels = metrics.classify(video, background, spec.tolerance, spec.blend_tolerance)  # (T, H, W)
        out.append(np.stack([(labels == k + 1).sum(axis=(-2, -1)) for k in range(len(metrics.COLOURS))], axis=-1))
    return np.stack(out)


def area_ratio(sampled: np.ndarray, true: np.ndarray, keep: np.ndarray | None = None) -> list[float]:
    """Per frame: the sum of sampled areas over the sum of true areas, over the colours the truth shows;
    keep (N, K) bool: only those (clip, colour) pairs."""
    shown = true > 0
    if keep is not None:
        shown = shown & keep[:, None, :]
    return [float((sampled[:, f] * shown[:, f]).sum() / max((true[:, f] * shown[:, f]).sum(), 1))
            for f in range(true.shape[1])]


def small_shapes(true: np.ndarray) -> np.ndarray:
    """(N, K) bool: the (clip, colour) pairs whose true area in the first frame is shown and at most the median
    of the shown ones (the smaller half of the shapes: the ones that vanish first). true: (N, T, K)."""
    first = true[:, 0]
    return (first > 0) & (first <= np.median(first[first > 0]))


def write_sheet(path: Path, *rows: np.ndarray, clips: int = 4, frames: int = 12, scale: int = 3) -> None:
    """A PNG of `clips` clips, each one row per video of `rows` (uint8 (N, T, H, W, 3)): the first `frames`
    frames side by side with 1-pixel gaps, scaled up `scale` times."""
    lines = []
    for i in range(min(clips, rows[0].shape[0])):
        for video in rows:
            tiles = [np.pad(f, ((1, 1), (1, 1), (0, 0)), constant_values=255) for f in video[i, :frames]]
            lines.append(np.concatenate(tiles, axis=1))
        lines.append(np.full((4, lines[-1].shape[1], 3), 255, dtype=np.uint8))
    image = np.concatenate(lines, axis=0).repeat(scale, axis=0).repeat(scale, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--frames", type=int, default=16, help="frames after the prompt")
    ap.add_argument("--context-scale", type=float, default=None)
    ap.add_argument("--eta", type=float, default=None, help="override the export's [diffusion] ddim_eta")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed", type=float, default=2.5)
    ap.add_argument("--supersample", type=int, default=4)
    ap.add_argument("--sheet", type=Path, default=None,
                    help="also write a PNG: per clip (the first 4) rows of truth, teacher-forced and rollout frames")
    args = ap.parse_args(argv)
    held = HeldOut.load(args.export, args.clips, args.frames, speed=args.speed, supersample=args.supersample,
                        context_scale=args.context_scale, steps=args.steps, eta=args.eta)
    model, diffusion, sampling, spec = held.model, held.diffusion, held.sampling, held.spec
    p, window, total = held.prompt_frames, held.window, held.total
    truth, latents, backgrounds, to_pixels = held.truth, held.latents, held.backgrounds, held.to_pixels

    t0 = time.time()
    gen = torch.Generator().manual_seed(args.seed)
    forced = []
    for f in range(p, total):  # frame f from the true frames before it
        context = latents[:, max(0, f - window) : f]
        forced.append(generate_as(sampling, model, diffusion, context, 1, generator=gen)[:, -1:])
    forced_px = to_pixels(torch.cat(forced, dim=1))  # (N, frames, H, W, 3)
    rollout_px = to_pixels(generate_as(sampling, model, diffusion, latents[:, :p], args.frames, generator=gen)[:, p:])
    true_areas = colour_areas(truth[:, p:], backgrounds, spec)
    forced_areas = colour_areas(forced_px, backgrounds, spec)
    rollout_areas = colour_areas(rollout_px, backgrounds, spec)
    small = small_shapes(true_areas)
    out = {
        "experiment": "area_bias", "export": str(args.export), "clips": args.clips, "frames": args.frames,
        "prompt_frames": p, "window": window, "steps": sampling.steps, "context_scale": sampling.context_scale,
        "eta": diffusion.eta, "seed": args.seed,
        "teacher_forced_area_ratio": area_ratio(forced_areas, true_areas),
        "rollout_area_ratio": area_ratio(rollout_areas, true_areas),
        "teacher_forced_small_area_ratio": area_ratio(forced_areas, true_areas, small),
        "rollout_small_area_ratio": area_ratio(rollout_areas, true_areas, small),
        "small_shape_pixels_median": float(np.median(true_areas[:, 0][small])),
        "teacher_forced_mse": float(metrics.mse(forced_px, truth[:, p:]).mean()),
        "rollout_mse": float(metrics.mse(rollout_px, truth[:, p:]).mean()),
        "seconds": round(time.time() - t0, 1),
    }
    if args.sheet is not None:
        write_sheet(args.sheet, truth[:, p:], forced_px, rollout_px)
        out["sheet"] = str(args.sheet)
    for key in ("teacher_forced_area_ratio", "rollout_area_ratio", "teacher_forced_small_area_ratio",
                "rollout_small_area_ratio"):
        out[key + "_mean"] = float(np.mean(out[key]))
        out[key] = [round(v, 3) for v in out[key]]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
