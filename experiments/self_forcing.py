"""Self-Forcing with distribution matching: post-train an export on its own rollouts. Prints one JSON object.

    python -m experiments.self_forcing runs/quality_cpu/export --pool runs/own_context/pool.pt \\
        --out runs/self_forcing --steps 200
    vidgpt-eval runs/self_forcing/export --steps 4 --context-scale 1 ...   # the student samples in 4 steps

Every measurement of issue 22 places the long rollout's decay in the model's reaction to its own frames (exposure
bias), and the losses that keep the true frame as target while the context is the model's own (scheduled sampling:
`experiments.rollout`; error recycling: `experiments.own_context`) make it worse, because the target no longer fits
the context. Self-Forcing (Huang et al. 2025) has no such target: the student generates a clip autoregressively
exactly as it samples (kv-cache, few denoising steps, its own frames as context), and the loss is distribution
matching (DMD, Yin et al. 2024) on the generated clip as a whole:

1. student rollout: from 2 true prompt frames (a training scene, `--pool`), `--frames` frames one at a time with the
   kv-cache and `--denoise-steps` steps of the flow sampler; a random exit step k (one per iteration) ends every
   frame: its x0 estimate at step k is the frame. Only that call carries gradient; the earlier steps and the cache
   writes of finished frames run without (Self-Forcing's gradient truncation), so the graph is one frame deep;
2. the generated frames are noised to one flow time t per clip (t in [t_min, t_max]) and scored, with the clean
   prompt frames before them (`--score-window`: only the last frames of a longer rollout), by the frozen teacher
   (the export; with its context guidance, as it samples) and by the critic ("fake score", a copy of the export
   trained on the student's clips);
3. generator loss: 0.5 ||g - sg(g - (fake - real) / mean|g - real|)||^2, whose gradient in g is DMD's
   (fake - real), normalised per clip;
4. the critic learns the student's clips with the export's own objective (`FramePromptObjective`: per-frame noise,
   prompt frames clean), `--critic-per-step` updates per generator update (two time-scale, as DMD2).
The student's EMA is written as OUT/export (the export's config); sample it with `--steps` = `--denoise-steps`
and context guidance 1, since the teacher's guidance is distilled into it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from experiments.longvideo import optimizer_step
from vidgpt.diffusion import Diffusion, RectifiedFlow
from vidgpt.export import exported_diffusion, exported_sampling, load_exported, save_derived_export
from vidgpt.kv_cache import TemporalKVCache
from vidgpt.model import VidGPT
from vidgpt.objective import FramePromptObjective


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def x0_estimate(diffusion: Diffusion, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """The network's clean estimate from its output `pred` at noisy x_t (B, F, C, H, W) and flow times t (B, F)."""
    if not isinstance(diffusion, RectifiedFlow) or diffusion.prediction not in ("x0", "velocity"):
        raise ValueError("self-forcing needs a rectified-flow export predicting x0 or velocity")
    if diffusion.prediction == "x0":
        return pred
    return x_t - t[:, :, None, None, None].to(x_t.dtype) * pred


@dataclasses.dataclass(frozen=True)
class SelfForcingSpec:
    """How an export is post-trained."""

    steps: int = 200
    """Generator updates."""
    critic_per_step: int = 5
    """Critic updates per generator update (each on a fresh rollout)."""
    batch: int = 8
    frames: int = 6
    """Generated frames per rollout, after 2 prompt frames (2 + 6: the training clip)."""
    min_frames: int = 0
    """> 0: each rollout's length is drawn uniformly from [min_frames, frames] (with `score_window`: windows from
    the prompt's clip to the late frames of long rollouts); 0: always `frames`."""
    denoise_steps: int = 4
    """The student's denoising steps per frame."""
    lr: float = 5e-5
    critic_lr: float = 1e-4
    context_scale: float = 2.0
    """The teacher's context guidance (the export samples with it)."""
    t_min: float = 0.02
    t_max: float = 0.98
    ema_decay: float = 0.99
    window: int = 7
    """The student's kv-cache window in the rollout (the export samples with 7)."""
    score_window: int = 0
    """Frames scored (and learned by the critic): the last `score_window` of [prompt, generated] (0: all). Shorter
    than a long rollout, the teacher judges its late frames as a video of their own (no prompt frames left: all of
    them noised, no context guidance), as LongLive trains on windows of long rollouts."""
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= 1 (got {getattr(self, name)})"
                    for name in ("steps", "critic_per_step", "batch", "frames", "denoise_steps", "window")
                    if getattr(self, name) < 1]
        if not 0 <= self.min_frames <= self.frames:
            problems.append(f"min_frames must be in [0, frames={self.frames}] (got {self.min_frames})")
        if self.score_window < 0:
            problems.append(f"score_window must be >= 0 (got {self.score_window})")
        if not 0 <= self.t_min < self.t_max <= 1:
            problems.append(f"need 0 <= t_min < t_max <= 1 (got {self.t_min}, {self.t_max})")
        if problems:
            raise ValueError("; ".join(problems))


def rollout(student: VidGPT, diffusion: Diffusion, prompt: Tensor, frames: int, *, steps: int, window: int,
            exit_step: int, text: Tensor | None, text_mask: Tensor | None, generator: torch.Generator) -> Tensor:
    """prompt (B, P, C, H, W) -> (B, frames, C, H, W): each frame the student's x0 estimate at denoising step
    `exit_step` of `steps` (flow schedule, the export's sampler for the steps before), from the prompt and its
    own earlier frames in the kv-cache. Only the exit call carries gradient (when grad is enabled)."""
    B, P = prompt.shape[:2]
    cfg = student.cfg
    cache = TemporalKVCache(window, rope_theta=cfg.rope_theta, rope_dims=cfg.rope_dims[0])
    cond = {"text": text, "text_mask": text_mask}
    with torch.no_grad():
        student(prompt, torch.zeros(B, P), cache=cache, write_cache=True, **cond)
    schedule = diffusion.schedule(steps)
    out: list[Tensor] = []
    for f in range(frames):
        x = torch.randn((B, 1, *prompt.shape[2:]), generator=generator)
        for k, (t, t_next) in enumerate(schedule):
            t_model = diffusion.model_time(torch.full((B, 1), t))
            # the step noise is drawn before the exit too, so that the draws follow `generate`'s order
            if k == exit_step:
                # a copy: the cache's buffers are written in place by later frames, which the graph must not see
                pred = student(x, t_model, cache=copy.deepcopy(cache), **cond)
                if diffusion.needs_step_noise():
                    torch.randn(x.shape, generator=generator)
                out.append(x0_estimate(diffusion, pred, x, torch.full((B, 1), t)))
                break
            with torch.no_grad():
                pred = student(x, t_model, cache=cache, **cond)
                noise = torch.randn(x.shape, generator=generator) if diffusion.needs_step_noise() else None
                x = diffusion.step(pred, x, t, t_next, noise)
        if f + 1 < frames:
            with torch.no_grad():
                student(out[-1].detach(), torch.zeros(B, 1), cache=cache, write_cache=True, **cond)
    return torch.cat(out, dim=1)


@torch.no_grad()
def scores(teacher: VidGPT, critic: VidGPT, diffusion: Diffusion, prompt: Tensor, gen: Tensor, t: Tensor, noise: Tensor,
           *, context_scale: float, text: Tensor | None, text_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The teacher's (with context guidance) and the critic's x0 estimates of the generated frames gen (B, F, ...)
    noised to flow times t (B,) with `noise`, the clean prompt (B, P, ...) before them -> two (B, F, C, H, W)."""
    B, P = prompt.shape[:2]
    n = gen.shape[1]
    t_gen = t[:, None].expand(B, n)
    x_t = diffusion.add_noise(gen, noise, t_gen)
    inp = torch.cat([prompt, x_t], dim=1)
    t_model = diffusion.model_time(torch.cat([torch.zeros(B, P), t_gen], dim=1))
    cond = {"text": text, "text_mask": text_mask}
    real = x0_estimate(diffusion, teacher(inp, t_model, **cond)[:, P:], x_t, t_gen)
    if context_scale != 1.0 and P:  # as `generate` guides: the frames alone, at their positions
        free = x0_estimate(diffusion, teacher(x_t, t_model[:, P:], frame_offset=P, **cond), x_t, t_gen)
        real = free + context_scale * (real - free)
    fake = x0_estimate(diffusion, critic(inp, t_model, **cond)[:, P:], x_t, t_gen)
    return real, fake


def scored_part(prompt: Tensor, gen: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Of the video [prompt (B, P, ...), gen (B, F, ...)], its last `window` frames (0: all), split into the prompt
    frames among them and the generated ones."""
    P, n = prompt.shape[1], gen.shape[1]
    start = 0 if window <= 0 else max(0, P + n - window)
    return prompt[:, min(start, P):], gen[:, max(0, start - P):]


def dmd_loss(gen: Tensor, real: Tensor, fake: Tensor) -> Tensor:
    """DMD's generator loss: its gradient in gen is (fake - real) / mean|gen - real| per clip (times 1 / numel)."""
    norm = (gen.detach() - real).abs().mean(dim=tuple(range(1, gen.ndim)), keepdim=True).clamp_min(1e-6)
    target = (gen - (fake - real) / norm).detach()
    return 0.5 * F.mse_loss(gen, target)


def self_force(student: VidGPT, diffusion: Diffusion, objective: FramePromptObjective, pool: dict[str, Tensor],
               spec: SelfForcingSpec, prompt_frames: int = 2,
               on_step: Callable[[int, VidGPT], None] | None = None) -> tuple[VidGPT, dict[str, object]]:
    """The module docstring's post-training of `student` (changed in place): returns its EMA copy and stats.
    on_step(generator updates done, EMA) is called after every generator update."""
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    critic = copy.deepcopy(student).train()
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    student.train()
    opt_g = torch.optim.AdamW(student.parameters(), lr=spec.lr, betas=(0.0, 0.999), weight_decay=0.0)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=spec.critic_lr, betas=(0.0, 0.999), weight_decay=0.0)
    gen_rng = torch.Generator().manual_seed(spec.seed)
    data_rng = torch.Generator().manual_seed(spec.seed + 1)
    true = pool["true"]
    n, frames = true.shape[:2]
    g_losses: list[float] = []
    c_losses: list[float] = []
    t0 = time.perf_counter()
    for it in range(spec.steps * spec.critic_per_step):
        idx = torch.randint(n, (spec.batch,), generator=data_rng)
        start = torch.randint(frames - prompt_frames + 1, (spec.batch,), generator=data_rng)
        prompt = torch.stack([true[i, s : s + prompt_frames] for i, s in zip(idx.tolist(), start.tolist())])
        text, text_mask = (pool[k][idx] if k in pool else None for k in ("text", "text_mask"))
        exit_step = int(torch.randint(spec.denoise_steps, (), generator=gen_rng))
        update_g = it % spec.critic_per_step == 0
        g_step = it // spec.critic_per_step + 1  # generator updates done after this iteration
        n_frames = spec.frames
        if spec.min_frames:
            n_frames = int(torch.randint(spec.min_frames, spec.frames + 1, (), generator=gen_rng))
        with torch.set_grad_enabled(update_g):
            gen = rollout(student, diffusion, prompt, n_frames, steps=spec.denoise_steps, window=spec.window,
                          exit_step=exit_step, text=text, text_mask=text_mask, generator=gen_rng)
        prompt_part, gen = scored_part(prompt, gen, spec.score_window)
        if update_g:
            t = spec.t_min + (spec.t_max - spec.t_min) * torch.rand(spec.batch, generator=gen_rng)
            noise = torch.randn(gen.shape, generator=gen_rng)
            real, fake = scores(teacher, critic, diffusion, prompt_part, gen.detach(), t, noise,
                                context_scale=spec.context_scale, text=text, text_mask=text_mask)
            loss = dmd_loss(gen, real, fake)
            optimizer_step(student, ema, opt_g, loss, spec.ema_decay)
            g_losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(g_step, ema)
        clip = torch.cat([prompt_part, gen.detach()], dim=1)
        c_loss = objective.loss_at(critic, diffusion, clip, prompt_part.shape[1], generator=gen_rng, text=text,
                                   text_mask=text_mask)
        optimizer_step(critic, None, opt_c, c_loss)
        c_losses.append(float(c_loss.detach()))
        if update_g and g_step % 10 == 0:
            log(f"  step {g_step}/{spec.steps}: dmd {sum(g_losses[-10:]) / 10:.5f} critic "
                f"{sum(c_losses[-50:]) / len(c_losses[-50:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    return ema, {"seconds": round(time.perf_counter() - t0, 1), "dmd_last_10": g_losses[-10:],
                 "critic_loss_last_50": sum(c_losses[-50:]) / max(1, len(c_losses[-50:]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.self_forcing", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path, help="the export to post-train (teacher, critic and student start from it)")
    ap.add_argument("--pool", type=Path, required=True,
                    help="training scenes: a torch file {'true': (N, F, C, H, W), 'text', 'text_mask'} "
                         "(experiments.own_context pool writes one)")
    ap.add_argument("--out", type=Path, required=True)
    defaults = SelfForcingSpec()
    for f in dataclasses.fields(SelfForcingSpec):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                        default=getattr(defaults, f.name), help=f"(default: {getattr(defaults, f.name)})")
    ap.add_argument("--save-every", type=int, default=0, help="also write the EMA as OUT/step_N/export every N "
                    "generator updates (default: 0, only at the end)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        spec = SelfForcingSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SelfForcingSpec)})
    except ValueError as exc:
        ap.error(str(exc))
    student, info = load_exported(args.export, "cpu")
    diffusion = exported_diffusion(info)
    prompt_frames = exported_sampling(info).prompt_frames
    pool = {k: v for k, v in torch.load(args.pool).items() if k in ("true", "text", "text_mask")}
    if "true" not in pool or pool["true"].ndim != 5 or pool["true"].shape[1] < prompt_frames:
        raise SystemExit(f"{args.pool}: needs 'true' (N, F, C, H, W) training videos of >= {prompt_frames} frames "
                         "(experiments.own_context pool writes one)")

    def on_step(step: int, model: VidGPT) -> None:
        if args.save_every and step % args.save_every == 0 and step < spec.steps:
            save_derived_export(model, args.export, args.out / f"step_{step}" / "export")

    ema, stats = self_force(student, diffusion, FramePromptObjective(**info["objective"]), pool, spec, prompt_frames,
                            on_step)
    out = args.out / "export"
    save_derived_export(ema, args.export, out)
    print(json.dumps({**dataclasses.asdict(spec), **stats, "export": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
