"""Validation during training: the `[eval]` section, the held-out loss, and the samples made at every
evaluation (`vidgpt.components.training_samples`).

Every `eval.interval` steps, and once before the first, every rank computes the frame-as-prompt loss on
the same held-out clips with the same noise, timesteps and prompt lengths (own streams: training's are
not touched), averaged over ranks; with `eval.samples`, the model then continues fixed held-out prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_pipeline.index import read_json
from data_pipeline.loader import LatentLoader, ShardTable, index_location
from data_pipeline.synthetic import SyntheticTask
from vidgpt import distributed
from vidgpt.components.data import DataConfig, loss_batch
from vidgpt.components.seeds import RandomStreams
from vidgpt.components.tensorboard import TensorBoardWriter
from vidgpt.components.training_samples import TrainingSampler, dataset_prompts, synthetic_prompts
from vidgpt.diffusion import Diffusion
from vidgpt.distributed import DistEnv
from vidgpt.ema import ShardedEMA
from vidgpt.errors import ConfigError
from vidgpt.evaluation.spec import EvalSpec
from vidgpt.latent_space import codec_for_index, text_encoder_for
from vidgpt.model import ModelConfig
from vidgpt.objective import FramePromptObjective
from vidgpt.sampling import SamplingSpec


@dataclass
class EvalConfig:
    """The `[eval]` section: validation loss and samples during training."""

    interval: int = 0
    """Validation every this many optimizer steps, and once before the first step; 0 disables it."""
    data: str = ""
    """Held-out latent dataset (as data.path); empty: the held-out shards of data.path (holdout_shards),
    else data.path itself (a check of the fit, not held out)."""
    holdout_shards: int = 0
    """With eval.data empty: the last N shards of data.path (in index order) are not trained on, and are
    the validation set."""
    batches: int = 4
    """Validation batches per rank (data.batch_size clips each, data.num_frames frames)."""
    seed: int = 0
    """Seed of the validation clips, noise, timesteps and prompt lengths: the same at every evaluation, so
    the eval/loss curve compares across steps and resumes."""
    samples: int = 0
    """Held-out prompts continued with the kv-cache at every evaluation (EMA weights when training keeps
    an EMA), kept as RUN/samples/step_NNNNNNN/sample_KK.mp4 and TensorBoard images; 0: none."""
    multiples: int = 2
    """Frames generated after each sample's prompt, in multiples of data.num_frames."""
    synthetic: bool = False
    """The prompts are the built-in synthetic scenes of seed synthetic_seed (a dataset made by vidgpt-make-
    synthetic, encoded with the identity codec): also log vidgpt-eval's quality figures under eval/."""
    synthetic_seed: int = 1000
    """Seed of those scenes (the training videos use seed 0); they move and are drawn as the training videos
    were (the task vidgpt-encode recorded in the dataset's index.json)."""
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    """How the samples are made (`[eval.sampling]`: the settings of vidgpt-eval and vidgpt-sample)."""

    def __post_init__(self) -> None:
        if self.interval < 0:
            raise ConfigError(f"eval.interval: must be >= 0, got {self.interval}")
        for key in ("batches", "multiples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval.{key}: must be >= 1, got {getattr(self, key)}")
        if self.samples < 0 or self.holdout_shards < 0:
            raise ConfigError(f"eval.samples and eval.holdout_shards: must be >= 0, got {self.samples}, "
                              f"{self.holdout_shards}")
        if self.holdout_shards and self.data:
            raise ConfigError("eval.holdout_shards: set either it (held-out shards of data.path) or eval.data, not both")
        if self.samples and not self.interval:
            raise ConfigError("eval.samples: needs eval.interval > 0 (samples are made at every evaluation)")
        if self.synthetic_seed < 0:
            raise ConfigError(f"eval.synthetic_seed: must be >= 0, got {self.synthetic_seed}")


class Validator:
    """The held-out loss (and samples) at every evaluation; a collective: every rank calls it together."""

    def __init__(self, cfg: EvalConfig, *, objective: FramePromptObjective, diffusion: Diffusion,
                 loader: LatentLoader, device: torch.device, rank: int, input_dtype: torch.dtype, use_text: bool,
                 writer: TensorBoardWriter, log: Callable[[str], None], sampler: Any | None = None) -> None:
        self.cfg, self.objective, self.diffusion, self.loader = cfg, objective, diffusion, loader
        self.device, self.rank, self.input_dtype, self.use_text = device, rank, input_dtype, use_text
        self.writer, self.log, self.sampler = writer, log, sampler

    def due(self, step: int) -> bool:
        return step % self.cfg.interval == 0

    @torch.no_grad()
    def validate(self, model: Any, ema: ShardedEMA | None, step: int, samples_dir: str) -> dict[str, float]:
        """The frame-as-prompt loss on the held-out set, with the same clips, noise, timesteps and prompt
        lengths every time, averaged over ranks. Every rank runs the same number of forward passes
        (ZeRO-3 gathers parameters in them). Returns the figures logged under eval/, with "seconds"."""
        cfg, start = self.cfg, time.perf_counter()
        streams = RandomStreams.for_validation(cfg.seed, self.rank, self.device)
        total, count = torch.zeros((), device=self.device), 0
        self.loader.set_epoch(0)
        for i, batch in enumerate(self.loader):
            if i == cfg.batches:
                break
            total += self.objective.loss(model, self.diffusion, loss_batch(batch, self.device, self.use_text),
                                         streams.noise, streams.prompt, training=False,
                                         input_dtype=self.input_dtype).float()
            count += 1
        summed = distributed.all_reduce(torch.stack([total, torch.tensor(float(count), device=self.device)]), "sum")
        loss_sum, batches = summed.tolist()
        values = {"loss": loss_sum / max(batches, 1)}
        if self.sampler is not None:  # every rank generates (ZeRO-3 gathers layer by layer); rank 0 writes
            values.update(self.sampler.run(model.module, self.diffusion, ema, step, seed=cfg.seed))
        values["seconds"] = time.perf_counter() - start
        self.writer.scalars(step, values, prefix="eval")
        quality = (f"; samples: presence F1 {values['presence_f1']:.3f}, garbage {values['garbage']:.2%}, centroid "
                   f"{values['centroid_ratio_first_clip']:.2f}x copy-last" if "presence_f1" in values else "")
        saved = f"; {cfg.samples} samples in {samples_dir}/step_{step:07d}" if self.sampler is not None else ""
        self.log(f"step {step}: eval loss {values['loss']:.5f} over {int(batches)} held-out batches, all ranks"
                 f"{saved}{quality} ({values['seconds']:.1f} s)")
        return values


def training_sampler(cfg: EvalConfig, *, data_path: str, clip_len: int, model_cfg: ModelConfig,
                     held_out: ShardTable | None, is_main: bool, run_dir: Path, writer: TensorBoardWriter,
                     autocast: torch.dtype | None) -> TrainingSampler | None:
    """The samples made at every evaluation (None without eval.samples): fixed held-out prompts, the same
    on every rank; rank 0 decodes them with the dataset's codec and writes them."""
    if not cfg.samples:
        return None
    location = index_location(data_path)
    if location is None:
        raise ConfigError(f"eval.samples: needs a dataset with an index.json (its codec, frame size and fps); "
                          f"data.path {data_path} lists shards")
    index = read_json(location)
    size = int((index.get("size") or [32])[0])
    fps = float(index.get("fps") or 8.0)
    spec = EvalSpec(sampling=cfg.sampling, clip_len=clip_len, multiples=cfg.multiples, num_clips=cfg.samples,
                    synthetic_seed=cfg.synthetic_seed, size=size, fps=fps,
                    task=SyntheticTask.of_index(index) or SyntheticTask())
    codec = codec_for_index(index) if (is_main or cfg.synthetic) else None
    if cfg.synthetic:
        assert codec is not None
        if codec.describe()["name"] != "identity":
            raise ConfigError(f"eval.synthetic: the synthetic scenes are pixels; {data_path} was encoded with the "
                              f"{codec.describe()['name']} codec (use eval.data / eval.samples without eval.synthetic)")
        encoder = text_encoder_for(index, model_cfg, "cpu")
        prompts = synthetic_prompts(spec, codec, encoder, model_cfg.text_len)
    else:
        prompts = dataset_prompts(cfg.data or data_path, cfg.sampling.prompt_frames, cfg.samples, cfg.seed,
                                  use_text=bool(model_cfg.text_dim), table=held_out)
    return TrainingSampler(prompts=prompts, spec=spec, decode=codec.decode if (codec is not None and is_main) else None,
                           fps=fps, run_dir=run_dir, writer=writer.writer, autocast=autocast)


def build_validator(cfg: EvalConfig, *, loader: LatentLoader, objective: FramePromptObjective, diffusion: Diffusion,
                    data: DataConfig, model_cfg: ModelConfig, held_out: ShardTable | None, env: DistEnv,
                    device: torch.device, input_dtype: torch.dtype, run_dir: Path, writer: TensorBoardWriter,
                    log: Callable[[str], None]) -> Validator:
    """The validator of a run, with its samples when eval.samples > 0."""
    sampler = training_sampler(cfg, data_path=data.path, clip_len=data.num_frames, model_cfg=model_cfg,
                               held_out=held_out, is_main=env.is_main, run_dir=run_dir, writer=writer,
                               autocast=torch.bfloat16 if input_dtype == torch.bfloat16 else None)
    return Validator(cfg, objective=objective, diffusion=diffusion, loader=loader, device=device, rank=env.rank,
                     input_dtype=input_dtype, use_text=bool(model_cfg.text_dim), writer=writer, log=log,
                     sampler=sampler)
