"""Error recycling: fine-tune an export on its own one-step samples as context. Prints one JSON object.

    python -m experiments.own_context pool runs/quality_cpu/export --out runs/own_context      # the samples
    python -m experiments.own_context train runs/quality_cpu/export --out runs/own_context --arm own --steps 800
    python -m experiments.own_context train runs/quality_cpu/export --out runs/own_context --arm plain --steps 800
    vidgpt-eval runs/own_context/own/export ...   # each arm's export, as the quality run is evaluated

`experiments.area_bias` shows that the quality run's model keeps shape areas when each frame is sampled from
true frames (area ratio ~1.02 per frame) and loses them over its own rollout (0.79 after 24 frames): the drift
is exposure bias, the network's reaction to its own frames, not a bias of one sampled frame. Training on its own
few-step rollouts (`experiments.rollout`) made things worse: those frames drift away from the truth, so the true
continuation is not what they imply, and the network learns to hedge. This variant keeps the context consistent
with the target: every context frame is the model's own sample *from the true frames before it* (teacher-forced,
with the evaluation's sampler), so it carries the model's artifacts (soft edges, small shifts, colour blends) and
not an accumulated drift. Fine-tuning on it teaches the network to read its own frames as the truth they stand for
(as Stable Video Infinity's error-recycling fine-tuning does with injected errors).

`pool`: N training videos (the quality run's scenes, seed 0) of F frames after the mp4 round trip, their captions
embedded with the training dataset's T5, and for every frame f >= 1 the export's sample of frame f from the true
frames [f - window, f) (`--sample-steps` steps, the export's context guidance); saved to OUT/pool.pt.
`train`: the export's weights fine-tuned `--steps` steps at a constant lr (AdamW, no weight decay, the
objective of its config: per-frame noise, snr_clamp, prompt noise, text dropout), EMA from the export's weights.
Arm `own`: with probability `--prob` a batch's prompt frames are replaced by their own samples
(`FramePromptObjective.loss_at(context=...)`), with `--true-recent K` only the older ones (the K most recent stay
true, written as OUT/own_recentK); arm `plain`: never. Both arms draw the same clips, prompt
lengths, noise and timesteps (the coin has its own generator). The EMA is written as OUT/ARM/export.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data_pipeline.synthetic import synthetic_scene
from experiments.longvideo import optimizer_step
from vidgpt.diffusion import Diffusion
from vidgpt.evaluation import mp4_round_trip, pad_text
from vidgpt.export import exported_diffusion, exported_sampling, load_exported, save_derived_export
from vidgpt.latent_space import codec_for_export, text_encoder_for, training_index
from vidgpt.model import VidGPT
from vidgpt.objective import FramePromptObjective
from vidgpt.sampling import SamplingSpec, generate_as

ARMS = ("own", "plain")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@torch.no_grad()
def own_samples(model: VidGPT, diffusion: Diffusion, sampling: SamplingSpec, true: torch.Tensor, *,
                text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None, batch: int = 64,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """true (N, F, C, H, W) -> the same with every frame f >= 1 replaced by the model's sample of it from the true
    frames [f - window, f) (`generate_as` with `sampling`, one frame), clamped to [-1, 1]; frame 0 stays true."""
    window = sampling.window
    assert window is not None, "sampling.for_clip_len first"
    own = true.clone()
    t0 = time.perf_counter()
    for f in range(1, true.shape[1]):
        for b in range(0, true.shape[0], batch):
            rows = slice(b, b + batch)
            made = generate_as(sampling, model, diffusion, true[rows, max(0, f - window) : f], 1, generator=generator,
                               text=None if text is None else text[rows],
                               text_mask=None if text_mask is None else text_mask[rows])
            own[rows, f] = made[:, -1].clamp(-1, 1)
        log(f"  frame {f}/{true.shape[1] - 1} sampled ({time.perf_counter() - t0:.0f} s)")
    return own


def make_pool(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """{'true': (N, F, C, h, w) latents (the export's codec) of the training scenes, 'own': `own_samples` of them, and
    'text' (N, Lt, D), 'text_mask' (N, Lt) when the model takes captions}."""
    model, info = load_exported(args.export, "cpu")
    index = training_index(info)
    if not index or "synthetic" not in index:
        raise SystemExit(f"{args.export}: its training dataset is not a synthetic one readable here")
    task = index["synthetic"]
    clip_len = info["data"]["num_frames"]
    sampling = dataclasses.replace(exported_sampling(info), steps=args.sample_steps).for_clip_len(clip_len)
    scenes = [synthetic_scene(i, size=task["size"], seed=task["seed"], speed=task["speed"]) for i in range(args.videos)]
    frames = np.stack([mp4_round_trip(s.render(args.frames, task["supersample"]), task["fps"]) for s in scenes])
    codec = codec_for_export(info, model.cfg)
    true = torch.stack([torch.from_numpy(codec.encode(v)) for v in frames])  # (N, F, C, h, w)
    pool = {"true": true}
    encoder = text_encoder_for(index, model.cfg, "cpu")
    if encoder is not None:
        pool["text"], pool["text_mask"] = pad_text(encoder.encode([s.caption() for s in scenes]), model.cfg.text_len)
    pool["own"] = own_samples(model, exported_diffusion(info), sampling, true, text=pool.get("text"),
                              text_mask=pool.get("text_mask"), batch=args.batch,
                              generator=torch.Generator().manual_seed(args.seed))
    return pool


@dataclasses.dataclass(frozen=True)
class FineTune:
    """How an export is fine-tuned."""

    steps: int = 800
    lr: float = 2e-4
    """Constant AdamW lr, no weight decay."""
    prob: float = 0.5
    """Share of the batches whose prompt frames are the model's own samples (0: the plain arm)."""
    true_recent: int = 0
    """In those batches the K most recent prompt frames stay true: own samples only in the older ones."""
    batch: int = 8
    ema_decay: float = 0.995
    seed: int = 0


def own_context(own: torch.Tensor, true: torch.Tensor, prompt_len: torch.Tensor, true_recent: int) -> torch.Tensor:
    """What the network sees in place of the prompt frames: own (B, L, C, H, W) samples, but the true frames from
    prompt frame prompt_len[b] - true_recent on (prompt_len: (B,) int)."""
    context = own.clone()
    if true_recent:
        for b, p in enumerate(prompt_len.tolist()):
            lo = max(0, p - true_recent)
            context[b, lo:] = true[b, lo:]
    return context


def fine_tune(model: VidGPT, diffusion: Diffusion, objective: FramePromptObjective, clip_len: int,
              pool: dict[str, torch.Tensor], spec: FineTune) -> tuple[VidGPT, dict[str, object]]:
    """The module docstring's `train` on `model` (changed in place): returns its EMA copy (started from the
    model's weights) and {own_batches, seconds, loss_last_100}."""
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(spec.seed + 1)  # loss noise, times, prompt lengths: paired across arms
    data_gen = torch.Generator().manual_seed(spec.seed)
    coin_gen = torch.Generator().manual_seed(spec.seed + 2)
    true, own = pool["true"], pool["own"]
    n, frames = true.shape[:2]
    losses, owned = [], 0
    t0 = time.perf_counter()
    for step in range(spec.steps):
        idx = torch.randint(n, (spec.batch,), generator=data_gen).tolist()
        start = torch.randint(frames - clip_len + 1, (spec.batch,), generator=data_gen).tolist()
        x0 = torch.stack([true[i, s : s + clip_len] for i, s in zip(idx, start)])  # (B, L, C, H, W)
        use_own = float(torch.rand((), generator=coin_gen)) < spec.prob
        owned += use_own
        prompt_len = objective.draw_prompt_lengths(clip_len, spec.batch, gen)
        context = None
        if use_own:
            own_clips = torch.stack([own[i, s : s + clip_len] for i, s in zip(idx, start)])
            context = own_context(own_clips, x0, prompt_len, spec.true_recent)
        text, text_mask = (pool[k][idx] if k in pool else None for k in ("text", "text_mask"))
        loss = objective.loss_at(model, diffusion, x0, prompt_len, generator=gen, text=text, text_mask=text_mask,
                                 context=context)
        optimizer_step(model, ema, opt, loss, spec.ema_decay)
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            log(f"  prob {spec.prob}: step {step + 1} loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    return ema, {"own_batches": owned, "seconds": round(time.perf_counter() - t0, 1),
                 "loss_last_100": float(np.mean(losses[-100:])) if losses else None}


def train(args: argparse.Namespace, pool: dict[str, torch.Tensor]) -> dict[str, object]:
    model, info = load_exported(args.export, "cpu")
    spec = FineTune(steps=args.steps, lr=args.lr, prob=args.prob if args.arm == "own" else 0.0, batch=args.batch,
                    ema_decay=args.ema_decay, seed=args.seed, true_recent=args.true_recent)
    ema, stats = fine_tune(model, exported_diffusion(info), FramePromptObjective(**info["objective"]),
                           info["data"]["num_frames"], pool, spec)
    out = args.out / (args.arm if not args.true_recent else f"{args.arm}_recent{args.true_recent}") / "export"
    save_derived_export(ema, args.export, out)
    return {"arm": args.arm, **dataclasses.asdict(spec), **stats, "export": str(out)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.own_context", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("pool", "train"))
    ap.add_argument("export", type=Path, help="the export to sample from and fine-tune")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--videos", type=int, default=512, help="pool: training videos (default: 512)")
    ap.add_argument("--frames", type=int, default=16, help="pool: frames per video (default: 16)")
    ap.add_argument("--sample-steps", type=int, default=10, help="pool: denoising steps per sample (default: 10)")
    ap.add_argument("--arm", choices=ARMS, default="own")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=2e-4, help="constant lr (default: 2e-4, the quality run's last)")
    ap.add_argument("--prob", type=float, default=0.5, help="own: share of batches on own samples (default: 0.5)")
    ap.add_argument("--true-recent", type=int, default=0,
                    help="own: keep the K most recent prompt frames true, own samples only in older ones (default: 0)")
    ap.add_argument("--batch", type=int, default=8, help="clips per step; pool: videos per sampling call")
    ap.add_argument("--ema-decay", type=float, default=0.995)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.true_recent < 0:
        ap.error(f"--true-recent must be >= 0 frames, got {args.true_recent}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "pool":
        t0 = time.perf_counter()
        pool = make_pool(args)
        torch.save(pool, args.out / "pool.pt")
        diff = (pool["own"][:, 1:] - pool["true"][:, 1:]).pow(2).mean().item()
        print(json.dumps({"pool": str(args.out / "pool.pt"), "videos": args.videos, "frames": args.frames,
                          "sample_steps": args.sample_steps, "own_vs_true_mse": diff,
                          "seconds": round(time.perf_counter() - t0, 1)}))
        return 0
    pool = torch.load(args.out / "pool.pt")
    print(json.dumps(train(args, pool)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
