"""Long-video quality: the causal ViD-GPT model against the bidirectional baseline; prints one JSON object.

    python -m experiments.longvideo --minutes 20 --out runs/bench_longvideo

Both models are the one `VidGPT` with `temporal` switched, so they have the same parameters (count and
initial values). They are trained here, one process, alike: the same synthetic clips in the same
order, the same noise, timesteps and prompt lengths, the same number of optimizer steps (the causal
model trains for half the training budget, the baseline then for exactly as many steps). Each then
continues held-out synthetic scenes (`vidgpt.evaluation`, a seed never trained on) from their first P
frames for 8x the training clip:
- `causal_cache`: ViD-GPT with the kv-cache (sliding window);
- `causal_no_cache`: the same model recomputing the window at every step (exact until the cache's
  first eviction, different by design after it);
- `causal_cache_seed2`: the cached model again with other sampling noise: the seed-to-seed spread
  that the cache/no-cache difference is compared with;
- `bidirectional`: the baseline, which can only recompute the window;
- `copy_last` (added by the evaluator): the last prompt frame repeated.
Figures per method at 1x, 2x, 4x, 8x the clip length: over the first m clips (`upto`) and on the m-th
clip alone (`chunk`). Writes report.json, metrics.png (every metric against frame index) and sheet.png
into --out.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.cli_types import finite_float
from data_pipeline.codecs import build_codec
from data_pipeline.synthetic import SyntheticTask, synthetic_scene
from vidgpt.cli import add_dataclass_options, dataclass_from_options
from vidgpt.diffusion import DiffusionConfig, build_diffusion
from vidgpt.evaluation import EvalSpec, continue_videos, evaluate_videos, mp4_round_trip, synthetic_truth, write_outputs
from vidgpt.model import FLAVORS, ModelConfig, VidGPT, count_params
from vidgpt.objective import FramePromptObjective
from vidgpt.sampling import SamplingSpec, generate

MULTIPLES = (1, 2, 4, 8, 16)
OBJECT_METRICS = ("presence_f1", "garbage", "centroid_error")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """How both models are trained."""

    clip_len: int = 8
    """Frames per training clip (prompt + noisy)."""
    batch: int = 8
    """Clips per optimizer step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup: int = 50
    """Warm-up steps."""
    ema_decay: float = 0.99
    """EMA of the weights; the EMA model is evaluated."""
    pool: int = 1024
    """Synthetic training videos (seed 0), each `pool_frames` long; clips are random windows of them."""
    pool_frames: int = 48
    """Frames per training video."""
    size: int = 32
    """Frame height and width."""
    task: SyntheticTask = SyntheticTask()
    """How the training scenes move and are drawn (the held-out truth must use the same)."""
    seed: int = 0
    """Seed of initial weights, clip order, noise, timesteps and prompt lengths."""


def training_videos(spec: TrainSpec) -> torch.Tensor:
    """The training pool as identity-codec latents in [-1, 1]: (N, T, 3, S, S), after an mp4 round trip
    like every video the demo trains on."""
    videos = [mp4_round_trip(synthetic_scene(i, size=spec.size, seed=0, speed=spec.task.speed)
                             .render(spec.pool_frames, spec.task.supersample), 8.0)
              for i in range(spec.pool)]
    frames = torch.from_numpy(np.stack(videos))  # (N, T, S, S, 3) uint8
    return frames.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0


def clips(pool: torch.Tensor, spec: TrainSpec) -> Iterator[torch.Tensor]:
    """Endless seeded batches of random windows: (batch, clip_len, 3, S, S)."""
    gen = torch.Generator().manual_seed(spec.seed)
    n, t = pool.shape[:2]
    while True:
        idx = torch.randint(n, (spec.batch,), generator=gen).tolist()
        start = torch.randint(t - spec.clip_len + 1, (spec.batch,), generator=gen).tolist()
        yield torch.stack([pool[i, s : s + spec.clip_len] for i, s in zip(idx, start)])


def train(
    cfg: ModelConfig, diffusion_cfg: DiffusionConfig, objective: FramePromptObjective, pool: torch.Tensor,
    spec: TrainSpec, *,
    steps: int, seconds: float = math.inf, log: Any = None,
) -> tuple[VidGPT, dict[str, Any]]:
    """Train one model for `steps` optimizer steps (or until `seconds` pass); returns its EMA copy and
    {steps, seconds, loss}. Everything random is seeded by spec.seed, so two calls see the same data."""
    torch.manual_seed(spec.seed)
    model = VidGPT(cfg).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    diffusion = build_diffusion(diffusion_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    data = clips(pool, spec)
    losses: list[float] = []
    start = time.perf_counter()
    step = 0
    while step < steps and time.perf_counter() - start < seconds:
        progress = min(1.0, step / max(1, steps))
        factor = min(1.0, (step + 1) / spec.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = spec.lr * factor
        x0 = next(data)
        prompt_len = objective.draw_prompt_lengths(spec.clip_len, x0.shape[0], gen)
        loss = objective.loss_at(model, diffusion, x0, prompt_len, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - spec.ema_decay)
        losses.append(float(loss.detach()))
        step += 1
        if log is not None and step % 100 == 0:
            log(f"  {cfg.temporal}: step {step} loss {np.mean(losses[-100:]):.4f} "
                f"({time.perf_counter() - start:.0f} s)")
    return ema, {"steps": step, "seconds": round(time.perf_counter() - start, 1),
                 "loss_last_100": float(np.mean(losses[-100:])) if losses else None}


def _figures(report: dict[str, Any], method: str) -> dict[str, Any]:
    """Figures of one method at each multiple: over the first m clips and on the m-th clip."""
    entry = report["methods"][method]
    keep = ("mse", "psnr", *OBJECT_METRICS, *report["frechet_metrics"])
    out = {}
    for m in MULTIPLES:
        if m > report["multiples"]:
            continue
        upto = entry["by_multiple"][m - 1]
        chunk = entry["per_chunk"][m - 1]
        out[f"{m}x"] = {"upto": {k: _round(upto[k]) for k in keep if k in upto},
                        "chunk": {k: _round(chunk[k]) for k in keep if k in chunk}}
    return out


def _round(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


def _better(a: dict[str, Any], b: dict[str, Any]) -> dict[str, bool]:
    """Whether figures `a` beat figures `b` on each object metric (F1 higher, the others lower)."""
    out = {}
    for k in OBJECT_METRICS:
        x, y = a.get(k), b.get(k)
        out[k] = x is not None and y is not None and (x > y if k == "presence_f1" else x < y)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.longvideo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=finite_float, default=20.0,
                    help="whole budget; training gets what the evaluation estimate leaves, half per model "
                         "(default: 20)")
    ap.add_argument("--steps", type=int, default=100_000, help="most optimizer steps per model (default: no cap)")
    ap.add_argument("--flavor", choices=sorted(FLAVORS), default="cpu", help="model size (default: cpu)")
    ap.add_argument("--clip-len", type=int, default=8, help="training clip length L (default: 8)")
    ap.add_argument("--batch", type=int, default=8, help="clips per step (default: 8)")
    ap.add_argument("--lr", type=finite_float, default=1e-3, help="peak learning rate (default: 1e-3)")
    ap.add_argument("--prediction", choices=("x0", "x0_skip", "velocity"), default="x0",
                    help="what the network predicts (default: x0)")
    ap.add_argument("--loss-weighting", choices=("none", "snr_clamp"), default=None,
                    help="snr_clamp (x0 only): weight each sample's x0 error by its SNR clamped to "
                         "[1, --snr-max] (default: snr_clamp for x0, none otherwise)")
    ap.add_argument("--snr-max", type=finite_float, default=5.0, help="upper clamp of snr_clamp (default: 5)")
    ap.add_argument("--prompt-noise", type=finite_float, default=0.1,
                    help="prompt frames noised up to this flow time while labelled clean (default: 0.1)")
    ap.add_argument("--eta", type=finite_float, default=1.0,
                    help="sampling stochasticity, the share of fresh noise per step (default: 1)")
    ap.add_argument("--multiples", type=int, default=8, help="continue for this many clip lengths (default: 8)")
    ap.add_argument("--prompt-frames", type=int, default=2, help="prompt frames P (default: 2)")
    ap.add_argument("--chunk", type=int, default=None, help="frames per chunk (default: L/2)")
    ap.add_argument("--window", type=int, default=None, help="kv-cache window (default: L - chunk)")
    ap.add_argument("--sink", type=int, default=0,
                    help="also sample the causal model with this many first frames kept in the kv-cache as an "
                         "attention sink (causal_cache_sink, against the plain rolling window; default: 0, not run)")
    ap.add_argument("--per-frame-noise", action="store_true",
                    help="train with an independent noise level per frame (Diffusion Forcing)")
    ap.add_argument("--sample-steps", type=int, default=20, help="denoising steps per chunk (default: 20)")
    ap.add_argument("--clips", type=int, default=16, help="held-out clips (default: 16)")
    ap.add_argument("--size", type=int, default=32, help="frame height and width (default: 32)")
    ap.add_argument("--pool", type=int, default=1024, help="synthetic training videos (default: 1024)")
    add_dataclass_options(ap, SyntheticTask)  # the scenes' speed and drawing, for training and truth
    ap.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_longvideo"), help="output directory")
    args = ap.parse_args(argv)
    for name in ("minutes", "steps", "clip_len", "batch", "lr", "multiples", "prompt_frames", "sample_steps", "clips",
                 "size", "pool"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.prompt_frames >= args.clip_len:
        ap.error(f"--prompt-frames {args.prompt_frames} must be < --clip-len {args.clip_len}")
    if not 0 <= args.prompt_noise <= 1:
        ap.error(f"--prompt-noise must be in [0, 1], got {args.prompt_noise}")
    if not 0 <= args.eta <= 1:
        ap.error(f"--eta must be in [0, 1], got {args.eta}")
    try:
        args.task = dataclass_from_options(SyntheticTask, args)
        SamplingSpec(prompt_frames=args.prompt_frames, chunk=args.chunk, window=args.window,
                     sink=args.sink).for_clip_len(args.clip_len)  # the sink fits the prompt and the window
    except ValueError as exc:
        ap.error(str(exc))
    if args.loss_weighting is None:
        args.loss_weighting = "snr_clamp" if args.prediction == "x0" else "none"
    try:
        recipe_config(args)  # the process's and the objective's own checks: snr_clamp needs x0, snr_max >= 1
    except ValueError as exc:
        ap.error(str(exc))
    return args


def recipe_config(args: argparse.Namespace) -> tuple[DiffusionConfig, FramePromptObjective]:
    """The process and the training objective the flags ask for (ValueError when they do not fit)."""
    diffusion = DiffusionConfig(process="flow", prediction=args.prediction, ddim_eta=args.eta)
    objective = FramePromptObjective(prompt_rule="uniform", prompt_noise=[0.0, args.prompt_noise],
                                     loss_weighting=args.loss_weighting, snr_max=args.snr_max,
                                     per_frame_noise=args.per_frame_noise)
    objective.check_process(build_diffusion(diffusion))
    return diffusion, objective


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.minutes * 60

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    spec = TrainSpec(clip_len=args.clip_len, batch=args.batch, lr=args.lr, seed=args.seed, pool=args.pool,
                     size=args.size, task=args.task)
    causal_cfg = dataclasses.replace(FLAVORS[args.flavor], in_channels=3, text_dim=0)
    bidir_cfg = dataclasses.replace(causal_cfg, temporal="bidirectional")
    diffusion_cfg, objective = recipe_config(args)
    diffusion = build_diffusion(diffusion_cfg)
    eval_spec = EvalSpec(sampling=SamplingSpec(prompt_frames=args.prompt_frames, chunk=args.chunk, window=args.window,
                                               steps=args.sample_steps, precision="fp32"),
                         clip_len=args.clip_len, multiples=args.multiples, num_clips=args.clips, size=spec.size,
                         task=spec.task)
    sampling = eval_spec.sampling
    log(f"rendering {spec.pool} training videos and {args.clips} held-out scenes")
    pool = training_videos(spec)
    truth, scenes = synthetic_truth(eval_spec)

    # evaluation cost: 4 generations; one chunk of an untrained model, scaled to the longest window
    probe = VidGPT(causal_cfg).eval()
    t0 = time.perf_counter()
    generate(probe, diffusion, torch.zeros(args.clips, sampling.prompt_frames, 3, spec.size, spec.size),
             sampling.chunk, chunk=sampling.chunk, window=sampling.window, steps=sampling.steps, use_cache=False)
    frames_seen = (sampling.window + sampling.chunk) / (sampling.prompt_frames + sampling.chunk)
    eval_estimate = 4 * (time.perf_counter() - t0) * frames_seen * math.ceil(eval_spec.generated_frames / sampling.chunk)
    train_seconds = (deadline - time.perf_counter() - eval_estimate) / 2
    if train_seconds < 30:
        log(f"--minutes {args.minutes}: evaluation alone needs about {eval_estimate / 60:.1f} min; give more")
        return 2
    log(f"training each model for up to {train_seconds / 60:.1f} min (evaluation estimate {eval_estimate / 60:.1f} min)")

    causal, causal_stats = train(causal_cfg, diffusion_cfg, objective, pool, spec, steps=args.steps, seconds=train_seconds,
                                 log=log)
    bidir, bidir_stats = train(bidir_cfg, diffusion_cfg, objective, pool, spec, steps=causal_stats["steps"], log=log)

    codec = build_codec("identity")
    videos: dict[str, np.ndarray] = {}
    runs = {"causal_cache": (causal, True, 0, 0), "causal_no_cache": (causal, False, 0, 0),
            "causal_cache_seed2": (causal, True, 1, 0), "bidirectional": (bidir, False, 0, 0)}
    if args.sink:  # the same sampling noise as causal_cache: a paired comparison
        runs.update(causal_cache_sink=(causal, True, 0, args.sink), causal_cache_sink_seed2=(causal, True, 1, args.sink))
    for name, (model, use_cache, seed, sink) in runs.items():
        t0 = time.perf_counter()
        run_spec = dataclasses.replace(eval_spec, sampling=dataclasses.replace(sampling, kv_cache=use_cache, sink=sink))
        videos[name] = continue_videos(model, diffusion, codec, truth, run_spec, seed=seed)
        log(f"  {name}: {time.perf_counter() - t0:.0f} s")
    report = evaluate_videos(truth, videos, eval_spec, scenes)
    shown = ("causal_cache", "causal_cache_sink", "bidirectional") if args.sink else ("causal_cache", "bidirectional")
    files = write_outputs(report, truth, {k: videos[k] for k in shown}, args.out)

    figures = {name: _figures(report.to_json(), name) for name in report.methods}
    goals: dict[str, Any] = {}
    for m in (4, 8):
        key = f"{m}x"
        if key in figures["causal_cache"]:
            goals[f"causal_beats_bidirectional_{key}"] = {
                part: _better(figures["causal_cache"][key][part], figures["bidirectional"][key][part])
                for part in ("upto", "chunk")
            }
    if args.sink:  # per multiple, on both sampling seeds: does keeping the first frames help?
        for m in (8, 16):
            if f"{m}x" in figures["causal_cache"]:
                goals[f"sink_beats_rolling_window_{m}x"] = {
                    seed: _better(figures[f"causal_cache_sink{sfx}"][f"{m}x"]["chunk"],
                                  figures[f"causal_cache{sfx}"][f"{m}x"]["chunk"])
                    for seed, sfx in (("seed0", ""), ("seed1", "_seed2"))}
    # cache vs no cache, against the spread of the cached model between two sampling seeds
    last = f"{max(m for m in MULTIPLES if m <= args.multiples)}x"
    agreement = {}
    for k in ("mse", *OBJECT_METRICS):
        a = figures["causal_cache"][last]["upto"].get(k)
        b = figures["causal_no_cache"][last]["upto"].get(k)
        c = figures["causal_cache_seed2"][last]["upto"].get(k)
        if None not in (a, b, c):
            agreement[k] = {"cache_vs_no_cache": round(abs(a - b), 4), "seed_vs_seed": round(abs(a - c), 4),
                            "within_seed_noise": abs(a - b) <= max(abs(a - c), 1e-9) * 2}
    goals["cache_agrees_with_no_cache_within_2x_seed_noise"] = agreement

    result = {
        "benchmark": "longvideo",
        "model": {"flavor": args.flavor, "params": count_params(causal_cfg),
                  "params_bidirectional": count_params(bidir_cfg), **dataclasses.asdict(causal_cfg)},
        "diffusion": {"process": "flow", "prediction": args.prediction, "prompt_noise": args.prompt_noise,
                      "per_frame_noise": args.per_frame_noise,
                      "eta": args.eta, "loss_weighting": args.loss_weighting, "snr_max": args.snr_max},
        "train": {**dataclasses.asdict(spec), "causal": causal_stats, "bidirectional": bidir_stats},
        "eval": {"prompt_frames": sampling.prompt_frames, "clip_len": eval_spec.clip_len,
                 "multiples": eval_spec.multiples, "chunk": sampling.chunk, "window": sampling.window, "sink": args.sink,
                 "steps": sampling.steps, "clips": eval_spec.num_clips, "synthetic_seed": eval_spec.synthetic_seed,
                 "truth_garbage": _round(report.truth.garbage if report.truth is not None else None)},
        "figures": figures,
        "goals": goals,
        "files": {k: str(v) for k, v in files.items()},
        "seconds": round(time.perf_counter() - t_start, 1),
        "host": {"machine": platform.machine(), "threads": torch.get_num_threads()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
