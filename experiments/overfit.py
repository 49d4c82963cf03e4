"""Overfitting: held-out against training-scene figures over training, with the dataset size as the variable.

    python -m experiments.overfit --videos 256 --steps 1800 --at 300 600 1200 1800 > runs/overfit/v256.json

Issue 22 asks whether quality falling after ~1,500 steps on 512 videos was overfitting. One model (the demo's
recipe: `experiments.recipe.BASE`, cpu flavor, batch 8, lr 2e-3, EMA 0.99, `experiments.longvideo.train`) is
trained on `--videos` synthetic videos of the task (seed 0, 48 frames each), and at each step of `--at` its EMA
is measured on two sets of scenes alike:
- `held_out`: the evaluation's scenes (seed 1000, never trained on);
- `train`: the first `--clips` training scenes (seed 0), rendered from frame 0 exactly as they were trained on.
Figures per set: the one-step predictor's MSE and centroid ratios to copy-last (`experiments.predictor`, the
network's clean estimate of the next frame from 2 true frames) and the rollout's (2 prompt frames, frame by frame,
window 7, context guidance 2, `--multiples` clip lengths): presence F1, MSE, centroid ratio over the first clip.
A gap between the sets that grows with the steps and shrinks with the videos is overfitting. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from typing import Any

import numpy as np
import torch

from data_pipeline.codecs import build_codec
from data_pipeline.synthetic import SyntheticTask
from experiments.longvideo import TrainSpec, train, training_videos
from experiments.predictor import one_step_figures
from experiments.recipe import BASE
from vidgpt.diffusion import build_diffusion
from vidgpt.evaluation import EvalSpec, continue_videos, evaluate_videos, synthetic_truth
from vidgpt.model import FLAVORS, VidGPT
from vidgpt.sampling import SamplingSpec

SETS = {"held_out": 1000, "train": 0}
"""Scene sets and their synthetic seeds (the training pool is seed 0, the evaluation's held-out scenes 1000)."""


def measure(model: VidGPT, truth: np.ndarray, scenes: list, spec: EvalSpec) -> dict[str, float]:
    """One-step and rollout figures of `model` on one scene set."""
    diffusion = build_diffusion(BASE.diffusion)
    codec = build_codec("identity")
    one = one_step_figures(model, diffusion, codec, truth, scenes, spec)
    videos = continue_videos(model, diffusion, codec, truth, spec, seed=0)
    summary = evaluate_videos(truth, {"model": videos}, spec, scenes).to_json()["summary"]["methods"]
    row = summary["model"]
    out = {"one_step_mse_ratio": one["mse_ratio"], "one_step_centroid_ratio": one["centroid_ratio"],
           "presence_f1": row["presence_f1"], "mse": row["mse"],
           "centroid_ratio_first_clip": row["centroid_ratio_first_clip"],
           "copy_last_presence_f1": summary["copy_last"]["presence_f1"], "copy_last_mse": summary["copy_last"]["mse"]}
    return {k: (round(v, 4) if v is not None and math.isfinite(v) else None) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.overfit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=512, help="training videos (default: 512)")
    ap.add_argument("--steps", type=int, default=1800, help="optimizer steps (default: 1800)")
    ap.add_argument("--at", type=int, nargs="+", default=[300, 600, 1200, 1800], help="steps to measure at")
    ap.add_argument("--clips", type=int, default=8, help="scenes per set (default: 8)")
    ap.add_argument("--multiples", type=int, default=2, help="rollout length in clip lengths (default: 2)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.videos < args.clips:
        ap.error(f"--videos ({args.videos}) must be >= --clips ({args.clips}): the train set is the first scenes")
    if max(args.at) > args.steps or min(args.at) < 1:
        ap.error(f"--at must be within [1, --steps {args.steps}], got {args.at}")
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    task = SyntheticTask(speed=2.5, supersample=4)
    spec = TrainSpec(clip_len=8, batch=8, lr=2e-3, pool=args.videos, task=task, seed=args.seed)
    if 2 + args.multiples * spec.clip_len > spec.pool_frames:
        ap.error(f"--multiples {args.multiples}: the train set's rollout must fit in its {spec.pool_frames} frames")
    sampling = SamplingSpec(prompt_frames=2, chunk=1, window=7, steps=20, context_scale=2.0, precision="fp32")
    eval_spec = EvalSpec(sampling=sampling, clip_len=spec.clip_len, multiples=args.multiples, num_clips=args.clips,
                         task=task)
    sets = {name: synthetic_truth(dataclasses.replace(eval_spec, synthetic_seed=seed)) for name, seed in SETS.items()}
    pool = training_videos(spec)
    log(f"rendered {args.videos} training videos and {len(SETS)} x {args.clips} scenes ({time.perf_counter() - t0:.0f} s)")
    rows: list[dict[str, Any]] = []

    def on_step(step: int, ema: VidGPT) -> None:
        if step in args.at:
            row: dict[str, Any] = {"step": step}
            for name, (truth, scenes) in sets.items():
                row[name] = measure(ema, truth, scenes, eval_spec)
            rows.append(row)
            log(f"  step {step}: {json.dumps(row)}")

    cfg = dataclasses.replace(FLAVORS["cpu"], in_channels=3, text_dim=0)
    _, stats = train(cfg, BASE.diffusion, BASE.objective, pool, spec, steps=args.steps, log=log, on_step=on_step)
    print(json.dumps({"experiment": "overfit", "videos": args.videos, "steps": args.steps, "seed": args.seed,
                      "clips": args.clips, "multiples": args.multiples, "task": dataclasses.asdict(task),
                      "loss_last_100": stats["loss_last_100"], "at": rows,
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
