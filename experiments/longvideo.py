"""Long-video quality: the causal ViD-GPT model against the bidirectional baseline; prints one JSON object.

    python -m experiments.longvideo --minutes 20 --out runs/bench_longvideo
    python -m experiments.longvideo --train-minutes 10     # a point of a compute curve: 10 min per model

Both models are the one `VidGPT` with `temporal` switched, so they have the same parameters (count and
initial values). They are trained here, one process, alike: the same synthetic clips in the same
order, the same noise, timesteps and prompt lengths, the same number of optimizer steps at the same
learning rate each step (the causal model trains for its budget, half of what --minutes leaves after the
pool and the evaluation estimate or --train-minutes, its cosine's progress the share of the budget used;
the baseline then replays its per-step learning rates, so exactly as many steps). Each then
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
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.cli_types import finite_float
from data_pipeline.codecs import build_codec
from data_pipeline.synthetic import SyntheticTask, synthetic_scene
from vidgpt.cli import add_dataclass_options, dataclass_from_options
from vidgpt.diffusion import Diffusion, DiffusionConfig, build_diffusion
from vidgpt.evaluation import EvalSpec, continue_videos, evaluate_videos, mp4_round_trip, synthetic_truth, write_outputs
from vidgpt.model import FLAVORS, ModelConfig, VidGPT, count_params
from vidgpt.objective import FramePromptObjective
from vidgpt.sampling import SamplingSpec, generate_as

MULTIPLES = (1, 2, 4, 8, 16)
OBJECT_METRICS = ("presence_f1", "garbage", "centroid_error")
MIN_TRAIN_SECONDS = 30.0  # per model: --minutes refuses a budget that leaves less (a run that measures nothing)


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


def lr_factor(step: int, progress: float, warmup: int) -> float:
    """The lr multiplier at `step`: linear warm-up over `warmup` steps times a cosine from 1 to 0.1 over
    progress in [0, 1]."""
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def schedule_progress(step: int, steps: int | None, elapsed: float, seconds: float) -> float:
    """How far training is, in [0, 1]: the larger of the shares of the step cap and of the time budget used
    (a bound not given counts 0), so the cosine ends where training ends, whichever bound stops it."""
    by_steps = step / max(1, steps) if steps is not None else 0.0
    by_time = elapsed / seconds if math.isfinite(seconds) else 0.0
    return min(1.0, max(by_steps, by_time))


def lr_summary(factors: Sequence[float]) -> dict[str, float | None]:
    """First, last and mean lr multiplier of a run (None without steps)."""
    if not factors:
        return {"first": None, "last": None, "mean": None}
    return {"first": round(factors[0], 4), "last": round(factors[-1], 4), "mean": round(float(np.mean(factors)), 4)}


def optimizer_step(model: VidGPT, ema: VidGPT | None, opt: torch.optim.Optimizer, loss: torch.Tensor,
                   ema_decay: float = 0.0) -> None:
    """One AdamW step on `loss` (gradients clipped to norm 1), then the EMA copy (if any) moved toward the weights."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if ema is not None:
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - ema_decay)


def train(
    cfg: ModelConfig, diffusion_cfg: DiffusionConfig, objective: FramePromptObjective, pool: torch.Tensor,
    spec: TrainSpec, *,
    steps: int | None = None, seconds: float = math.inf, lr_factors: Sequence[float] | None = None,
    log: Any = None, clock: Callable[[], float] = time.perf_counter,
    on_step: Callable[[int, VidGPT], None] | None = None,
) -> tuple[VidGPT, dict[str, Any]]:
    """Train one model until `steps` optimizer steps or `seconds` pass (`schedule_progress` drives the
    cosine), or, given lr_factors (another run's record), for exactly len(lr_factors) steps at those lr
    multipliers. Returns its EMA copy and {steps, seconds, loss_last_100, lr_factors: the multiplier of each
    step}. Everything random is seeded by spec.seed, so two calls see the same data. on_step(steps done, EMA
    model) is called after every optimizer step (to measure the model during training; its time counts)."""
    if lr_factors is not None:
        if steps is not None or math.isfinite(seconds):
            raise ValueError("lr_factors fixes the steps: give neither steps nor seconds with it")
        steps = len(lr_factors)
    elif steps is None and not math.isfinite(seconds):
        raise ValueError("give steps, seconds or lr_factors: training would never end")
    torch.manual_seed(spec.seed)
    model = VidGPT(cfg).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    diffusion = build_diffusion(diffusion_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    data = clips(pool, spec)
    losses: list[float] = []
    factors: list[float] = []
    start = clock()
    step = 0
    while True:
        elapsed = clock() - start
        if (steps is not None and step >= steps) or elapsed >= seconds:
            break
        if lr_factors is not None:
            factor = float(lr_factors[step])
        else:
            factor = lr_factor(step, schedule_progress(step, steps, elapsed, seconds), spec.warmup)
        factors.append(factor)
        for group in opt.param_groups:
            group["lr"] = spec.lr * factor
        x0 = next(data)
        prompt_len = objective.draw_prompt_lengths(spec.clip_len, x0.shape[0], gen)
        loss = objective.loss_at(model, diffusion, x0, prompt_len, generator=gen)
        optimizer_step(model, ema, opt, loss, spec.ema_decay)
        losses.append(float(loss.detach()))
        step += 1
        if on_step is not None:
            on_step(step, ema)
        if log is not None and step % 100 == 0:
            log(f"  {cfg.temporal}: step {step} loss {np.mean(losses[-100:]):.4f} lr x{factor:.3f} "
                f"({clock() - start:.0f} s)")
    return ema, {"steps": step, "seconds": round(clock() - start, 1),
                 "loss_last_100": float(np.mean(losses[-100:])) if losses else None, "lr_factors": factors}


def evaluation_runs(sink: int, no_cache: bool = True) -> dict[str, tuple[str, bool, int, int]]:
    """The generations the evaluation runs: name -> (arm, kv-cache, sampling seed, sink); no_cache: also the
    causal model without the cache (the cache-agreement check; as slow as the baseline)."""
    runs = {"causal_cache": ("causal", True, 0, 0), "causal_no_cache": ("causal", False, 0, 0),
            "causal_cache_seed2": ("causal", True, 1, 0), "bidirectional": ("bidirectional", False, 0, 0)}
    if not no_cache:
        del runs["causal_no_cache"]
    if sink:  # the same sampling noise as causal_cache: a paired comparison
        runs.update(causal_cache_sink=("causal", True, 0, sink), causal_cache_sink_seed2=("causal", True, 1, sink))
    return runs


def run_specs(eval_spec: EvalSpec, runs: Mapping[str, tuple[str, bool, int, int]]) -> dict[str, EvalSpec]:
    """Each run's spec: eval_spec's sampling (steps, guidance, window, ...) with the run's kv-cache and sink."""
    return {name: dataclasses.replace(eval_spec, sampling=dataclasses.replace(eval_spec.sampling, kv_cache=cache,
                                                                              sink=sink))
            for name, (_, cache, _, sink) in runs.items()}


def chunk_seconds(model: VidGPT, diffusion: Diffusion, sampling: SamplingSpec, clips: int, size: int) -> float:
    """Seconds `generate_as(sampling, ...)` spends on one chunk of `clips` clips with a full window, with or
    without the kv-cache as sampling says: three chunks after a window-long prompt, timed from the end of the
    first (a warm-up) to the end of the second (its cache write included)."""
    if sampling.chunk is None or sampling.window is None:
        raise ValueError("chunk_seconds needs a spec with chunk and window (SamplingSpec.for_clip_len)")
    ends: list[float] = []
    prompt = torch.zeros(clips, max(sampling.window, sampling.prompt_frames), model.cfg.in_channels, size, size)
    generate_as(sampling, model, diffusion, prompt, 3 * sampling.chunk, generator=torch.Generator().manual_seed(0),
                progress=lambda done, total: ends.append(time.perf_counter()))
    return ends[1] - ends[0]


def evaluation_seconds(per_chunk_uncached: float, per_chunk_cached: float, *, uncached_runs: int, cached_runs: int,
                       chunks: int) -> float:
    """Seconds the evaluation's generations take: each run generates `chunks` chunks, at the cost of a chunk
    with a full window (an upper bound for the first ones), uncached or cached."""
    return chunks * (uncached_runs * per_chunk_uncached + cached_runs * per_chunk_cached)


def training_seconds(args: argparse.Namespace, seconds_left: float, eval_estimate: float) -> float:
    """Training time of each model: --train-minutes, else half of what the --minutes budget leaves after
    the evaluation estimate (seconds_left: the budget's rest, the pool and the probes already spent)."""
    if args.train_minutes is not None:
        return args.train_minutes * 60
    return (seconds_left - eval_estimate) / 2


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


def arm_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """A run's stats for the printed JSON: the per-step lr multipliers summarised."""
    return {**{k: v for k, v in stats.items() if k != "lr_factors"}, "lr": lr_summary(stats["lr_factors"])}


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every flag's value (defaults resolved) as JSON values."""
    out = {}
    for k, v in vars(args).items():
        if isinstance(v, Path):
            v = str(v)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = dataclasses.asdict(v)
        out[k] = v
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.longvideo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=finite_float, default=None,
                        help="whole budget, the training pool's rendering included; training gets what the "
                             "evaluation estimate leaves, half per model, and a budget that leaves under "
                             f"{MIN_TRAIN_SECONDS:.0f} s per model is refused (default: 20)")
    budget.add_argument("--train-minutes", type=finite_float, default=None,
                        help="train the causal model for exactly this long (the baseline then for as many steps "
                             "at the same learning rates) instead of deriving it from --minutes; the run takes "
                             "the pool, twice this and the evaluation: one point of a compute curve")
    ap.add_argument("--steps", type=int, default=None,
                    help="most optimizer steps per model; the cosine ends at whichever of the cap and the time "
                         "budget comes first (default: no cap)")
    ap.add_argument("--flavor", choices=sorted(FLAVORS), default="cpu", help="model size (default: cpu)")
    ap.add_argument("--clip-len", type=int, default=8, help="training clip length L (default: 8)")
    ap.add_argument("--batch", type=int, default=8,
                    help="clips per optimizer step (default: 8, the demo's: configs/demo_cpu.toml's data.batch_size "
                         "4 per rank on its 2 ranks)")
    ap.add_argument("--lr", type=finite_float, default=2e-3,
                    help="peak learning rate, warm-up 50 steps and cosine to 10%% (default: 2e-3, the demo's "
                         "optimizer.lr in configs/demo_cpu.toml)")
    ap.add_argument("--prompt-min-len", type=int, default=1,
                    help="shortest training prompt; 0 also trains clips without earlier frames, which "
                         "--context-guidance needs (default: 1; the demo uses 0)")
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
    ap.add_argument("--context-guidance", type=finite_float, default=1.0,
                    help="guidance on the earlier frames, the same for both models' sampling (SamplingSpec."
                         "context_scale; needs --prompt-min-len 0; default: 1, none; the demo uses 2)")
    ap.add_argument("--clips", type=int, default=16, help="held-out clips (default: 16)")
    ap.add_argument("--size", type=int, default=32, help="frame height and width (default: 32)")
    ap.add_argument("--pool", type=int, default=1024, help="synthetic training videos (default: 1024)")
    add_dataclass_options(ap, SyntheticTask)  # the scenes' speed and drawing, for training and truth
    ap.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    ap.add_argument("--skip-no-cache", action="store_true",
                    help="do not also sample the causal model without the kv-cache (the cache-agreement check, which "
                         "costs as much as the baseline's generation): for compute curves")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: 1 on machines with <= 2 cores, where 2 threads on 2 shared "
                         "cores ran 5x slower; torch's default elsewhere)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_longvideo"), help="output directory")
    args = ap.parse_args(argv)
    for name in ("minutes", "train_minutes", "steps", "threads", "clip_len", "batch", "lr", "multiples", "prompt_frames",
                 "sample_steps", "clips", "size", "pool", "context_guidance"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.minutes is None and args.train_minutes is None:
        args.minutes = 20.0
    if args.threads is None:
        args.threads = 1 if (os.cpu_count() or 1) <= 2 else torch.get_num_threads()
    if not 0 <= args.prompt_min_len < args.clip_len:
        ap.error(f"--prompt-min-len must be in [0, --clip-len {args.clip_len}), got {args.prompt_min_len}")
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
    objective = FramePromptObjective(prompt_rule="uniform", prompt_min_len=args.prompt_min_len,
                                     prompt_noise=[0.0, args.prompt_noise],
                                     loss_weighting=args.loss_weighting, snr_max=args.snr_max,
                                     per_frame_noise=args.per_frame_noise)
    objective.check_process(build_diffusion(diffusion))
    if args.context_guidance != 1.0 and not objective.trains_without_prompt:
        raise ValueError(f"--context-guidance {args.context_guidance:g} needs models trained with 0-frame prompts: "
                         "add --prompt-min-len 0")
    return diffusion, objective


def evaluation_spec(args: argparse.Namespace) -> EvalSpec:
    """How both models are sampled and measured (the held-out scenes use the training task)."""
    return EvalSpec(sampling=SamplingSpec(prompt_frames=args.prompt_frames, chunk=args.chunk, window=args.window,
                                          steps=args.sample_steps, context_scale=args.context_guidance,
                                          precision="fp32"),
                    clip_len=args.clip_len, multiples=args.multiples, num_clips=args.clips, size=args.size,
                    task=args.task)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    spec = TrainSpec(clip_len=args.clip_len, batch=args.batch, lr=args.lr, seed=args.seed, pool=args.pool,
                     size=args.size, task=args.task)
    causal_cfg = dataclasses.replace(FLAVORS[args.flavor], in_channels=3, text_dim=0)
    bidir_cfg = dataclasses.replace(causal_cfg, temporal="bidirectional")
    diffusion_cfg, objective = recipe_config(args)
    diffusion = build_diffusion(diffusion_cfg)
    eval_spec = evaluation_spec(args)
    sampling = eval_spec.sampling
    runs = evaluation_runs(args.sink, no_cache=not args.skip_no_cache)
    specs = run_specs(eval_spec, runs)
    log(f"rendering {spec.pool} training videos and {args.clips} held-out scenes ({args.threads} torch threads)")
    pool = training_videos(spec)
    pool_seconds = time.perf_counter() - t_start
    truth, scenes = synthetic_truth(eval_spec)

    # evaluation cost: one full-window chunk timed cached and uncached (untrained weights cost the same),
    # times the chunks of each generation the evaluation runs (the baseline costs what causal_no_cache does)
    probe = VidGPT(causal_cfg).eval()
    per_chunk = {cache: chunk_seconds(probe, diffusion, dataclasses.replace(sampling, kv_cache=cache), args.clips,
                                      spec.size) for cache in (False, True)}
    cached_runs = sum(cache for _, cache, _, _ in runs.values())
    n_chunks = math.ceil(eval_spec.generated_frames / sampling.chunk)
    eval_estimate = evaluation_seconds(per_chunk[False], per_chunk[True], uncached_runs=len(runs) - cached_runs,
                                       cached_runs=cached_runs, chunks=n_chunks)
    spent = time.perf_counter() - t_start
    train_seconds = training_seconds(args, math.inf if args.minutes is None else args.minutes * 60 - spent,
                                     eval_estimate)
    estimate = (f"evaluation about {eval_estimate / 60:.1f} min ({len(runs) - cached_runs} uncached runs x {n_chunks} "
                f"chunks x {per_chunk[False]:.2f} s + {cached_runs} cached x {per_chunk[True]:.2f} s)")
    if args.train_minutes is None and train_seconds < MIN_TRAIN_SECONDS:
        log(f"--minutes {args.minutes:g}: the pool took {pool_seconds / 60:.1f} min and the {estimate}, leaving "
            f"{max(0.0, train_seconds) / 60:.1f} min per model (< {MIN_TRAIN_SECONDS:.0f} s); give more, or --train-minutes")
        return 2
    log(f"pool {spec.pool} videos in {pool_seconds:.0f} s; {estimate}; training each model for "
        f"{'' if args.train_minutes is not None else 'up to '}{train_seconds / 60:.1f} min")

    causal, causal_stats = train(causal_cfg, diffusion_cfg, objective, pool, spec, steps=args.steps, seconds=train_seconds,
                                 log=log)
    bidir, bidir_stats = train(bidir_cfg, diffusion_cfg, objective, pool, spec, lr_factors=causal_stats["lr_factors"],
                               log=log)
    same_lr = causal_stats["lr_factors"] == bidir_stats["lr_factors"]

    codec = build_codec("identity")
    models = {"causal": causal, "bidirectional": bidir}
    videos: dict[str, np.ndarray] = {}
    t_eval = time.perf_counter()
    for name, (arm, _, seed, _) in runs.items():
        t0 = time.perf_counter()
        videos[name] = continue_videos(models[arm], diffusion, codec, truth, specs[name], seed=seed)
        log(f"  {name}: {time.perf_counter() - t0:.0f} s")
    eval_seconds = time.perf_counter() - t_eval
    report = evaluate_videos(truth, videos, eval_spec, scenes)
    shown = ("causal_cache", "causal_cache_sink", "bidirectional") if args.sink else ("causal_cache", "bidirectional")
    files = write_outputs(report, truth, {k: videos[k] for k in shown}, args.out)
    measure_seconds = time.perf_counter() - t_eval - eval_seconds

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
    for k in ("mse", *OBJECT_METRICS) if "causal_no_cache" in figures else ():
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
        "settings": _settings(args),
        "train": {**dataclasses.asdict(spec), "seconds_per_model": round(train_seconds, 1),
                  "causal": arm_stats(causal_stats), "bidirectional": arm_stats(bidir_stats), "same_lr_each_step": same_lr},
        "eval": {"prompt_frames": sampling.prompt_frames, "clip_len": eval_spec.clip_len,
                 "multiples": eval_spec.multiples, "chunk": sampling.chunk, "window": sampling.window, "sink": args.sink,
                 "steps": sampling.steps, "context_scale": sampling.context_scale, "clips": eval_spec.num_clips,
                 "synthetic_seed": eval_spec.synthetic_seed,
                 "truth_garbage": _round(report.truth.garbage if report.truth is not None else None)},
        "timing": {"pool_seconds": round(pool_seconds, 1), "eval_estimate_seconds": round(eval_estimate, 1),
                   "eval_seconds": round(eval_seconds, 1), "measure_seconds": round(measure_seconds, 1),
                   "chunk_seconds_uncached": round(per_chunk[False], 4),
                   "chunk_seconds_cached": round(per_chunk[True], 4)},
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
