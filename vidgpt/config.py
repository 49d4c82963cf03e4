"""Run configuration: nested dataclasses, one TOML file per run, `--section.key=value` overrides.

    cfg = load_config("configs/demo_cpu.toml", ["--optimizer.lr=3e-4", "--data.batch_size=4"])

Every field has a docstring (the reference for the TOML files). Unknown sections or keys, values of
the wrong type and impossible values raise `ConfigError` with a one-line message naming the key,
before anything else starts. `dumps(cfg)` writes the resolved configuration back as TOML; the trainer
stores it in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vidgpt.diffusion import DiffusionConfig, PromptSampling
from vidgpt.model import FLAVORS, ModelConfig


class ConfigError(ValueError):
    """A configuration that cannot run, with the key at fault in the message."""


@dataclass
class ModelSection:
    flavor: str = "tiny"
    """Named size from vidgpt.model.FLAVORS (tiny, cpu, small, base, xl); the keys below override it."""
    depth: int | None = None
    """STDiT blocks, if not the flavor's."""
    hidden: int | None = None
    """Token width, if not the flavor's (divisible by heads, with an even head dim)."""
    heads: int | None = None
    """Attention heads, if not the flavor's."""
    patch: int | None = None
    """Spatial patch size, if not the flavor's (latent H and W must divide by it)."""
    in_channels: int | None = None
    """Latent channels, if not the flavor's (the identity codec gives 3)."""
    mlp_ratio: float | None = None
    """MLP width as a multiple of hidden, if not the flavor's."""
    text_dim: int | None = None
    """Caption embedding width, if not the flavor's; 0 trains without text."""
    text_len: int | None = None
    """Most caption tokens, if not the flavor's."""
    freq_dim: int | None = None
    """Width of the sinusoidal timestep features, if not the flavor's."""
    rope_theta: float | None = None
    """RoPE base of the temporal attention, if not the flavor's."""
    temporal: Literal["causal", "bidirectional"] | None = None
    """causal (ViD-GPT, kv-cache) or bidirectional (the recompute-the-window baseline), if not the flavor's."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (saves memory, costs ~1/3 more compute)."""

    def overrides(self) -> dict[str, Any]:
        """The ModelConfig fields this section sets on top of the flavor."""
        names = [f.name for f in dataclasses.fields(ModelConfig)]
        return {k: v for k in names if (v := getattr(self, k)) is not None}

    def validate(self) -> None:
        if self.flavor not in FLAVORS:
            raise ConfigError(f"model.flavor: unknown flavor {self.flavor!r}; choose one of {', '.join(FLAVORS)}")
        self.build()

    def build(self) -> ModelConfig:
        try:
            return dataclasses.replace(FLAVORS[self.flavor], **self.overrides())
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from exc


@dataclass
class DiffusionSection:
    process: Literal["ddpm", "flow"] = "ddpm"
    """ddpm: the paper's epsilon-prediction DDPM; flow: rectified flow."""
    prediction: Literal["velocity", "x0", "x0_skip"] = "velocity"
    """flow: what the network predicts, the velocity eps - x0 or the clean frames x0 (x0 cannot leave
    noise behind when the network is imperfect: blur instead of speckle), or x0_skip: x0 through EDM's
    skip preconditioning (at low noise the estimate is mostly the input, which keeps detail, and the
    noise left in it: on the CPU demo it measured worse than x0); see vidgpt.diffusion.RectifiedFlow."""
    data_std: float = 0.5
    """flow x0_skip: the data's standard deviation in the preconditioning (EDM's sigma_data)."""
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    """flow: distribution of training timesteps (logit_normal: SD3's sigmoid of a standard normal)."""
    loss_weighting: Literal["none", "snr_clamp"] = "none"
    """flow with prediction x0: snr_clamp weights each sample's x0 error by its signal-to-noise ratio
    ((1 - t) / t)^2 clamped to [1, snr_max], so the network learns to keep the detail of nearly clean
    frames (sharper samples; see vidgpt.diffusion.RectifiedFlow). Changes the training loss only."""
    snr_max: float = 5.0
    """flow snr_clamp: the largest weight (that of the samples with t <= 1 / (1 + sqrt(snr_max)))."""
    ddim_eta: float = 0.0
    """Sampling stochasticity, 0 = deterministic (ddpm: DDIM's eta; flow: the share of fresh noise in each
    step's re-noising). Used by vidgpt-sample and vidgpt-eval through the export."""
    num_steps: int = 1000
    """DDPM training steps."""
    beta_start: float = 1e-4
    """DDPM linear beta schedule start."""
    beta_end: float = 0.02
    """DDPM linear beta schedule end."""
    per_frame_noise: bool = False
    """Every noisy training frame draws its own timestep (Diffusion Forcing) instead of one per clip; with
    snr_clamp each frame carries its own weight. Sampling is unchanged. Changes the training loss only."""
    prompt_noise: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """[lo, hi] fraction of the noise range used to lightly noise prompt frames (paper: [0.05, 0.1])."""
    text_drop_prob: float = 0.1
    """Probability of replacing a caption by the null embedding (classifier-free guidance)."""
    prompt_rule: Literal["uniform", "chunked"] = "uniform"
    """uniform: P in [prompt_min_len, L-1]; chunked: P in {1, 1+c, 1+2c, ...}."""
    prompt_min_len: int = 1
    """Smallest prompt length of the uniform rule; 0 also trains clips without a prompt (generated from the
    caption alone), which text to video (vidgpt-sample --caption without --prompt) needs."""
    prompt_chunk: int = 8
    """Chunk c of the chunked rule."""
    prompt_per_clip: bool = False
    """false: one prompt length per batch (the paper's code); true: one per clip, so every step mixes them."""

    def validate(self) -> None:
        if len(self.prompt_noise) != 2:
            raise ConfigError(f"diffusion.prompt_noise: expected [lo, hi], got {self.prompt_noise}")
        self.build()

    def build(self) -> DiffusionConfig:
        try:
            return DiffusionConfig(
                process=self.process, prediction=self.prediction, time_sampling=self.time_sampling,
                loss_weighting=self.loss_weighting, snr_max=self.snr_max,
                num_steps=self.num_steps, beta_start=self.beta_start, beta_end=self.beta_end, ddim_eta=self.ddim_eta,
                data_std=self.data_std,
                prompt_noise=(self.prompt_noise[0], self.prompt_noise[1]), text_drop_prob=self.text_drop_prob,
                per_frame_noise=self.per_frame_noise,
                prompt=PromptSampling(self.prompt_rule, self.prompt_min_len, self.prompt_chunk, self.prompt_per_clip),
            )
        except ValueError as exc:
            raise ConfigError(f"diffusion: {exc}") from exc


@dataclass
class DataSection:
    path: str = ""
    """Dataset root (local or s3://), an index.json, or shards (comma list or brace pattern)."""
    num_frames: int = 16
    """Frames per training clip (prompt + noisy)."""
    batch_size: int = 2
    """Clips per micro-batch on each rank."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0: read in the training process with a read-ahead thread)."""
    shuffle_buffer: int = 256
    """Samples shuffled together."""
    crop: Literal["random", "whole"] = "random"
    """random: a random window of num_frames; whole: clips from their first frame, padded and masked."""
    max_bad_fraction: float = 0.01
    """Stop when more than this fraction of samples are corrupt (fail their CRC-32, or do not parse)."""
    read_retries: int = 4
    """A read that fails for a network or storage reason is retried this many times with exponential
    backoff (2, 4, 8, ... s), then training stops with a line saying so; it never counts as bad data."""

    def validate(self) -> None:
        _positive(self, "data", "num_frames", "batch_size", "shuffle_buffer")
        if self.read_retries < 0:
            raise ConfigError(f"data.read_retries: must be >= 0, got {self.read_retries}")
        if self.num_frames < 2:
            raise ConfigError("data.num_frames: need >= 2 (one prompt frame and one noisy frame)")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: must be >= 0, got {self.num_workers}")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(f"data.max_bad_fraction: must be in [0, 1], got {self.max_bad_fraction}")


@dataclass
class OptimizerSection:
    lr: float = 1e-4
    """Peak AdamW learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to lr over this many optimizer steps."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning-rate decay after warm-up, down to lr * min_lr_ratio at the last step."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of lr (cosine, linear)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optimizer.lr: must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas: expected two values in [0, 1), got {self.betas}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0 or self.eps <= 0:
            raise ConfigError("optimizer: warmup_steps, grad_clip and weight_decay must be >= 0 and eps > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optimizer.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        _positive(self, "optimizer", "grad_accum")


@dataclass
class TrainingSection:
    steps: int = 100
    """Optimizer steps in total."""
    seed: int = 0
    """Seed of initialisation, data order and (offset by rank) noise, timesteps and prompt lengths."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on GPUs of compute capability >= 8.0, fp32 (with a warning) on older GPUs and on CPUs.
    Under bf16 the optimizer keeps fp32 master weights (the EMA averages those), gradients are
    accumulated in fp32 (DeepSpeed data_types.grad_accum_dtype) and noising is done in fp32."""
    grad_reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    """Under bf16: the dtype gradients are reduce-scattered in across ranks (DeepSpeed
    communication_data_type). fp32 (the default, as torchtitan's FSDP reduce_dtype) sums hundreds of
    ranks' gradients without bf16's 8-bit mantissa losing the small ones, at twice the gradient traffic;
    bf16 halves that traffic."""
    compile: bool = False
    """torch.compile each STDiT block (`VidGPT.compile_blocks`, as torchtitan): faster steps on GPUs after a
    compile of a minute or so at the start; the sampler compiles the same way (vidgpt-sample --compile)."""
    deterministic: bool = False
    """Bit-reproducible steps on GPUs: FlashAttention's deterministic backward, torch's deterministic
    algorithms (CUBLAS_WORKSPACE_CONFIG=:4096:8), no cuDNN autotuning; a few percent slower. On CPUs
    training is deterministic either way. Exact resume on a GPU holds only with this on."""
    zero_stage: int = 3
    """DeepSpeed ZeRO stage (0-3)."""
    ema_decay: float = 0.0
    """EMA of the weights (paper: 0.9999); 0 disables."""
    max_bad_steps: int = 5
    """Stop after this many non-finite losses in a row (each is skipped)."""
    peak_tflops: float = 0.0
    """Peak TFLOP/s per device for the MFU metric (0: measured on CPUs, unknown on GPUs)."""
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """Extra DeepSpeed config keys, merged over the derived config (experts only)."""

    def validate(self) -> None:
        _positive(self, "training", "steps", "max_bad_steps")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"training.zero_stage: must be 0, 1, 2 or 3, got {self.zero_stage}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"training.ema_decay: must be in [0, 1), got {self.ema_decay}")
        if self.peak_tflops < 0:
            raise ConfigError(f"training.peak_tflops: must be >= 0, got {self.peak_tflops}")


@dataclass
class CheckpointSection:
    interval: int = 100
    """Save every this many optimizer steps (and at the end)."""
    keep_last: int = 3
    """Checkpoints kept; older ones are removed once a newer one is complete."""

    def validate(self) -> None:
        _positive(self, "checkpoint", "interval", "keep_last")


@dataclass
class LoggingSection:
    interval: int = 10
    """Write TensorBoard scalars (and a console line) every this many steps."""

    def validate(self) -> None:
        _positive(self, "logging", "interval")


@dataclass
class EvalSection:
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
    sample_prompt_frames: int = 2
    """True frames each sample starts from (< data.num_frames)."""
    sample_multiples: int = 2
    """Frames generated after the prompt, in multiples of data.num_frames."""
    sample_steps: int = 20
    """Denoising steps per chunk."""
    sample_context_scale: float = 1.0
    """Guidance on the earlier frames (vidgpt-sample --context-scale); != 1 needs diffusion.prompt_min_len = 0."""
    synthetic: bool = False
    """The prompts are the built-in synthetic scenes of seed synthetic_seed (a dataset made by vidgpt-make-
    synthetic, encoded with the identity codec): also log vidgpt-eval's quality figures under eval/."""
    synthetic_seed: int = 1000
    """Seed of those scenes (the training videos use seed 0)."""

    def validate(self) -> None:
        if self.interval < 0:
            raise ConfigError(f"eval.interval: must be >= 0, got {self.interval}")
        _positive(self, "eval", "batches", "sample_prompt_frames", "sample_multiples", "sample_steps")
        if self.samples < 0 or self.holdout_shards < 0:
            raise ConfigError(f"eval.samples and eval.holdout_shards: must be >= 0, got {self.samples}, "
                              f"{self.holdout_shards}")
        if self.holdout_shards and self.data:
            raise ConfigError("eval.holdout_shards: set either it (held-out shards of data.path) or eval.data, not both")
        if self.samples and not self.interval:
            raise ConfigError("eval.samples: needs eval.interval > 0 (samples are made at every evaluation)")
        if self.synthetic_seed < 0:
            raise ConfigError(f"eval.synthetic_seed: must be >= 0, got {self.synthetic_seed}")
        if not (math.isfinite(self.sample_context_scale) and self.sample_context_scale > 0):
            raise ConfigError(f"eval.sample_context_scale: must be a number > 0 (1 = no guidance), got "
                              f"{self.sample_context_scale}")


@dataclass
class Config:
    run_dir: str = "runs/default"
    """Run directory: resolved config, checkpoints/, tensorboard/, samples/."""
    model: ModelSection = field(default_factory=ModelSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def validate(self) -> Config:
        if not self.run_dir:
            raise ConfigError("run_dir: must not be empty")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate()
        if self.eval.samples and self.eval.sample_prompt_frames >= self.data.num_frames:
            raise ConfigError(f"eval.sample_prompt_frames: must be < data.num_frames ({self.data.num_frames}): the model "
                              f"never sees longer prompts, got {self.eval.sample_prompt_frames}")
        d = self.diffusion
        if self.eval.sample_context_scale != 1.0 and (d.prompt_rule, d.prompt_min_len) != ("uniform", 0):
            raise ConfigError("eval.sample_context_scale: guidance on the earlier frames needs a model trained with "
                              "0-frame prompts (diffusion.prompt_rule = 'uniform', prompt_min_len = 0)")
        return self


def _positive(section: object, name: str, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        if value < 1:
            raise ConfigError(f"{name}.{key}: must be >= 1, got {value}")


# ----------------------------------------------------------------------------- building from TOML


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Return value if it matches the annotation (ints are accepted as floats), else raise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            if option is not type(None):
                try:
                    return _check_type(value, option, where)
                except ConfigError:
                    pass
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}: must be one of {', '.join(map(repr, typing.get_args(hint)))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{key}: unknown key; valid keys{' of ' + where if where else ''}: {', '.join(names)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a [{key}] table, got {value!r}")
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _check_type(value, hint, key)
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    """An override value: a TOML literal (numbers, booleans, arrays, quoted strings) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply '--section.key=value' (or 'section.key=value') to a nested dict."""
    body = override[2:] if override.startswith("--") else override
    if "=" not in body:
        raise ConfigError(f"{override}: overrides look like --section.key=value")
    dotted, text = body.split("=", 1)
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {k} is not a section")
    node[keys[-1]] = _parse_value(text)


def from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, data, "").validate()


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """Read a TOML file (or start from defaults), apply overrides, type-check and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such config file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    for override in overrides:
        apply_override(data, override)
    return from_dict(data)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dumps(cfg: Config) -> str:
    """The configuration as TOML (top-level keys, then one table per section)."""
    data = to_dict(cfg)
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{section}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")
