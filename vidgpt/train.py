"""Train ViD-GPT with DeepSpeed ZeRO-3 on latent shards; resumes exactly from sharded checkpoints.

    python -m vidgpt.train --config configs/demo_cpu.toml [--section.key=value ...] [--resume auto|PATH]
    torchrun --nproc_per_node 8 -m vidgpt.train --config configs/xl.toml --resume auto
    srun python -m vidgpt.train --config ...          # one task per GPU; SLURM variables give the ranks

CPU: gloo and fp32 (DS_ACCELERATOR=cpu is set when no GPU is visible); GPU: NCCL and bf16.
Exit status: 0 finished; 75 stopped on SIGUSR1/SIGTERM after saving a checkpoint (requeue and run
again with --resume auto); 1 failed (the message names the reason); 2 bad configuration. Rank 0
also writes RUN/status.json ({"state": "finished" | "preempted", "step": N}) for launchers such as
torchrun that report any non-zero rank status as their own failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vidgpt import distributed
from vidgpt.checkpoint import CheckpointError, Checkpointer, Found, check_model_config, resolve, to_universal
from vidgpt.config import Config, ConfigError, dumps, load_config

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was saved; run again with --resume auto


class TrainingError(RuntimeError):
    """Training cannot go on (the message says why)."""


# ----------------------------------------------------------------------------- pieces


def lr_factor(step: int, cfg: Config) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based): warm-up, then the decay schedule."""
    o, total = cfg.optimizer, cfg.training.steps
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if o.schedule == "cosine" else 1.0 - progress
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * shape


def deepspeed_config(cfg: Config, precision: str, load_universal: bool) -> dict[str, Any]:
    """DeepSpeed's config, derived from ours (the one source of truth) plus the expert passthrough."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.optimizer.grad_accum,
        "gradient_clipping": cfg.optimizer.grad_clip,
        "zero_optimization": {"stage": cfg.training.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    return _merge(ds, cfg.training.deepspeed)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def measured_cpu_peak_flops(size: int = 2048, trials: int = 5) -> float:
    """FLOP/s of a large float32 matmul on this process's threads (best of a few): the CPU 'peak' for MFU."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


class Metrics:
    """TensorBoard scalars under train/ on rank 0; a no-op object elsewhere."""

    def __init__(self, log_dir: Path | None) -> None:
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


class Console:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)


class StopFlag:
    """Set by SIGUSR1/SIGTERM; ranks agree on it after every step."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, cfg: Config, resume: str | None) -> None:
        self.cfg = cfg
        self.env = distributed.detect_env()
        self.cuda = torch.cuda.is_available()
        if not self.cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        self.precision = cfg.training.precision
        if self.precision == "auto":
            self.precision = "bf16" if self.cuda else "fp32"
        self.run_dir = Path(cfg.run_dir)
        self.model_cfg = cfg.model.build()
        self.model_cfg_dict = dataclasses.asdict(self.model_cfg)
        self.found: Found | None = resolve(self.run_dir, resume)  # before any process group: errors are cheap
        if self.found is not None:
            check_model_config(self.found, self.model_cfg_dict)
        self.say = Console(self.env.is_main)

    # -- set-up ---------------------------------------------------------------

    def setup(self) -> None:
        import deepspeed

        from data_pipeline.loader import LatentLoader, LoaderConfig
        from vidgpt.diffusion import build_diffusion
        from vidgpt.ema import ShardedEMA
        from vidgpt.model import VidGPT

        cfg, env = self.cfg, self.env
        # DeepSpeed 0.19 calls torch.distributed collectives that torch 2.13 deprecates, once per step
        warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.*deprecated", category=FutureWarning)
        if self.cuda:
            torch.cuda.set_device(env.local_rank)
        self.device = torch.device("cuda", env.local_rank) if self.cuda else torch.device("cpu")
        distributed.init(env, "nccl" if self.cuda else "gloo")
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(dumps(cfg))

        universal_tag = None
        if self.found is not None and int(self.found.meta["world"]) != env.world:
            if env.is_main:
                self.say(f"resuming {self.found.meta['world']}-rank checkpoint on {env.world} ranks: converting "
                         "to DeepSpeed's universal format")
                to_universal(self.found)
            distributed.barrier()
            universal_tag = self.found.tag + "_universal"
        ds_config = deepspeed_config(cfg, self.precision, universal_tag is not None)

        torch.manual_seed(cfg.training.seed)  # identical initial weights on every rank
        zero3 = cfg.training.zero_stage == 3
        with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=zero3):
            model = VidGPT(self.model_cfg, init_weights=False)
        gather = (lambda ps: deepspeed.zero.GatheredParameters(ps, modifier_rank=0)) if zero3 else None
        model.initialize_weights(gather=gather)
        model.activation_checkpointing = cfg.model.activation_checkpointing
        o = cfg.optimizer
        optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                      weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        self.diffusion_cfg = cfg.diffusion.build()
        self.diffusion = build_diffusion(self.diffusion_cfg)
        self.loader = LatentLoader(
            LoaderConfig(cfg.data.path, num_frames=cfg.data.num_frames, batch_size=cfg.data.batch_size,
                         crop=cfg.data.crop, shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.training.seed,
                         num_workers=cfg.data.num_workers, max_bad_fraction=cfg.data.max_bad_fraction),
            env.rank, env.world,
        )
        # per-rank streams: noise and timesteps (on the device), prompt lengths (CPU)
        self.noise_gen = torch.Generator(self.device).manual_seed(cfg.training.seed * 1_000_003 + 7919 * env.rank + 1)
        self.prompt_gen = torch.Generator().manual_seed(cfg.training.seed * 1_000_003 + 7919 * env.rank + 2)
        self.ema = ShardedEMA(self.engine.module, cfg.training.ema_decay) if cfg.training.ema_decay > 0 else None
        self.step = 0
        self.bad_steps = 0
        self.skipped = 0
        self.checkpointer = Checkpointer(self.run_dir, cfg.checkpoint.keep_last, env)
        if self.found is not None:
            self._restore(universal_tag)
        self.metrics = Metrics(self.run_dir / "tensorboard" if env.is_main else None)
        self.peak = cfg.training.peak_tflops * 1e12 if cfg.training.peak_tflops else (
            0.0 if self.cuda else measured_cpu_peak_flops()
        )

    def _restore(self, universal_tag: str | None) -> None:
        found = self.found
        assert found is not None
        tag = universal_tag or found.tag
        load_path, _ = self.engine.load_checkpoint(str(found.path.parent), tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if load_path is None:
            raise CheckpointError(f"{found.path}: DeepSpeed could not load it")
        states = Checkpointer.load_trainer_states(found)
        same_world = len(states) == self.env.world
        mine = states[self.env.rank] if same_world else states[0]
        self.step = int(mine["step"])
        self.bad_steps = int(mine["bad_steps"])
        self.skipped = int(mine["skipped"])
        self.loader.load_state_dict(json.loads(mine["loader"]))
        if same_world:
            self.noise_gen.set_state(mine["noise_gen"].to(torch.uint8))
            self.prompt_gen.set_state(mine["prompt_gen"].to(torch.uint8))
        else:  # new per-rank streams, still deterministic: offset by the step
            seed = self.cfg.training.seed * 1_000_003 + 7919 * self.env.rank + 104_729 * self.step
            self.noise_gen.manual_seed(seed + 1)
            self.prompt_gen.manual_seed(seed + 2)
        if self.ema is not None:
            if "ema" not in mine:
                raise CheckpointError(f"{found.path} has no EMA but training.ema_decay > 0")
            self.ema.load_state_dict([s["ema"] for s in states], self.env.rank)
        self.say(f"resumed from {found.path} at step {self.step}")

    def trainer_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": self.step, "bad_steps": self.bad_steps, "skipped": self.skipped,
            "loader": json.dumps(self.loader.state_dict()),
            "noise_gen": self.noise_gen.get_state(), "prompt_gen": self.prompt_gen.get_state(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def save(self) -> Path:
        meta = {"model": self.model_cfg_dict, "zero_stage": self.cfg.training.zero_stage, "ema": self.ema is not None,
                "config": dataclasses.asdict(self.cfg)}
        path = self.checkpointer.save(self.engine, self.step, self.trainer_state(), meta)
        self.say(f"step {self.step}: checkpoint {path}")
        return path

    # -- the loop ---------------------------------------------------------------

    def micro_step(self, batch: dict[str, Any]) -> float | None:
        """Forward, backward and DeepSpeed step of one micro-batch; None when some rank's loss was not
        finite (then no rank steps, and the count of bad steps in a row grows)."""
        cfg = self.cfg
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        x0 = batch["latents"].to(self.device, dtype, non_blocking=True)  # (B, T, C, H, W)
        text, text_mask = batch.get("text"), batch.get("text_mask")
        if text is not None and self.model_cfg.text_dim:
            text, text_mask = text.to(self.device, dtype), text_mask.to(self.device)
        else:
            text = text_mask = None
        prompt_len = self.diffusion_cfg.prompt.sample(x0.shape[1], self.prompt_gen)
        loss = self.diffusion.training_loss(
            self.engine, x0, prompt_len, generator=self.noise_gen, valid=batch["valid"].to(self.device),
            text=text, text_mask=text_mask, text_drop_prob=self.diffusion_cfg.text_drop_prob,
            prompt_noise=self.diffusion_cfg.prompt_noise,
        )
        if distributed.all_reduce(torch.tensor([0.0 if torch.isfinite(loss) else 1.0]), "max").item():
            self.skipped += 1
            self.bad_steps += 1
            self.say(f"step {self.step}: non-finite loss on some rank; skipped ({self.bad_steps} in a row)")
            if self.bad_steps >= cfg.training.max_bad_steps:
                raise TrainingError(
                    f"{self.bad_steps} non-finite losses in a row at step {self.step}; stopping. The last good "
                    f"checkpoint is {self.checkpointer.dir / 'latest'} (lower optimizer.lr, check the data)"
                )
            return None
        self.bad_steps = 0
        self.engine.backward(loss)
        self.engine.step()
        return float(loss.detach())

    def batches(self) -> Iterator[dict[str, Any]]:
        while True:
            yield from self.loader

    def train(self) -> int:
        cfg, engine = self.cfg, self.engine
        from vidgpt.model import model_stats

        stop = StopFlag()
        data = self.batches()

        lat_h = lat_w = None
        window_losses: list[float] = []
        t_last = time.perf_counter()
        data_wait = 0.0
        while self.step < cfg.training.steps:
            step_losses: list[float] = []
            while len(step_losses) < cfg.optimizer.grad_accum:  # a skipped micro-batch is replaced
                t0 = time.perf_counter()
                batch = next(data)
                data_wait += time.perf_counter() - t0
                lat_h, lat_w = batch["latents"].shape[-2:]
                loss = self.micro_step(batch)
                if loss is not None:
                    step_losses.append(loss)
            self.step += 1
            if self.ema is not None:
                self.ema.update()
            mean_loss = float(distributed.all_reduce(torch.tensor([sum(step_losses) / len(step_losses)]), "mean"))
            window_losses.append(mean_loss)
            if self.env.is_main:  # one line per optimizer step, kept across resumes
                with open(self.run_dir / "losses.jsonl", "a") as f:
                    f.write(json.dumps({"step": self.step, "loss": mean_loss}) + "\n")
            if self.step % cfg.logging.interval == 0 or self.step == cfg.training.steps:
                now = time.perf_counter()
                steps_done = len(window_losses)
                dt = (now - t_last) / steps_done
                samples = cfg.data.batch_size * cfg.optimizer.grad_accum * self.env.world
                tokens_per_frame = (lat_h // self.model_cfg.patch) * (lat_w // self.model_cfg.patch)
                tokens = samples * cfg.data.num_frames * tokens_per_frame
                flops = 3 * model_stats(self.model_cfg, cfg.data.num_frames, lat_h, lat_w, batch=samples).flops
                values = {
                    "loss": sum(window_losses) / steps_done, "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": float(engine.get_global_grad_norm() or 0.0), "step_time": dt,
                    "samples_per_s": samples / dt, "tokens_per_s": tokens / dt,
                    "data_wait_frac": data_wait / (now - t_last), "skipped_steps": self.skipped,
                    "memory_gb": (torch.cuda.max_memory_allocated() if self.cuda
                                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
                }
                if self.peak:
                    values["mfu"] = flops / dt / (self.peak * self.env.world)
                self.metrics.scalars(self.step, values)
                self.say(f"step {self.step}/{cfg.training.steps} loss {values['loss']:.5f} lr {values['lr']:.2e} "
                         f"{values['samples_per_s']:.1f} samples/s")
                window_losses, t_last, data_wait = [], now, 0.0
            if self.step % cfg.checkpoint.interval == 0 and self.step < cfg.training.steps:
                self.save()
            if distributed.all_reduce(torch.tensor([1.0 if stop.requested else 0.0]), "max").item():
                if self.step % cfg.checkpoint.interval:
                    self.save()
                self.say(f"step {self.step}: stop requested (signal); checkpoint saved, exiting {EXIT_PREEMPTED}")
                return self._finish("preempted", EXIT_PREEMPTED)
        self.save()
        return self._finish("finished", 0)

    def _finish(self, state: str, code: int) -> int:
        """Record how the run ended (for launchers such as torchrun that report any non-zero rank status
        as their own failure), before any rank exits."""
        if self.env.is_main:
            (self.run_dir / "status.json").write_text(json.dumps({"state": state, "step": self.step}) + "\n")
        self.metrics.close()
        distributed.barrier()
        return code

    def close(self) -> None:
        if hasattr(self, "metrics"):
            self.metrics.close()


def run(cfg: Config, resume: str | None) -> int:
    trainer = Trainer(cfg, resume)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vidgpt-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="TOML run config (see configs/ and vidgpt/config.py)")
    ap.add_argument("--resume", default=None,
                    help="auto: continue from RUN/checkpoints/latest if any; PATH: a checkpoint step directory")
    args, overrides = ap.parse_known_args(argv)
    try:
        cfg = load_config(args.config, overrides)
        return run(cfg, args.resume)
    except ConfigError as exc:
        print(f"vidgpt-train: config error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, TrainingError) as exc:
        print(f"vidgpt-train: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
