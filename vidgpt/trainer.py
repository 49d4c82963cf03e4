"""The trainer behind `vidgpt-train` (`vidgpt.train`): ViD-GPT with DeepSpeed ZeRO-3 on latent shards,
resuming exactly from sharded checkpoints.

Device and backend come from DeepSpeed's accelerator, so the trainer and ZeRO-3 agree: CPU (gloo, fp32)
when DS_ACCELERATOR=cpu or no GPU is visible (DS_ACCELERATOR=cpu is then set), else the GPU
local_rank % device_count (NCCL; bf16 from compute capability 8.0, fp32 with a warning below). A job
allocated GPUs that torch cannot use stops with a message rather than training on the CPUs.
Exit statuses and RUN/status.json: see `vidgpt.train`.

The trainer builds its components (`vidgpt.components`) and runs the loop; each component owns its job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from data_pipeline.index import DatasetIndexError
from data_pipeline.loader import DataError, error_line
from data_pipeline.lock import LockHeld
from data_pipeline.storage import StorageError
from vidgpt import attention, distributed
from vidgpt.checkpoint import CheckpointError, one_line
from vidgpt.components.checkpointing import TrainingCheckpoints
from vidgpt.components.data import build_loaders, check_datasets, loss_batch
from vidgpt.components.engine import build_engine, deepspeed_config, make_deterministic, resolve_precision
from vidgpt.components.loss_log import LossLog
from vidgpt.components.run_lock import run_lock
from vidgpt.components.seeds import RandomStreams
from vidgpt.components.step_guard import NonFiniteGuard, StopFlag
from vidgpt.components.tensorboard import Console, TensorBoardWriter, describe_run
from vidgpt.components.throughput import StepCost, Throughput
from vidgpt.components.validation import build_validator
from vidgpt.components.watchdog import StallWatchdog, collective_failure
from vidgpt.config import Config, ConfigError, dumps, load_config
from vidgpt.diffusion import build_diffusion
from vidgpt.ema import ShardedEMA
from vidgpt.errors import TrainingError

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was saved; run again with --resume auto


class Preempted(Exception):
    """A stop signal arrived before the first step: nothing new to save; resume from what is on disk."""


class Trainer:
    def __init__(self, cfg: Config, resume: str | None, stop: StopFlag | None = None, *,
                 break_lock: bool = False) -> None:
        """Checks that cost nothing to fail: data, devices, the checkpoint to resume. No file is written.
        stop: the signal handlers, installed by the caller before anything else (a signal during start-up
        ends the run as preempted)."""
        self.cfg = cfg
        self.stop = stop or StopFlag()
        self.break_lock = break_lock
        self.lock = None
        self.watchdog: StallWatchdog | None = None
        self.datasets = check_datasets(cfg.data, cfg.eval.data, cfg.eval.holdout_shards, cfg.model.in_channels)
        self.env = distributed.detect_env()
        problem = distributed.allocated_gpus_without_cuda(os.environ, torch.cuda.is_available())
        if problem:
            raise TrainingError(problem)
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if cfg.training.deterministic:  # cuBLAS reads it when CUDA starts
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.run_dir = Path(cfg.run_dir)
        self.checkpoints = TrainingCheckpoints(cfg.checkpoint, self.run_dir, self.env, resume, cfg.model,
                                               dataclasses.asdict(cfg))
        self.log = Console(self.env.is_main)
        self.writer = TensorBoardWriter(None)

    def check_stop(self, where: str) -> None:
        """Preempted when a stop signal arrived during start-up (each rank got it: SLURM and torchrun signal
        every task)."""
        if self.stop.requested:
            raise Preempted(where)

    def setup(self) -> None:
        cfg, env, t = self.cfg, self.env, self.cfg.training
        if env.is_main:  # before anything is written: one trainer per run directory
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = run_lock(self.run_dir, break_lock=self.break_lock)
            self.lock.acquire()
        self.check_stop("during start-up")
        self.watchdog = StallWatchdog(env.rank, t.stall_warning_s, t.collective_timeout_s)
        # DeepSpeed 0.19 calls torch.distributed collectives that torch 2.13 deprecates
        # (all_gather_into_tensor, reduce_scatter_tensor), every step: library noise, filtered here only
        warnings.filterwarnings("ignore", message=r".*`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        self.device, backend = distributed.accelerator_device(env.local_rank)
        self.precision = resolve_precision(t.precision, self.device)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32  # the network's input
        with self.watchdog.phase("the process group to start (every rank connecting)"):
            distributed.init(env, backend, t.collective_timeout_s)
        self.checkpoints.verify(self.log)  # every rank hashes a share of the files, the ranks agree
        self.checkpoints.convert_if_needed(self.log)  # rank 0 converts while the others poll the file system
        self.check_stop("before the engine was built")
        if t.deterministic:
            make_deterministic()
        self.log(f"rank {env.rank}: {self.device} ({backend}, {self.precision}); "
                 f"attention: {attention.describe(self.device)}")
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        ds_config = deepspeed_config(t, cfg.optimizer, cfg.data.batch_size, self.precision,
                                     self.checkpoints.universal_tag is not None)
        self.engine, self.scheduler = build_engine(t, cfg.optimizer, cfg.model, ds_config,
                                                   load_init=self.checkpoints.resume_from is None, log=self.log)
        self.diffusion = build_diffusion(cfg.diffusion)
        eval_source = (cfg.eval.data or cfg.data.path) if cfg.eval.interval else None
        self.loader, eval_loader = build_loaders(cfg.data, self.datasets, seed=t.seed, rank=env.rank, world=env.world,
                                                 pin_memory=self.device.type == "cuda", eval_source=eval_source,
                                                 eval_seed=cfg.eval.seed)
        self.streams = RandomStreams.for_training(t.seed, env.rank, self.device)
        self.ema = ShardedEMA(self.engine.module, t.ema_decay) if t.ema_decay > 0 else None
        self.step, self.guard = 0, NonFiniteGuard(t.max_bad_steps)
        self.stop_agreed, self.flops_said = False, False
        self.losses = LossLog(self.run_dir, env.is_main)
        if self.checkpoints.resume_from is not None:
            self.restore()
        else:  # a new run (at most a first save was interrupted here): no loss line of an earlier try stays
            self.losses.resumed_at(0)
        self.writer = TensorBoardWriter(self.run_dir / "tensorboard" if env.is_main else None)
        self.validator = None if eval_loader is None else build_validator(
            cfg.eval, loader=eval_loader, objective=cfg.objective, diffusion=self.diffusion, data=cfg.data,
            model_cfg=cfg.model, held_out=self.datasets.held_out, env=env, device=self.device, input_dtype=self.dtype,
            run_dir=self.run_dir, writer=self.writer, log=self.log)
        self.throughput = Throughput.for_device(t.peak_tflops, env.world, self.device)
        if env.is_main:  # only once the run really starts: a run that fails to start keeps the old one
            (self.run_dir / "config.toml").write_text(dumps(cfg))
        self.log(describe_run(cfg, self.loader, self.datasets.held_out, env, self.device.type, self.precision,
                              self.step))
        if self.datasets.short_clips:
            self.log(f"warning: {self.datasets.short_clips} of {self.loader.num_samples} clips are shorter than "
                     f"data.num_frames={cfg.data.num_frames}: they are padded (padding carries no loss), and a "
                     "batch's prompt stays shorter than its shortest clip")

    @property
    def samples_per_step(self) -> int:
        return self.cfg.data.batch_size * self.cfg.optimizer.grad_accum * self.env.world

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This rank's trainer state, saved beside DeepSpeed's shards."""
        state: dict[str, Any] = {"step": self.step, **self.guard.state_dict(),
                                 "loader": json.dumps(self.loader.state_dict()), **self.streams.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def restore(self) -> None:
        restored, self.streams = self.checkpoints.restore(
            self.engine, loader=self.loader, streams=self.streams, ema=self.ema, seed=self.cfg.training.seed,
            device=self.device, log=self.log)
        self.step = restored.step
        self.guard.load_state_dict(restored.own)
        self.losses.resumed_at(self.step)
        self.log(f"resumed from {self.checkpoints.resume_from.path} at step {self.step}")  # type: ignore[union-attr]

    def save(self) -> Path:
        self.losses.flush()  # a checkpoint's losses.jsonl has every step up to it
        meta = {"model": dataclasses.asdict(self.cfg.model), "zero_stage": self.cfg.training.zero_stage,
                "ema": self.ema is not None, "config": dataclasses.asdict(self.cfg)}
        assert self.watchdog is not None
        with self.watchdog.phase(f"the step {self.step} checkpoint save (every rank writing its part)"):
            path = self.checkpoints.save(self.engine, self.step, self.state_dict(), meta)
        self.log(f"step {self.step}: checkpoint {path}")
        return path

    # -- the loop ------------------------------------------------------------------------------

    def micro_step(self, batch: dict[str, Any], stop: StopFlag | None = None) -> torch.Tensor | None:
        """Forward, backward and DeepSpeed step of one micro-batch; returns the loss, still on the device
        (read once per logging interval), or None when some rank's loss was not finite (then no rank
        steps, and the count of bad steps in a row grows). The ranks agree on finiteness before backward
        with one small all-reduce, the step's only host sync; the last micro-batch of a step carries the
        stop request in the same collective (`self.stop_agreed`)."""
        assert self.watchdog is not None
        step = self.step + 1
        with self.watchdog.phase(f"step {step}'s forward pass (ZeRO-3 gathers the weights from every rank)"):
            loss = self.cfg.objective.loss(self.engine, self.diffusion,
                                           loss_batch(batch, self.device, bool(self.cfg.model.text_dim)),
                                           self.streams.noise, self.streams.prompt, input_dtype=self.dtype)
        lost = self.lock.lost if self.lock is not None else None
        flags = torch.stack([(~torch.isfinite(loss.detach())).float(),
                             torch.tensor(float(stop is not None and stop.requested), device=loss.device),
                             torch.tensor(float(lost is not None), device=loss.device)])
        with self.watchdog.phase(f"step {step}'s all-reduce of loss and stop flags"):
            bad, stop_any, lost_any = distributed.all_reduce(flags, "max").tolist()
        if lost_any:
            raise TrainingError(f"{lost or 'rank 0 lost the run lock'}; stopped at step {self.step} without saving, so "
                                "that two trainers do not write the same run")
        self.stop_agreed = self.stop_agreed or bool(stop_any)
        if not self.guard.passed(bool(bad), self.step, self.checkpoints.last_good if bad else "", self.log):
            return None
        with self.watchdog.phase(f"step {step}'s backward pass and optimizer step (gradients reduced across ranks)"):
            self.engine.backward(loss)
            self.engine.step()
        return loss.detach().float()

    def batches(self) -> Iterator[dict[str, Any]]:
        while True:
            yield from self.loader

    def validate(self) -> None:
        assert self.validator is not None
        assert self.watchdog is not None
        with self.watchdog.phase(f"the validation at step {self.step}"):
            values = self.validator.validate(self.engine, self.ema, self.step, str(self.run_dir / "samples"))
        self.throughput.exclude(values["seconds"])  # its time is not a step's

    def train(self) -> int:
        cfg, stop, data = self.cfg, self.stop, self.batches()
        if distributed.all_reduce(torch.tensor([float(stop.requested)], device=self.device), "max").item():
            self.log(f"stop requested (signal) before the first step; nothing new to save, exiting {EXIT_PREEMPTED} "
                     f"(resume from step {self.step} with --resume auto)")
            return self.finish("preempted", EXIT_PREEMPTED)
        accum, last_step = cfg.optimizer.grad_accum, cfg.training.steps
        latent_hw: tuple[int, int] | None = None
        self.throughput.restart()
        if self.validator is not None and self.step == 0:
            self.validate()  # before the first step
        while self.step < last_step:
            started = time.perf_counter()
            step_losses: list[torch.Tensor] = []
            while len(step_losses) < accum:  # a skipped micro-batch is replaced
                t0 = time.perf_counter()
                batch = next(data)
                self.throughput.waited(time.perf_counter() - t0)
                latent_hw = batch["latents"].shape[-2:]
                loss = self.micro_step(batch, stop if len(step_losses) == accum - 1 else None)
                if loss is not None:
                    step_losses.append(loss)
            self.step += 1
            self.throughput.step_done()
            assert self.watchdog is not None
            self.watchdog.step_took(time.perf_counter() - started)
            if self.ema is not None:
                self.ema.update()
            self.losses.add(self.step, torch.stack(step_losses).mean())
            if self.step % cfg.logging.interval == 0 or self.step == last_step:
                assert latent_hw is not None
                self.report(*latent_hw)
            if self.validator is not None and self.validator.due(self.step):
                self.validate()
            if self.checkpoints.due(self.step, last_step):
                self.save()
            if self.stop_agreed:
                if self.step % cfg.checkpoint.interval:
                    self.save()
                self.log(f"step {self.step}: stop requested (signal); checkpoint saved, exiting {EXIT_PREEMPTED}")
                return self.finish("preempted", EXIT_PREEMPTED)
        self.save()
        return self.finish("finished", 0)

    def report(self, lat_h: int, lat_w: int) -> None:
        """The logging interval's figures: TensorBoard scalars and one console line."""
        cfg = self.cfg
        window_losses = self.losses.flush()
        frames = cfg.data.num_frames * (2 if cfg.objective.teacher_forcing else 1)  # the network sees clean + noisy
        cost = StepCost.of(cfg.model, frames, lat_h, lat_w, self.samples_per_step)
        values = {"loss": sum(window_losses) / len(window_losses), "lr": self.scheduler.get_last_lr()[0],
                  "grad_norm": float(self.engine.get_global_grad_norm() or 0.0), "skipped_steps": self.guard.skipped,
                  **self.throughput.report(cost)}
        if not self.flops_said:  # once per run, at the first logged step
            self.flops_said = True
            self.log(f"model: {cost.flops / 1e12:.4g} TFLOP per optimizer step ({lat_h}x{lat_w} latents, "
                     f"{(lat_h // cfg.model.patch) * (lat_w // cfg.model.patch)} tokens per frame)")
        self.writer.scalars(self.step, values)
        self.log(f"step {self.step}/{cfg.training.steps} loss {values['loss']:.5f} lr {values['lr']:.2e} "
                 f"{values['samples_per_s']:.1f} samples/s")

    def record_status(self, state: str, step: int) -> None:
        """RUN/status.json, {"state": finished | preempted | failed, "step": N}: rank 0, holding the run lock
        (only the lock holder writes into the run)."""
        if self.env.is_main and self.lock is not None:
            (self.run_dir / "status.json").write_text(json.dumps({"state": state, "step": step}) + "\n")

    def finish(self, state: str, code: int) -> int:
        """Record how the run ended (for launchers such as torchrun that report any non-zero rank status
        as their own failure), before any rank exits."""
        self.record_status(state, self.step)
        self.writer.close()
        distributed.barrier()
        return code

    def close(self) -> None:
        self.writer.close()
        if self.watchdog is not None:
            self.watchdog.close()
            self.watchdog = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def collective_failed(self, exc: BaseException, kind: str) -> int:
        """A collective failed: another rank stalled past training.collective_timeout_s (kind "timeout") or
        its connection closed ("gone"). No checkpoint can be saved (saving needs every rank); say so on this
        rank in one line. A stall exits 75 (rank 0 records "preempted"), so that the job is requeued and
        resumes from the last complete checkpoint; a lost peer exits 1 (its own error says why)."""
        what = self.watchdog.failed_in if self.watchdog is not None else None
        last = self.checkpoints.last_good
        cause = ("another rank stalled past training.collective_timeout_s" if kind == "timeout" else
                 "another rank is gone (its connection closed: it failed or its node was lost; see its own error)")
        code = EXIT_PREEMPTED if kind == "timeout" else 1
        then = "the job is requeued" if kind == "timeout" else "not requeued"
        print(f"vidgpt-train: rank {self.env.rank}: step {self.step + 1}: {what or 'a collective'} failed "
              f"({one_line(exc)}): {cause}; exiting {code} ({then}); the run resumes from {last}",
              file=sys.stderr, flush=True)
        self.record_status("preempted" if kind == "timeout" else "failed", self.step)
        return code

    def preempted_in_start_up(self, where: str) -> int:
        """A signal during start-up: rank 0 records "preempted" at the step on disk, so that launchers
        requeue; then exit 75."""
        found = self.checkpoints.resume_from
        step = int(found.meta.get("step", 0)) if found is not None else 0
        self.record_status("preempted", step)
        self.log(f"stop requested (signal) {where}; nothing new to save, exiting {EXIT_PREEMPTED} (resume from "
                 f"step {step} with --resume auto)")
        return EXIT_PREEMPTED


def run(cfg: Config, resume: str | None, stop: StopFlag | None = None, *, break_lock: bool = False) -> int:
    """Train one run to its end or to a stop signal; the exit status (see the module docstring). stop: the
    signal handlers, installed by the command before its slow imports."""
    stop = stop or StopFlag()
    trainer = Trainer(cfg, resume, stop, break_lock=break_lock)
    try:
        try:
            trainer.setup()
            code = trainer.train()  # every rank ends here together (finished or preempted, see finish)
        except Preempted as exc:
            return trainer.preempted_in_start_up(str(exc))
        except RuntimeError as exc:
            kind = collective_failure(exc)
            if kind is None:
                raise
            return trainer.collective_failed(exc, kind)  # no shutdown: its barrier would wait on the lost rank
    finally:
        trainer.close()
    distributed.shutdown()  # only on that path: after an error another rank may be inside a collective
    return code


def command(config: str | None, overrides: list[str], resume: str | None, stop: StopFlag, *,
            break_lock: bool = False) -> int:
    """vidgpt-train after its arguments: the run, with every expected failure as one line and its exit status."""
    try:
        return run(load_config(config, overrides), resume, stop, break_lock=break_lock)
    except ConfigError as exc:
        print(f"vidgpt-train: config error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, TrainingError, LockHeld) as exc:
        print(f"vidgpt-train: error: {exc}", file=sys.stderr)
        return 1
    except (DataError, DatasetIndexError, StorageError) as exc:
        print(f"vidgpt-train: data error: {error_line(exc)}", file=sys.stderr)
        return 1
