"""Is a training change really better? Two recipes, several training seeds, paired; prints one JSON object.

    python -m experiments.recipe --a loss_weighting=none --b loss_weighting=snr_clamp --seeds 3
    python -m experiments.recipe --b per_frame_noise=true --context-scale 2

The demo's quality figures move a lot from one training seed to the next with everything else fixed:
on the CPU demo's recipe (600 steps, 16 held-out scenes) presence F1 spans 0.73-0.82 across seeds
while the loss curves are indistinguishable, which is as large as most single changes tried against
issue 8. So one run per recipe cannot tell a gain from luck. This benchmark trains the causal model
(the demo's recipe: x0 flow, lr 2e-3 cosine, prompt lengths 0..L-1, prompt noise <= 0.1, EMA 0.99, in one
process on the synthetic scenes, `experiments.longvideo.train`) once per seed and per recipe,
where recipe B differs from recipe A only in the fields given (`--a`, `--b`): `DiffusionConfig` and
`FramePromptObjective` fields,
model fields (depth, hidden, heads, mlp_ratio, patch, temporal_scope, refine), the arm's optimizer steps (so that a smaller
model trained for longer can be compared at equal compute) and its peak lr. With the same seed both recipes see the
same clips in the same order (and start from the same weights when their models are the same). `--arms b
--first-seed S --seeds 1` trains one arm at one seed, as that arm of the paired run would, so that the arms and
seeds of one comparison can run as separate processes side by side (one thread each on a small machine).
Each model continues the same held-out scenes from P frames for k training clips (`vidgpt.evaluation`),
with the same sampling noise. Reported per seed and as mean, standard deviation over seeds, and the
paired difference B - A with its mean, standard deviation and how many seeds it has the same sign on:
presence F1, garbage, centroid error over the first clip as a ratio to copy-last's, largest part, MSE.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.cli_types import finite_float
from data_pipeline.codecs import build_codec
from data_pipeline.synthetic import SyntheticTask
from experiments.longvideo import TrainSpec, arm_stats, train, training_videos
from experiments.predictor import one_step_figures
from vidgpt.cli import add_dataclass_options, dataclass_from_options
from vidgpt.config import load_config
from vidgpt.demo import CONFIG as DEMO_CONFIG
from vidgpt.diffusion import DiffusionConfig, build_diffusion
from vidgpt.evaluation import EvalSpec, continue_videos, evaluate_videos, synthetic_truth, write_outputs
from vidgpt.model import FLAVORS, ModelConfig, count_params
from vidgpt.objective import FramePromptObjective
from vidgpt.sampling import SamplingSpec

FIGURES = ("presence_f1", "garbage", "centroid_ratio_first_clip", "largest_part", "mse", "one_step_mse_ratio",
           "one_step_centroid_ratio")
"""Sampled rollouts' figures (vidgpt.evaluation's summary), then the network as a next-frame predictor
(`experiments.predictor`: its one-call estimate of the first chunk from the clean prompt, over copy-last's)."""
MODEL_FIELDS = ("depth", "hidden", "heads", "mlp_ratio", "patch", "temporal_scope", "refine")
"""Settable `ModelConfig` fields (applied to the --flavor's config)."""
DIFFUSION_FIELDS = ("prediction", "time_sampling", "ddim_eta", "data_std")
"""Settable `DiffusionConfig` fields (the run config's [diffusion])."""
OBJECTIVE_FIELDS = ("loss_weighting", "snr_max", "per_frame_noise", "prompt_per_clip", "teacher_forcing", "prompt_noise")
"""Settable `FramePromptObjective` fields (the run config's [objective])."""
WEIGHTS = "weights.pt"
"""What --out keeps of each trained model, beside its report: {"model": ModelConfig fields, "diffusion":
DiffusionConfig fields, "state_dict"}, so that other samplers can be measured on it without training again."""
SETTABLE = (*DIFFUSION_FIELDS, *OBJECTIVE_FIELDS, *MODEL_FIELDS, "steps", "lr")
"""What a recipe may change: diffusion, objective and model fields, `steps` (this arm's optimizer steps,
for comparisons at equal compute: a smaller model trained for longer) and `lr` (this arm's peak learning rate)."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What one arm trains with."""

    diffusion: DiffusionConfig
    objective: FramePromptObjective
    model: tuple[tuple[str, Any], ...] = ()
    """(field, value) pairs of MODEL_FIELDS applied to the flavor's ModelConfig."""
    steps: int | None = None
    """Optimizer steps; None: the benchmark's --steps."""
    lr: float | None = None
    """Peak learning rate; None: the benchmark's --lr."""

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return dataclasses.replace(base, **dict(self.model))

    def settings(self) -> dict[str, Any]:
        """The diffusion and objective settings, as one flat record (the JSON's "recipes")."""
        return {**dataclasses.asdict(self.diffusion), **dataclasses.asdict(self.objective)}


_DEMO = load_config(DEMO_CONFIG)
BASE = Recipe(_DEMO.diffusion, _DEMO.objective)
"""The demo's diffusion and objective settings, read from configs/demo_cpu.toml."""


def recipe(base: Recipe, pairs: list[str]) -> Recipe:
    """base with FIELD=VALUE pairs applied (fields of SETTABLE, values converted to the field's type);
    ValueError naming the pair for anything else."""
    model, steps, lr = dict(base.model), base.steps, base.lr
    changes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in SETTABLE:
            raise ValueError(f"{pair!r}: expected FIELD=VALUE with FIELD one of {', '.join(SETTABLE)}")
        if name == "steps":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{pair!r}: {value!r} is not a whole number >= 1")
            steps = int(value)
            continue
        if name == "lr":
            try:
                lr = float(value)
            except ValueError:
                lr = math.nan
            if not (math.isfinite(lr) and lr > 0):
                raise ValueError(f"{pair!r}: {value!r} is not a number > 0")
            continue
        if name in MODEL_FIELDS:
            current = model.get(name, getattr(FLAVORS["cpu"], name))
        else:
            current = getattr(base.diffusion if name in DIFFUSION_FIELDS else base.objective, name)
        kind = type(current)
        if kind is list:  # prompt_noise=LO,HI
            try:
                changes[name] = [float(v) for v in value.split(",")]
            except ValueError:
                raise ValueError(f"{pair!r}: {value!r} is not a comma-separated list of numbers") from None
            continue
        if kind is bool:  # bool("false") is True: spell it out
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{pair!r}: {value!r} is not true or false")
            changes[name] = value.lower() == "true"
            continue
        try:
            changes[name] = kind(value)
        except ValueError:
            raise ValueError(f"{pair!r}: {value!r} is not a {kind.__name__}") from None
    model.update({k: changes.pop(k) for k in list(changes) if k in MODEL_FIELDS})
    try:
        diffusion = dataclasses.replace(base.diffusion, **{k: v for k, v in changes.items() if k in DIFFUSION_FIELDS})
        objective = dataclasses.replace(base.objective, **{k: v for k, v in changes.items() if k in OBJECTIVE_FIELDS})
        objective.check_process(build_diffusion(diffusion))
        dataclasses.replace(FLAVORS["cpu"], **model)  # the model's own checks (temporal_scope=sideways)
    except ValueError as exc:
        raise ValueError(f"{' '.join(pairs)}: {exc}") from None
    return Recipe(diffusion, objective, tuple(sorted(model.items())), steps, lr)


HIGHER_IS_BETTER = ("presence_f1", "presence_f1_8x", "largest_part")
"""Figures where more is better (the others: less is better)."""


def summarize(per_seed: list[dict[str, Any]], figures: tuple[str, ...] = FIGURES) -> dict[str, dict[str, float | None]]:
    """Mean and sample standard deviation over seeds of each figure (std None for one seed)."""
    out: dict[str, dict[str, float | None]] = {}
    for k in figures:
        v = np.array([row[k] for row in per_seed if row.get(k) is not None and math.isfinite(row[k])])
        out[k] = {"mean": rounded(v.mean()) if v.size else None, "std": rounded(v.std(ddof=1)) if v.size > 1 else None}
    return out


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]], figures: tuple[str, ...] = FIGURES
           ) -> dict[str, dict[str, Any]]:
    """Per figure: the differences B - A per seed, their mean and standard deviation, and on how many
    seeds B is better (F1 and largest part higher, the others lower) out of how many."""
    out: dict[str, dict[str, Any]] = {}
    for k in figures:
        d = [rb[k] - ra[k] for ra, rb in zip(a, b)
             if None not in (ra.get(k), rb.get(k)) and math.isfinite(ra[k]) and math.isfinite(rb[k])]
        better = sum((x > 0) if k in HIGHER_IS_BETTER else (x < 0) for x in d)
        out[k] = {"diffs": [rounded(x) for x in d], "mean": rounded(np.mean(d)) if d else None,
                  "std": rounded(np.std(d, ddof=1)) if len(d) > 1 else None, "b_better_on": f"{better}/{len(d)}"}
    return out


def rounded(v: float) -> float:
    return round(float(v), 4)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.recipe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", nargs="*", default=[], metavar="FIELD=VALUE",
                    help=f"recipe A: the demo's diffusion settings and the --flavor's model with these changed "
                         f"({', '.join(SETTABLE)})")
    ap.add_argument("--b", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="recipe B: recipe A with these changed (e.g. loss_weighting=snr_clamp; hidden=96 steps=910)")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per recipe (default: 3)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="train seeds FIRST_SEED .. FIRST_SEED + SEEDS - 1 (default: 0), so that seeds can be spread "
                         "over processes")
    ap.add_argument("--arms", choices=("ab", "a", "b"), default="ab",
                    help="which recipes to train (default: ab, both, paired); one arm alone prints its figures "
                         "without the paired differences, to be paired with another run's")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps per model (default: 600, the demo's)")
    ap.add_argument("--flavor", choices=sorted(FLAVORS), default="cpu", help="model size (default: cpu)")
    ap.add_argument("--batch", type=int, default=8, help="clips per step (default: 8, the demo's 4 x 2 ranks)")
    ap.add_argument("--lr", type=finite_float, default=2e-3, help="peak learning rate (default: 2e-3, the demo's)")
    ap.add_argument("--clip-len", type=int, default=8, help="training clip length L (default: 8)")
    ap.add_argument("--pool", type=int, default=512, help="synthetic training videos (default: 512, the demo's)")
    ap.add_argument("--size", type=int, default=32, help="frame height and width (default: 32)")
    add_dataclass_options(ap, SyntheticTask)  # the scenes' speed and drawing, for training and truth
    ap.add_argument("--clips", type=int, default=16, help="held-out scenes (default: 16)")
    ap.add_argument("--prompt-frames", type=int, default=2, help="prompt frames P (default: 2)")
    ap.add_argument("--multiples", type=int, default=4, help="continue for k clip lengths (default: 4)")
    ap.add_argument("--sample-steps", type=int, default=20, help="denoising steps per chunk (default: 20)")
    ap.add_argument("--context-scale", type=finite_float, default=1.0,
                    help="guidance on the earlier frames when sampling (the demo's: 2; default: 1, none)")
    ap.add_argument("--chunk", type=int, default=None,
                    help="frames denoised together when sampling (the demo's: 1; default: half the clip)")
    ap.add_argument("--window", type=int, default=None,
                    help="finished frames each chunk attends to (the demo's: 7; default: the clip length - chunk)")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"also write each model's report, plot, sheet and weights ({WEIGHTS}) here")
    args = ap.parse_args(argv)
    for name in ("seeds", "steps", "batch", "lr", "clip_len", "pool", "size", "clips", "multiples", "sample_steps",
                 "prompt_frames", "context_scale", "chunk", "window"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.first_seed < 0:
        ap.error(f"--first-seed must be >= 0, got {args.first_seed}")
    if args.prompt_frames >= args.clip_len:
        ap.error(f"--prompt-frames {args.prompt_frames} must be < --clip-len {args.clip_len}")
    try:
        args.task = dataclass_from_options(SyntheticTask, args)
    except ValueError as exc:
        ap.error(str(exc))
    try:  # the process's and the objective's own checks (snr_clamp needs x0, ...)
        args.recipe_a = recipe(BASE, args.a)
        args.recipe_b = recipe(args.recipe_a, args.b)
    except ValueError as exc:
        ap.error(str(exc))
    for flag, arm in (("--a", args.recipe_a), ("--b", args.recipe_b)):
        try:
            arm.model_config(FLAVORS[args.flavor])  # ModelConfig's own checks (hidden divisible by heads, ...)
        except ValueError as exc:
            ap.error(f"{flag} {' '.join(getattr(args, flag[2:]))} on flavor {args.flavor}: {exc}")
    if args.recipe_a == args.recipe_b and args.arms != "a":
        ap.error("--b changes nothing: recipes A and B are the same")
    if args.arms == "a" and args.b:
        ap.error(f"--arms a trains recipe A alone, so --b {' '.join(args.b)} would be ignored: drop it, or use "
                 f"--arms b or ab")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    cfg = dataclasses.replace(FLAVORS[args.flavor], in_channels=3, text_dim=0)
    spec = TrainSpec(clip_len=args.clip_len, batch=args.batch, lr=args.lr, pool=args.pool, size=args.size,
                     task=args.task)
    eval_spec = EvalSpec(sampling=SamplingSpec(prompt_frames=args.prompt_frames, steps=args.sample_steps,
                                               context_scale=args.context_scale, chunk=args.chunk,
                                               window=args.window, precision="fp32"),
                         clip_len=args.clip_len, multiples=args.multiples, num_clips=args.clips, size=args.size,
                         task=args.task)
    log(f"rendering {spec.pool} training videos and {args.clips} held-out scenes")
    pool = training_videos(spec)
    truth, scenes = synthetic_truth(eval_spec)
    codec = build_codec("identity")
    arms = tuple(args.arms)
    rows: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    trained: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        for arm in arms:
            arm_recipe: Recipe = getattr(args, f"recipe_{arm}")
            diffusion_cfg = arm_recipe.diffusion
            model, stats = train(arm_recipe.model_config(cfg), diffusion_cfg, arm_recipe.objective, pool,
                                 dataclasses.replace(spec, seed=seed, lr=arm_recipe.lr or args.lr),
                                 steps=arm_recipe.steps or args.steps, log=log)
            videos = continue_videos(model, build_diffusion(diffusion_cfg), codec, truth, eval_spec, seed=0)
            report = evaluate_videos(truth, {"model": videos}, eval_spec, scenes)
            summary = report.to_json()["summary"]["methods"]["model"]
            one_step = one_step_figures(model, build_diffusion(diffusion_cfg), codec, truth, scenes, eval_spec)
            summary.update(one_step_mse_ratio=one_step["mse_ratio"], one_step_centroid_ratio=one_step["centroid_ratio"])
            rows[arm].append({k: rounded(v) if v is not None and math.isfinite(v) else None  # NaN: no colour found
                              for k in FIGURES for v in [summary.get(k)]})
            trained[arm].append(arm_stats(stats))
            if args.out is not None:
                arm_dir = args.out / f"{arm}_seed{seed}"
                write_outputs(report, truth, {"model": videos}, arm_dir)
                torch.save({"model": dataclasses.asdict(model.cfg), "diffusion": dataclasses.asdict(diffusion_cfg),
                            "state_dict": model.state_dict()}, arm_dir / WEIGHTS)
            log(f"seed {seed}, recipe {arm.upper()}: {rows[arm][-1]} ({stats['seconds']} s of training)")
    result = {
        "benchmark": "recipe",
        "recipes": {"a": args.recipe_a.settings(), "b": args.recipe_b.settings(),
                    "b_changes": args.b, "a_changes": args.a},
        "model": {"flavor": args.flavor, **{arm: {"params": count_params(r.model_config(cfg)), **dict(r.model)}
                                            for arm, r in (("a", args.recipe_a), ("b", args.recipe_b))}},
        "train": {"steps": {"a": args.recipe_a.steps or args.steps, "b": args.recipe_b.steps or args.steps},
                  "lr": {"a": args.recipe_a.lr or args.lr, "b": args.recipe_b.lr or args.lr},
                  "batch": args.batch, "clip_len": args.clip_len, "pool": args.pool,
                  "size": args.size, "task": dataclasses.asdict(args.task), "seeds": seeds, **trained},
        "eval": {"clips": args.clips, "prompt_frames": args.prompt_frames, "multiples": args.multiples,
                 "sample_steps": args.sample_steps, "chunk": eval_spec.sampling.chunk,
                 "window": eval_spec.sampling.window,
                 "context_scale": args.context_scale,
                 "synthetic_seed": eval_spec.synthetic_seed},
        "per_seed": rows,
        "summary": {arm: summarize(rows[arm]) for arm in arms},
        "b_minus_a": paired(rows["a"], rows["b"]) if arms == ("a", "b") else None,
        "seconds": round(time.perf_counter() - t_start, 1),
        "host": {"machine": platform.machine(), "threads": torch.get_num_threads()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
