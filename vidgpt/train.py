"""Train ViD-GPT with DeepSpeed ZeRO-3 on latent shards; resumes exactly from sharded checkpoints.

    python -m vidgpt.train --config configs/demo_cpu.toml [--section.key=value ...] [--resume auto|PATH]
    torchrun --nproc_per_node 8 -m vidgpt.train --config configs/xl.toml --resume auto
    srun python -m vidgpt.train --config ...          # one task per GPU; SLURM variables give the ranks

Device and backend come from DeepSpeed's accelerator, so the trainer and ZeRO-3 agree: CPU (gloo, fp32)
when DS_ACCELERATOR=cpu or no GPU is visible (DS_ACCELERATOR=cpu is then set), else the GPU
local_rank % device_count (NCCL; bf16 from compute capability 8.0, fp32 with a warning below). A job
allocated GPUs that torch cannot use stops with a message rather than training on the CPUs.
Exit status: 0 finished; 75 stopped on SIGUSR1/SIGTERM/SIGINT after saving a checkpoint (requeue and
run again with --resume auto); 1 failed (the message names the reason: data, checkpoint, training);
2 bad configuration. Rank 0
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

from vidgpt import attention, distributed
from vidgpt.checkpoint import (
    CheckpointError,
    Checkpointer,
    Found,
    check_model_config,
    one_line,
    resolve,
    to_universal,
    wait_for_universal,
)
from data_pipeline.loader import DataError, error_line
from data_pipeline.storage import StorageError
from vidgpt.config import Config, ConfigError, dumps, load_config
from vidgpt.model import ModelConfig, text_mask_or_none

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


def trim_losses(path: Path, step: int) -> None:
    """Drop the lines of steps after `step` from losses.jsonl (a run that crashed after its last
    checkpoint logged steps the resumed run trains again), atomically; a torn last line goes too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on GPUs of compute capability >= 8.0 (Ampere on), fp32 with a warning on older
    ones (no bf16 tensor cores; fp16 would need loss scaling), fp32 on the CPU. bf16 asked for on an
    older GPU is refused."""
    if device.type != "cuda":
        return "fp32" if precision == "auto" else precision
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return "bf16" if precision == "auto" else precision
    if precision == "bf16":
        raise TrainingError(f"training.precision = 'bf16' needs compute capability >= 8.0; {device} has "
                            f"{major}.{minor} (use 'fp32')")
    if precision == "auto":
        warnings.warn(f"{device} has compute capability {major}.{minor} < 8.0: no bf16, training in fp32",
                      stacklevel=2)
    return "fp32"


def deepspeed_config(cfg: Config, precision: str, load_universal: bool) -> dict[str, Any]:
    """DeepSpeed's config, derived from ours (the one source of truth) plus the expert passthrough."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.optimizer.grad_accum,
        "gradient_clipping": cfg.optimizer.grad_clip,
        "zero_optimization": {"stage": cfg.training.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        # bf16: gradients accumulate in fp32 (DeepSpeed 0.19 defaults to bf16) and are reduced in the dtype
        # chosen by training.grad_reduce_dtype
        **({"data_types": {"grad_accum_dtype": "fp32"},
            "communication_data_type": cfg.training.grad_reduce_dtype} if precision == "bf16" else {}),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    return _merge(ds, cfg.training.deepspeed)


def build_engine(cfg: Config, model_cfg: ModelConfig, ds_config: dict[str, Any]) -> tuple[Any, Any]:
    """The network (initial weights from training.seed, the same on every rank), AdamW and the lr schedule
    wrapped by DeepSpeed as `ds_config` says: (engine, scheduler). Needs torch.distributed initialised.

    tests/dp_step.py trains through this on several ranks and checks the weights against one process
    with plain torch (AdamW, clip_grad_norm_, LambdaLR(lr_factor)) on the whole batch."""
    import deepspeed

    from vidgpt.model import VidGPT

    torch.manual_seed(cfg.training.seed)  # identical initial weights on every rank
    zero3 = cfg.training.zero_stage == 3
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=zero3):
        model = VidGPT(model_cfg, init_weights=False)
    gather = (lambda ps: deepspeed.zero.GatheredParameters(ps, modifier_rank=0)) if zero3 else None
    model.initialize_weights(gather=gather)
    model.activation_checkpointing = cfg.model.activation_checkpointing
    if cfg.training.compile:
        model.compile_blocks()
    o = cfg.optimizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=ds_config)
    return engine, scheduler


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

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

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
    """Set by SIGUSR1, SIGTERM or SIGINT (Ctrl-C); ranks agree on it at every step, then save and exit 75."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, cfg: Config, resume: str | None) -> None:
        self.cfg = cfg
        if not cfg.data.path:
            raise ConfigError("data.path: not set; pass --data.path=DIR (or s3://bucket/prefix) of vidgpt-encode's shards")
        from data_pipeline import storage
        from data_pipeline.loader import load_table

        for key, location in (("data.path", cfg.data.path), ("eval.data", cfg.eval.data)):
            try:
                storage.check_location(location)
            except storage.LocationError as exc:
                raise ConfigError(f"{key}: {exc}") from exc

        # a missing or empty dataset stops here, before any process group starts or any file is written
        self.table = load_table(cfg.data.path)
        self.eval_table = None
        if cfg.eval.holdout_shards and self.table.uris:  # the last shards validate, the rest train
            self.table, self.eval_table = self.table.split(cfg.eval.holdout_shards)
        if not self.table.uris:
            raise DataError(f"{cfg.data.path}: the dataset has no samples")
        lengths = [f for shard in self.table.frames for f in shard]  # frames of every clip
        unusable = sum(f < 2 for f in lengths)
        if unusable:
            raise DataError(f"{cfg.data.path}: {unusable} of {len(lengths)} clips have fewer than 2 frames; "
                            "frame-as-prompt training needs a prompt frame and a noisy one (re-encode with "
                            "vidgpt-encode --min-frames 2 or more)")
        self.short_clips = sum(f < cfg.data.num_frames for f in lengths)
        self.env = distributed.detect_env()
        problem = distributed.allocated_gpus_without_cuda(os.environ, torch.cuda.is_available())
        if problem:
            raise TrainingError(problem)
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if cfg.training.deterministic:  # cuBLAS reads it when CUDA starts
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.run_dir = Path(cfg.run_dir)
        self.model_cfg = cfg.model.build()
        self.model_cfg_dict = dataclasses.asdict(self.model_cfg)
        self.found: Found | None = resolve(self.run_dir, resume)  # before any process group: errors are cheap
        if self.found is not None:
            check_model_config(self.found, self.model_cfg_dict)
        self.say = Console(self.env.is_main)

    # -- set-up ---------------------------------------------------------------

    def setup(self) -> None:
        from data_pipeline.loader import LatentLoader, LoaderConfig
        from vidgpt.diffusion import build_diffusion
        from vidgpt.ema import ShardedEMA

        cfg, env = self.cfg, self.env
        # DeepSpeed 0.19 calls torch.distributed collectives that torch 2.13 deprecates
        # (all_gather_into_tensor, reduce_scatter_tensor), every step: library noise, filtered here only
        warnings.filterwarnings("ignore", message=r".*`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        self.device, backend = distributed.accelerator_device(env.local_rank)
        self.cuda = self.device.type == "cuda"
        self.precision = resolve_precision(cfg.training.precision, self.device)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32  # the network's input
        universal_tag = None
        if self.found is not None and int(self.found.meta["world"]) != env.world:
            # before any collective: the other ranks poll the file system for the completion marker, so
            # a long conversion cannot run into NCCL's collective timeout
            if env.is_main:
                self.say(f"resuming {self.found.meta['world']}-rank checkpoint on {env.world} ranks: converting "
                         f"to DeepSpeed's universal format (vidgpt-convert does this ahead of time)")
                universal_tag = to_universal(self.found)
            else:
                universal_tag = wait_for_universal(self.found)
        distributed.init(env, backend)
        if cfg.training.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            attention.set_deterministic(True)
        self.say(f"rank {env.rank}: {self.device} ({backend}, {self.precision}); attention: {attention.describe(self.device)}")
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        ds_config = deepspeed_config(cfg, self.precision, universal_tag is not None)
        self.engine, self.scheduler = build_engine(cfg, self.model_cfg, ds_config)
        self.diffusion_cfg = cfg.diffusion.build()
        self.diffusion = build_diffusion(self.diffusion_cfg)
        self.loader = LatentLoader(
            LoaderConfig(cfg.data.path, num_frames=cfg.data.num_frames, batch_size=cfg.data.batch_size,
                         crop=cfg.data.crop, shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.training.seed,
                         num_workers=cfg.data.num_workers, max_bad_fraction=cfg.data.max_bad_fraction,
                         read_retries=cfg.data.read_retries, pin_memory=self.cuda),
            env.rank, env.world, table=self.table,
        )
        self.eval_loader = None
        if cfg.eval.interval:
            self.eval_loader = LatentLoader(
                LoaderConfig(cfg.eval.data or cfg.data.path, num_frames=cfg.data.num_frames,
                             batch_size=cfg.data.batch_size, crop=cfg.data.crop, shuffle_buffer=cfg.data.shuffle_buffer,
                             seed=cfg.eval.seed, num_workers=0, max_bad_fraction=cfg.data.max_bad_fraction,
                             read_retries=cfg.data.read_retries),
                env.rank, env.world, table=self.eval_table,
            )
        # per-rank streams: noise and timesteps (on the device), prompt lengths (CPU)
        self.noise_gen = torch.Generator(self.device).manual_seed(cfg.training.seed * 1_000_003 + 7919 * env.rank + 1)
        self.prompt_gen = torch.Generator().manual_seed(cfg.training.seed * 1_000_003 + 7919 * env.rank + 2)
        self.ema = ShardedEMA(self.engine.module, cfg.training.ema_decay) if cfg.training.ema_decay > 0 else None
        self.step = 0
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device) not yet in losses.jsonl
        self.stop_agreed = False
        self.bad_steps = 0
        self.skipped = 0
        self.checkpointer = Checkpointer(self.run_dir, cfg.checkpoint.keep_last, env)
        if self.found is not None:
            self._restore(universal_tag)
        self.metrics = Metrics(self.run_dir / "tensorboard" if env.is_main else None)
        self.monitor = self._sample_monitor() if cfg.eval.samples else None
        self.peak = cfg.training.peak_tflops * 1e12 if cfg.training.peak_tflops else (
            0.0 if self.cuda else measured_cpu_peak_flops()
        )
        if env.is_main:  # only once the run really starts: a run that fails to start keeps the old one
            (self.run_dir / "config.toml").write_text(dumps(cfg))
        self.say(self.describe())
        if self.short_clips:
            self.say(f"warning: {self.short_clips} of {self.loader.num_samples} clips are shorter than "
                     f"data.num_frames={cfg.data.num_frames}: they are padded (padding carries no loss), and a "
                     "batch's prompt stays shorter than its shortest clip")

    def describe(self) -> str:
        """What this run is, printed once at start: model, data, ranks and devices, where outputs go."""
        from vidgpt.model import count_params

        cfg, m = self.cfg, self.model_cfg
        samples = cfg.data.batch_size * cfg.optimizer.grad_accum * self.env.world
        return (
            f"model: {cfg.model.flavor} flavor, {m.temporal} temporal attention, {count_params(m) / 1e6:.2f} M "
            f"parameters ({m.depth} blocks x {m.hidden}, {m.heads} heads, patch {m.patch}, {m.in_channels} channels, "
            f"text {m.text_dim or 'off'})\n"
            f"data: {cfg.data.path}: {self.loader.num_samples} clips in {len(self.loader.table.uris)} shards; "
            f"{cfg.data.num_frames}-frame clips, {samples} per optimizer step ({cfg.data.batch_size} x "
            f"{cfg.optimizer.grad_accum} accumulation x {self.env.world} ranks), {len(self.loader)} steps per epoch"
            + (f"; the last {len(self.eval_table.uris)} shards ({sum(self.eval_table.sizes)} clips) are held out for "
               "validation" if self.eval_table is not None else "") + "\n"
            f"ranks: {self.env.world} ({self.env.source}) on {self.device.type}, {self.precision}, ZeRO stage "
            f"{cfg.training.zero_stage}; {cfg.training.steps} steps from step {self.step}\n"
            f"outputs: {self.run_dir}/checkpoints (every {cfg.checkpoint.interval} steps), "
            f"{self.run_dir}/tensorboard, {self.run_dir}/losses.jsonl"
        )

    def _restore(self, universal_tag: str | None) -> None:
        found = self.found
        assert found is not None
        tag = universal_tag or found.tag
        try:
            load_path, _ = self.engine.load_checkpoint(str(found.path.parent), tag=tag, load_optimizer_states=True,
                                                       load_lr_scheduler_states=True)
        except Exception as exc:  # noqa: BLE001 - DeepSpeed asserts or torch fails on a damaged file
            raise CheckpointError(f"{found.path.parent / tag}: DeepSpeed could not load it ({one_line(exc)}); a "
                                  "model or optimizer file is damaged: resume an older checkpoint") from exc
        if load_path is None:
            raise CheckpointError(f"{found.path}: DeepSpeed could not load it")
        same_world = int(found.meta["world"]) == self.env.world
        # same world: this rank's own file only (its EMA shard included); else every rank's, to re-shard
        states = None if same_world else Checkpointer.load_trainer_states(found)
        mine = Checkpointer.load_trainer_state(found, self.env.rank) if states is None else states[0]
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
            if states is None:
                self.ema.load_shards(mine["ema"])
            else:
                self.ema.load_state_dict([s["ema"] for s in states], self.env.rank)
        saved = found.meta.get("config", {}).get("data", {})
        changed = [f"data.{k} {saved[k]} -> {getattr(self.cfg.data, k)}" for k in ("batch_size", "num_frames")
                   if k in saved and saved[k] != getattr(self.cfg.data, k)]
        if changed:  # the data position stays right; the optimizer sees other batches from here on
            self.say(f"resuming with a changed {', '.join(changed)} (the checkpoint's run used the former)")
        if self.env.is_main:
            trim_losses(self.run_dir / "losses.jsonl", self.step)
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
        self.flush_losses()  # a checkpoint's losses.jsonl has every step up to it
        meta = {"model": self.model_cfg_dict, "zero_stage": self.cfg.training.zero_stage, "ema": self.ema is not None,
                "config": dataclasses.asdict(self.cfg)}
        path = self.checkpointer.save(self.engine, self.step, self.trainer_state(), meta)
        self.say(f"step {self.step}: checkpoint {path}")
        return path

    # -- the loop ---------------------------------------------------------------

    def micro_step(self, batch: dict[str, Any], stop: StopFlag | None = None) -> torch.Tensor | None:
        """Forward, backward and DeepSpeed step of one micro-batch; returns the loss, still on the device
        (read once per logging interval, not every step), or None when some rank's loss was not finite
        (then no rank steps, and the count of bad steps in a row grows).

        The ranks agree on finiteness before backward with one small all-reduce, the step's only host
        sync; the last micro-batch of a step carries the stop request in the same collective
        (`self.stop_agreed`)."""
        cfg = self.cfg
        # latents arrive as stored (fp16): copied as they are, noised in fp32 on the device, and only
        # the network's input is cast to the training dtype (Diffusion.training_loss)
        x0, text, text_mask = self._inputs(batch)
        prompt_len = self.diffusion_cfg.prompt.draw(x0.shape[1], x0.shape[0], self.prompt_gen, limit=self._prompt_limit(batch))
        loss = self.diffusion.training_loss(
            self.engine, x0, prompt_len, generator=self.noise_gen,
            valid=batch["valid"].to(self.device, non_blocking=True), text=text, text_mask=text_mask,
            text_drop_prob=self.diffusion_cfg.text_drop_prob, prompt_noise=self.diffusion_cfg.prompt_noise,
            per_frame_noise=self.diffusion_cfg.per_frame_noise,
            input_dtype=self.dtype,
        )
        flags = torch.stack([(~torch.isfinite(loss.detach())).float(),
                             torch.tensor(float(stop is not None and stop.requested), device=loss.device)])
        bad, stop_any = distributed.all_reduce(flags, "max").tolist()
        self.stop_agreed = self.stop_agreed or bool(stop_any)
        if bad:
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
        return loss.detach().float()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The frame-as-prompt loss on the held-out set, with the same clips, noise, timesteps and prompt
        lengths every time (own generators and loader: training's streams are not touched), averaged over
        ranks. Every rank runs the same number of forward passes (ZeRO-3 gathers parameters in them)."""
        assert self.eval_loader is not None
        cfg, start = self.cfg, time.perf_counter()
        seed = cfg.eval.seed * 1_000_003 + 7919 * self.env.rank
        noise = torch.Generator(self.device).manual_seed(seed + 3)
        prompts = torch.Generator().manual_seed(seed + 4)
        total, count = torch.zeros((), device=self.device), 0
        self.eval_loader.set_epoch(0)
        for i, batch in enumerate(self.eval_loader):
            if i == cfg.eval.batches:
                break
            x0, text, text_mask = self._inputs(batch)
            total += self.diffusion.training_loss(
                self.engine, x0, self.diffusion_cfg.prompt.draw(x0.shape[1], x0.shape[0], prompts, limit=self._prompt_limit(batch)),
                generator=noise,
                valid=batch["valid"].to(self.device, non_blocking=True), text=text, text_mask=text_mask,
                prompt_noise=self.diffusion_cfg.prompt_noise,
                per_frame_noise=self.diffusion_cfg.per_frame_noise, input_dtype=self.dtype,
            ).float()
            count += 1
        summed = distributed.all_reduce(torch.stack([total, torch.tensor(float(count), device=self.device)]), "sum")
        loss_sum, batches = summed.tolist()
        values = {"loss": loss_sum / max(batches, 1)}
        if self.monitor is not None:  # every rank generates (ZeRO-3 gathers layer by layer); rank 0 writes
            values.update(self.monitor.run(self.engine.module, self.diffusion, self.ema, self.step, seed=cfg.eval.seed))
        values["seconds"] = time.perf_counter() - start
        self.metrics.scalars(self.step, values, prefix="eval")
        quality = (f"; samples: presence F1 {values['presence_f1']:.3f}, garbage {values['garbage']:.2%}, centroid "
                   f"{values['centroid_ratio_first_clip']:.2f}x copy-last" if "presence_f1" in values else "")
        saved = f"; {cfg.eval.samples} samples in {self.run_dir / 'samples' / f'step_{self.step:07d}'}" if self.monitor else ""
        self.say(f"step {self.step}: eval loss {values['loss']:.5f} over {int(batches)} held-out batches, all ranks"
                 f"{saved}{quality} ({values['seconds']:.1f} s)")
        return values

    def _sample_monitor(self) -> Any:
        """Fixed held-out prompts for samples at every evaluation (vidgpt.monitor), the same on every rank."""
        from data_pipeline.index import read_json
        from data_pipeline.loader import index_location
        from vidgpt import monitor
        from vidgpt.evaluate import EvalSpec, index_codec

        cfg, e = self.cfg, self.cfg.eval
        location = index_location(cfg.data.path)
        if location is None:
            raise ConfigError(f"eval.samples: needs a dataset with an index.json (its codec, frame size and fps); "
                              f"data.path {cfg.data.path} lists shards")
        index = read_json(location)
        size = int((index.get("size") or [32])[0])
        fps = float(index.get("fps") or 8.0)
        spec = EvalSpec(prompt_frames=e.sample_prompt_frames, clip_len=cfg.data.num_frames, multiples=e.sample_multiples,
                        steps=e.sample_steps, num_clips=e.samples, synthetic_seed=e.synthetic_seed, size=size, fps=fps,
                        context_scale=e.sample_context_scale)
        codec = index_codec(index) if (self.env.is_main or e.synthetic) else None
        if e.synthetic:
            assert codec is not None
            if codec.describe()["name"] != "identity":
                raise ConfigError(f"eval.synthetic: the synthetic scenes are pixels; {cfg.data.path} was encoded with the "
                                  f"{codec.describe()['name']} codec (use eval.data / eval.samples without eval.synthetic)")
            encoder = None
            encoder_path = (index.get("text_encoder") or {}).get("path")
            if self.model_cfg.text_dim and encoder_path and Path(encoder_path).is_dir():
                from data_pipeline.text import TextEncoder

                encoder = TextEncoder(encoder_path, max_length=self.model_cfg.text_len, device="cpu")
            prompts = monitor.synthetic_prompts(spec, codec, encoder, self.model_cfg.text_len)
        else:
            prompts = monitor.dataset_prompts(e.data or cfg.data.path, e.sample_prompt_frames, e.samples, e.seed,
                                              use_text=bool(self.model_cfg.text_dim), table=self.eval_table)
        return monitor.SampleMonitor(
            prompts=prompts, spec=spec, decode=codec.decode if (codec is not None and self.env.is_main) else None,
            fps=fps, run_dir=self.run_dir, writer=self.metrics.writer,
            autocast=torch.bfloat16 if self.dtype == torch.bfloat16 else None,
        )

    @staticmethod
    def _prompt_limit(batch: dict[str, Any]) -> int:
        """The longest prompt that leaves every clip of the batch a real noisy frame (read on the CPU copy)."""
        return int(batch["valid"].sum(dim=1).min()) - 1

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Latents (as stored: fp16) and caption embedding/mask of a batch, on the device."""
        x0 = batch["latents"].to(self.device, non_blocking=True)  # (B, T, C, H, W)
        text, text_mask = batch.get("text"), batch.get("text_mask")
        if text is None or not self.model_cfg.text_dim:
            return x0, None, None
        text_mask = text_mask_or_none(text_mask)  # read on the CPU copy: no device sync
        text = text.to(self.device, non_blocking=True)
        return x0, text, None if text_mask is None else text_mask.to(self.device, non_blocking=True)

    def batches(self) -> Iterator[dict[str, Any]]:
        while True:
            yield from self.loader

    def flush_losses(self) -> list[float]:
        """Average the buffered per-step losses over ranks (one collective, one host sync), append them
        to RUN/losses.jsonl on rank 0, and return them."""
        if not self.pending:
            return []
        steps = [s for s, _ in self.pending]
        means = distributed.all_reduce(torch.stack([v for _, v in self.pending]), "mean").tolist()
        self.pending = []
        if self.env.is_main:  # one line per optimizer step, kept across resumes
            with open(self.run_dir / "losses.jsonl", "a") as f:
                f.writelines(json.dumps({"step": s, "loss": v}) + "\n" for s, v in zip(steps, means))
        return means

    def train(self) -> int:
        cfg, engine = self.cfg, self.engine
        from vidgpt.model import model_stats

        stop = StopFlag()
        data = self.batches()

        lat_h = lat_w = None
        t_last = time.perf_counter()
        steps_in_window = 0
        flops_said = False
        if self.eval_loader is not None and self.step == 0:
            t_last += self.validate()["seconds"]  # before the first step; its time is not a step's
        data_wait = 0.0
        while self.step < cfg.training.steps:
            step_losses: list[torch.Tensor] = []
            while len(step_losses) < cfg.optimizer.grad_accum:  # a skipped micro-batch is replaced
                t0 = time.perf_counter()
                batch = next(data)
                data_wait += time.perf_counter() - t0
                lat_h, lat_w = batch["latents"].shape[-2:]
                last = len(step_losses) == cfg.optimizer.grad_accum - 1
                loss = self.micro_step(batch, stop if last else None)
                if loss is not None:
                    step_losses.append(loss)
            self.step += 1
            steps_in_window += 1
            if self.ema is not None:
                self.ema.update()
            self.pending.append((self.step, torch.stack(step_losses).mean()))
            if self.step % cfg.logging.interval == 0 or self.step == cfg.training.steps:
                window_losses = self.flush_losses()
                now = time.perf_counter()
                dt = (now - t_last) / steps_in_window
                samples = cfg.data.batch_size * cfg.optimizer.grad_accum * self.env.world
                tokens_per_frame = (lat_h // self.model_cfg.patch) * (lat_w // self.model_cfg.patch)
                tokens = samples * cfg.data.num_frames * tokens_per_frame
                flops = 3 * model_stats(self.model_cfg, cfg.data.num_frames, lat_h, lat_w, batch=samples).flops
                values = {
                    "loss": sum(window_losses) / len(window_losses), "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": float(engine.get_global_grad_norm() or 0.0), "step_time": dt,
                    "samples_per_s": samples / dt, "tokens_per_s": tokens / dt,
                    "data_wait_frac": data_wait / (now - t_last), "skipped_steps": self.skipped,
                    "memory_gb": (torch.cuda.max_memory_allocated(self.device) if self.cuda
                                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
                }
                if self.peak:
                    values["mfu"] = flops / dt / (self.peak * self.env.world)
                if not flops_said:  # once per run, at the first logged step
                    flops_said = True
                    self.say(f"model: {flops / 1e12:.4g} TFLOP per optimizer step ({lat_h}x{lat_w} latents, "
                             f"{tokens_per_frame} tokens per frame)")
                self.metrics.scalars(self.step, values)
                self.say(f"step {self.step}/{cfg.training.steps} loss {values['loss']:.5f} lr {values['lr']:.2e} "
                         f"{values['samples_per_s']:.1f} samples/s")
                t_last, steps_in_window, data_wait = now, 0, 0.0
            if self.eval_loader is not None and self.step % cfg.eval.interval == 0:
                t_last += self.validate()["seconds"]
            if self.step % cfg.checkpoint.interval == 0 and self.step < cfg.training.steps:
                self.save()
            if self.stop_agreed:
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
        code = trainer.train()  # every rank ends here together (finished or preempted, see _finish)
    finally:
        trainer.close()
    distributed.shutdown()  # only on that path: after an error another rank may be inside a collective
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vidgpt-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="TOML run config (see configs/ and vidgpt/config.py)")
    ap.add_argument("--resume", default=None,
                    help="auto: continue from RUN/checkpoints/latest if any (a damaged one is an error naming the newest "
                         "complete one); auto-fallback: resume that newest complete one instead; PATH: a checkpoint "
                         "step directory")
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
    except (DataError, StorageError) as exc:
        print(f"vidgpt-train: data error: {error_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
