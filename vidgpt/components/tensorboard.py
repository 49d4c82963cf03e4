"""What training reports: TensorBoard scalars and console lines on rank 0, no-ops on every other rank,
and the summary of a run printed at its start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from data_pipeline.loader import LatentLoader, ShardTable
from vidgpt.distributed import DistEnv
from vidgpt.errors import ConfigError
from vidgpt.model import count_params


@dataclass
class LoggingConfig:
    """The `[logging]` section."""

    interval: int = 10
    """Write TensorBoard scalars (and a console line) every this many steps."""

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ConfigError(f"logging.interval: must be >= 1, got {self.interval}")


class TensorBoardWriter:
    """TensorBoard scalars (and images, through `writer`) under RUN/tensorboard on rank 0; nothing elsewhere."""

    def __init__(self, log_dir: Path | None) -> None:
        self.writer: Any = SummaryWriter(str(log_dir)) if log_dir is not None else None

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
    """Progress lines on stdout from rank 0; a no-op on the other ranks."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)


def describe_run(cfg: Any, loader: LatentLoader, held_out: ShardTable | None, env: DistEnv, device: str,
                 precision: str, step: int) -> str:
    """What a run is, printed once at start: model, data, ranks and devices, where outputs go.
    cfg: the run's `vidgpt.config.Config`."""
    m, run_dir = cfg.model, Path(cfg.run_dir)
    samples = cfg.data.batch_size * cfg.optimizer.grad_accum * env.world
    return (
        f"model: {m.flavor} flavor, {m.temporal} temporal attention, {count_params(m) / 1e6:.2f} M "
        f"parameters ({m.depth} blocks x {m.hidden}, {m.heads} heads, patch {m.patch}, {m.in_channels} channels, "
        f"text {m.text_dim or 'off'})\n"
        f"data: {cfg.data.path}: {loader.num_samples} clips in {len(loader.table.uris)} shards; "
        f"{cfg.data.num_frames}-frame clips, {samples} per optimizer step ({cfg.data.batch_size} x "
        f"{cfg.optimizer.grad_accum} accumulation x {env.world} ranks), {len(loader)} steps per epoch"
        + (f"; the last {len(held_out.uris)} shards ({sum(held_out.sizes)} clips) are held out for "
           "validation" if held_out is not None else "") + "\n"
        f"ranks: {env.world} ({env.source}) on {device}, {precision}, ZeRO stage "
        f"{cfg.training.zero_stage}; {cfg.training.steps} steps from step {step}\n"
        f"outputs: {run_dir}/checkpoints (every {cfg.checkpoint.interval} steps), "
        f"{run_dir}/tensorboard, {run_dir}/losses.jsonl"
    )
