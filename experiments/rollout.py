"""Exposure bias: does training on the model's own rollouts fix the drift of long rollouts? Prints one JSON object.

    python -m experiments.rollout --steps 1500 --seeds 1 --out runs/bench_rollout

The per-frame-noise model (Diffusion Forcing) only ever conditions on true (or lightly noised true) earlier
frames in training, so at sampling time its own errors compound: shapes shrink, fuse and vanish and the
background drifts. The `rollout` arm trains, on a share `--prob` of its batches, on its own few-step
rollouts as context (scheduled sampling, a cheap Self-Forcing-like variant; `rollout_context_loss`):

1. the batch's true clips x0 (B, L, C, H, W) and a prompt length P in [1, L-2] (the usual draw, clamped);
2. K drawn uniformly in (P, L-1]; the current network, in eval mode and without gradients (or its EMA copy,
   --rollout-ema), generates frames [P, K) from the true frames [0, P) with the kv-cache, one frame at a
   time, `--rollout-steps` denoising steps, no guidance;
3. the loss is `FramePromptObjective.loss_at` with prompt length K and those frames as the `context`: true
   frames [0, P) and generated frames [P, K) are the context (labelled t = 0, with the usual prompt noise),
   the true frames [K, L) are noised per frame and carry the loss. Given its own drifted context, the
   network learns to predict the true continuation.
The other batches, and every batch of the `baseline` arm, take the usual loss. Both arms share the seed:
the same initial weights, the same clips in the same order, the same prompt-length draws, noise and
timesteps (the rollout's coin, K and sampling noise come from a separate generator), the same number of
optimizer steps. Each EMA model then continues the same held-out scenes (`vidgpt.evaluation`, P = 2, one
frame at a time, window L-1, 20 steps, context guidance 2, the demo's sampling) for `--multiples` clip
lengths, and is measured as `experiments.recipe` does: presence F1 at 4x (and 8x), garbage and largest
part at 4x, centroid error over the first clip as a ratio to copy-last's, MSE, the one-step predictor's
ratios, per seed, summarized over seeds and as paired differences rollout - baseline; plus seconds per
optimizer step of each arm.
"""

from __future__ import annotations

import argparse
import copy
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

from data_pipeline.codecs import build_codec
from data_pipeline.synthetic import SyntheticTask
from experiments.longvideo import TrainSpec, clips, optimizer_step, training_videos
from experiments.predictor import one_step_figures
from experiments.recipe import BASE, paired, rounded, summarize
from vidgpt.cli import add_dataclass_options, dataclass_from_options
from vidgpt.diffusion import Diffusion, DiffusionConfig, build_diffusion
from vidgpt.evaluation import EvalSpec, continue_videos, evaluate_videos, synthetic_truth, write_outputs
from vidgpt.model import FLAVORS, ModelConfig, VidGPT, count_params
from vidgpt.objective import FramePromptObjective
from vidgpt.sampling import SamplingSpec, generate

FIGURES = ("presence_f1", "presence_f1_8x", "garbage", "largest_part", "centroid_ratio_first_clip", "mse",
           "one_step_mse_ratio", "one_step_centroid_ratio")
"""experiments.recipe's figures (presence F1, garbage and largest part at min(4, k) clip lengths), and presence F1
at 8 clip lengths."""
ARMS = ("baseline", "rollout")


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    """How the rollout arm builds its context."""

    prob: float = 0.5
    """Share of the batches trained on the model's own rollout (the others take the usual loss)."""
    steps: int = 4
    """Denoising steps per generated frame."""
    use_ema: bool = False
    """Roll out with the EMA copy instead of the current network."""
    context_noise: float = 0.0
    """Generated frames are noised to this flow time before they enter the context (still labelled 0, on top of
    the objective's prompt noise); 0: as generated."""
    start: float = 0.0
    """Share of the optimizer steps trained plainly before the first rollout batch (a fine-tuning curriculum)."""

    def __post_init__(self) -> None:
        if (not 0 <= self.prob <= 1 or self.steps < 1 or not 0 <= self.context_noise < 1
                or not 0 <= self.start < 1):
            raise ValueError(f"need prob in [0, 1], steps >= 1, context_noise and start in [0, 1); got {self}")


@torch.no_grad()
def rollout_context(model: VidGPT, diffusion: Diffusion, x0: torch.Tensor, prompt_len: int, end: int, *,
                    steps: int, generator: torch.Generator, context_noise: float = 0.0) -> torch.Tensor:
    """x0 (B, L, C, H, W) with frames [prompt_len, end) replaced by `model`'s own rollout from x0's first
    prompt_len frames (kv-cache, one frame at a time, window L-1, `steps` denoising steps, no guidance), run in
    eval mode without gradients; the model's mode is restored. context_noise > 0 noises the generated frames to
    that flow time."""
    B, L = x0.shape[:2]
    if not 1 <= prompt_len < end <= L:
        raise ValueError(f"need 1 <= prompt_len < end <= L; got {prompt_len}, {end}, {L}")
    was_training = model.training
    model.eval()
    try:
        video = generate(model, diffusion, x0[:, :prompt_len].float(), end - prompt_len, chunk=1, window=L - 1,
                         steps=steps, use_cache=model.cfg.causal, generator=generator)  # (B, end, C, H, W)
    finally:
        model.train(was_training)
    made = video[:, prompt_len:end]
    if context_noise > 0:
        eps = torch.randn(made.shape, generator=generator, device=made.device)
        made = diffusion.add_noise(made, eps, diffusion.time_at(torch.full((B, end - prompt_len), context_noise)))
    return torch.cat([x0[:, :prompt_len].float(), made, x0[:, end:].float()], dim=1)


def rollout_context_loss(objective: FramePromptObjective, model: VidGPT, diffusion: Diffusion, x0: torch.Tensor,
                         prompt_len: int, *, generator: torch.Generator, rollout_generator: torch.Generator,
                         spec: RolloutSpec, sampler: VidGPT | None = None) -> tuple[torch.Tensor, int | None]:
    """One training loss, on the model's own rollout with probability spec.prob (module docstring), else the
    usual loss at `prompt_len`. Returns (loss, K): K the first true noisy frame of a rollout batch (the context
    [P, K) generated), None for a usual batch. `generator` draws the loss's noise and times exactly as the
    usual loss would; the coin, K and the rollout's noise come from `rollout_generator` alone. `sampler`: the
    network that rolls out (default: `model`). Clips of fewer than 3 frames never roll out."""
    L = x0.shape[1]
    coin = float(torch.rand((), generator=rollout_generator))
    if L < 3 or coin >= spec.prob:
        return objective.loss_at(model, diffusion, x0, prompt_len, generator=generator), None
    p = min(max(int(prompt_len), 1), L - 2)  # a true prompt frame, and room for a generated and a target frame
    k = int(torch.randint(p + 1, L, (), generator=rollout_generator))  # K in (P, L-1]
    context = rollout_context(sampler or model, diffusion, x0, p, k, steps=spec.steps, generator=rollout_generator,
                              context_noise=spec.context_noise)
    return objective.loss_at(model, diffusion, x0, k, generator=generator, context=context), k


def train(cfg: ModelConfig, diffusion_cfg: DiffusionConfig, objective: FramePromptObjective, pool: torch.Tensor,
          spec: TrainSpec, *, steps: int, rollout: RolloutSpec | None = None, log: Any = None,
          ) -> tuple[VidGPT, dict[str, Any]]:
    """`experiments.longvideo.train`'s loop (AdamW, warm-up and cosine decay to 10%, grad clip 1, EMA), with
    rollout batches when `rollout` is given; rollout None is exactly the plain loop. Returns the EMA model and
    {steps, seconds, seconds_per_step, rollout_steps, rollout_seconds, loss_last_100}."""
    torch.manual_seed(spec.seed)
    model = VidGPT(cfg).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    diffusion = build_diffusion(diffusion_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    roll_gen = torch.Generator().manual_seed(spec.seed + 2)  # the rollout's own stream: gen stays paired
    data = clips(pool, spec)
    losses: list[float] = []
    rollouts, generated = 0, 0
    start = time.perf_counter()
    for step in range(steps):
        progress = step / max(1, steps)
        factor = min(1.0, (step + 1) / spec.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = spec.lr * factor
        x0 = next(data)
        prompt_len = objective.draw_prompt_lengths(spec.clip_len, x0.shape[0], gen)
        if rollout is None or step < rollout.start * steps:
            loss = objective.loss_at(model, diffusion, x0, prompt_len, generator=gen)
        else:
            loss, k = rollout_context_loss(objective, model, diffusion, x0, int(prompt_len[0]), generator=gen,
                                           rollout_generator=roll_gen, spec=rollout,
                                           sampler=ema if rollout.use_ema else None)
            if k is not None:
                rollouts += 1
                generated += k - min(max(int(prompt_len[0]), 1), spec.clip_len - 2)
        optimizer_step(model, ema, opt, loss, spec.ema_decay)
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % 100 == 0:
            log(f"  {'rollout' if rollout else 'baseline'} seed {spec.seed}: step {step + 1} loss "
                f"{np.mean(losses[-100:]):.4f} ({time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start
    return ema, {"steps": steps, "seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(1, steps), 4),
                 "rollout_steps": rollouts, "generated_frames_per_rollout": round(generated / max(1, rollouts), 2),
                 "loss_last_100": float(np.mean(losses[-100:])) if losses else None}


def evaluate(model: VidGPT, diffusion_cfg: DiffusionConfig, truth: np.ndarray, scenes: list, eval_spec: EvalSpec,
             out: Path | None) -> tuple[dict[str, float | None], dict[str, Any]]:
    """experiments.recipe's figures of one model on the held-out scenes (and the copy-last summary row)."""
    codec = build_codec("identity")
    diffusion = build_diffusion(diffusion_cfg)
    videos = continue_videos(model, diffusion, codec, truth, eval_spec, seed=0)
    report = evaluate_videos(truth, {"model": videos}, eval_spec, scenes)
    summary = report.to_json()["summary"]["methods"]
    row = dict(summary["model"])
    one_step = one_step_figures(model, diffusion, codec, truth, scenes, eval_spec)
    row.update(one_step_mse_ratio=one_step["mse_ratio"], one_step_centroid_ratio=one_step["centroid_ratio"])
    if out is not None:
        write_outputs(report, truth, {"model": videos}, out)
    return ({k: rounded(v) if v is not None and math.isfinite(v) else None for k in FIGURES for v in [row.get(k)]},
            {k: rounded(v) for k, v in summary["copy_last"].items() if k in FIGURES and v is not None})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.rollout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps per model (default: 1500)")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per arm (default: 1)")
    ap.add_argument("--first-seed", type=int, default=0, help="the first training seed (default: 0)")
    ap.add_argument("--prob", type=float, default=0.5, help="share of rollout batches (default: 0.5)")
    ap.add_argument("--rollout-steps", type=int, default=4, help="denoising steps per rolled-out frame (default: 4)")
    ap.add_argument("--rollout-ema", action="store_true", help="roll out with the EMA copy (default: the network)")
    ap.add_argument("--rollout-noise", type=float, default=0.0,
                    help="noise the generated context frames to this flow time, labelled 0 (default: 0)")
    ap.add_argument("--rollout-start", type=float, default=0.0,
                    help="share of the steps trained plainly before the first rollout batch (default: 0)")
    ap.add_argument("--flavor", choices=sorted(FLAVORS), default="cpu", help="model size (default: cpu)")
    ap.add_argument("--batch", type=int, default=8, help="clips per step (default: 8)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3, the demo's)")
    ap.add_argument("--clip-len", type=int, default=8, help="training clip length L (default: 8)")
    ap.add_argument("--pool", type=int, default=2048, help="synthetic training videos (default: 2048)")
    ap.add_argument("--size", type=int, default=32, help="frame height and width (default: 32)")
    add_dataclass_options(ap, SyntheticTask)
    ap.set_defaults(speed=2.5, supersample=4)
    ap.add_argument("--clips", type=int, default=16, help="held-out scenes (default: 16)")
    ap.add_argument("--multiples", type=int, default=8, help="continue for k clip lengths (default: 8)")
    ap.add_argument("--sample-steps", type=int, default=20, help="denoising steps per frame (default: 20)")
    ap.add_argument("--context-scale", type=float, default=2.0, help="context guidance (default: 2, the demo's)")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                    help="arms to train (default: both; the paired differences need both)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; 1 is faster on a shared machine)")
    ap.add_argument("--out", type=Path, default=None, help="also write each model's report, plot and sheet here")
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    for name in ("steps", "seeds", "batch", "lr", "clip_len", "pool", "size", "clips", "multiples", "sample_steps",
                 "context_scale"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    try:
        args.task = dataclass_from_options(SyntheticTask, args)
        args.rollout = RolloutSpec(prob=args.prob, steps=args.rollout_steps, use_ema=args.rollout_ema,
                                   context_noise=args.rollout_noise, start=args.rollout_start)
    except ValueError as exc:
        ap.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    cfg = dataclasses.replace(FLAVORS[args.flavor], in_channels=3, text_dim=0)
    diffusion_cfg, objective = BASE.diffusion, BASE.objective  # the demo's: x0 flow, per-frame noise, snr_clamp
    spec = TrainSpec(clip_len=args.clip_len, batch=args.batch, lr=args.lr, pool=args.pool, size=args.size,
                     task=args.task)
    eval_spec = EvalSpec(sampling=SamplingSpec(prompt_frames=2, chunk=1, window=args.clip_len - 1,
                                               steps=args.sample_steps, context_scale=args.context_scale,
                                               precision="fp32"),
                         clip_len=args.clip_len, multiples=args.multiples, num_clips=args.clips, size=args.size,
                         task=args.task)
    log(f"rendering {spec.pool} training videos and {args.clips} held-out scenes")
    pool = training_videos(spec)
    truth, scenes = synthetic_truth(eval_spec)
    log(f"rendered in {time.perf_counter() - t_start:.0f} s")
    rows: dict[str, list[dict[str, float | None]]] = {arm: [] for arm in ARMS}
    trained: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    copy_last: dict[str, Any] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for arm in args.arms:
            model, stats = train(cfg, diffusion_cfg, objective, pool, dataclasses.replace(spec, seed=seed),
                                 steps=args.steps, rollout=args.rollout if arm == "rollout" else None, log=log)
            t0 = time.perf_counter()
            row, copy_last = evaluate(model, diffusion_cfg, truth, scenes, eval_spec,
                                      None if args.out is None else args.out / f"{arm}_seed{seed}")
            stats["eval_seconds"] = round(time.perf_counter() - t0, 1)
            if args.out is not None:
                torch.save(model.state_dict(), args.out / f"{arm}_seed{seed}" / "ema.pt")
            rows[arm].append(row)
            trained[arm].append(stats)
            log(f"seed {seed}, {arm}: {row} {stats}")
    per_step = {arm: rounded(np.mean([s["seconds_per_step"] for s in trained[arm]])) for arm in args.arms}
    if len(per_step) == 2:
        per_step["ratio"] = rounded(per_step["rollout"] / per_step["baseline"])
    result = {
        "benchmark": "rollout",
        "recipe": BASE.settings(),
        "rollout": dataclasses.asdict(args.rollout),
        "model": {"flavor": args.flavor, "params": count_params(cfg)},
        "train": {"steps": args.steps, "batch": args.batch, "lr": args.lr, "clip_len": args.clip_len,
                  "pool": args.pool, "size": args.size, "task": dataclasses.asdict(args.task),
                  "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
                  **{arm: trained[arm] for arm in args.arms}},
        "seconds_per_step": per_step,
        "eval": {"clips": args.clips, "prompt_frames": 2, "multiples": args.multiples,
                 "sample_steps": args.sample_steps, "chunk": eval_spec.sampling.chunk,
                 "window": eval_spec.sampling.window, "context_scale": args.context_scale,
                 "synthetic_seed": eval_spec.synthetic_seed},
        "copy_last": copy_last,
        "per_seed": {arm: rows[arm] for arm in args.arms},
        "summary": {arm: summarize(rows[arm], FIGURES) for arm in args.arms},
        "rollout_minus_baseline": paired(rows["baseline"], rows["rollout"], FIGURES) if len(args.arms) == 2 else None,
        "seconds": round(time.perf_counter() - t_start, 1),
        "host": {"machine": platform.machine(), "threads": torch.get_num_threads()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
