"""The network wrapped for training: precision, the DeepSpeed engine (ZeRO), AdamW and the lr schedule,
configured by the `[optimizer]` and `[training]` sections.

DeepSpeed is an optional heavy dependency, imported where the engine is built.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vidgpt import attention
from vidgpt.components.init_weights import check_init_weights, load_init_weights, weights_file
from vidgpt.errors import ConfigError, TrainingError
from vidgpt.model import ModelConfig, VidGPT


@dataclass
class OptimizerConfig:
    """The `[optimizer]` section: AdamW and its learning-rate schedule."""

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

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optimizer.lr: must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas: expected two values in [0, 1), got {self.betas}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0 or self.eps <= 0:
            raise ConfigError("optimizer: warmup_steps, grad_clip and weight_decay must be >= 0 and eps > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optimizer.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_accum < 1:
            raise ConfigError(f"optimizer.grad_accum: must be >= 1, got {self.grad_accum}")


@dataclass
class TrainingConfig:
    """The `[training]` section: length, seed, precision and parallelism of the run."""

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
    communication_data_type). fp32 sums hundreds of ranks' gradients without bf16's 8-bit mantissa losing
    the small ones, at twice the gradient traffic; bf16 halves that traffic."""
    compile: bool = False
    """torch.compile each STDiT block (`VidGPT.compile_blocks`): faster steps on GPUs after a compile of a
    minute or so at the start; the sampler compiles the same way (vidgpt-sample --compile)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (saves memory, costs ~1/3 more compute)."""
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
    collective_timeout_s: float = 600.0
    """Process-group timeout (gloo and NCCL): a collective still waiting after this long (a rank stalled or
    gone) fails, and the trainer exits 75 so that the job is requeued and resumes from its last checkpoint."""
    stall_warning_s: float = 60.0
    """Say which step and what a rank waits for once it has waited this long and 10x a typical step."""
    peak_tflops: float = 0.0
    """Peak TFLOP/s per device for the MFU metric (0: measured on CPUs, unknown on GPUs)."""
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """Extra DeepSpeed config keys, merged over the derived config (experts only)."""

    def __post_init__(self) -> None:
        for key in ("steps", "max_bad_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"training.{key}: must be >= 1, got {getattr(self, key)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"training.zero_stage: must be 0, 1, 2 or 3, got {self.zero_stage}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"training.ema_decay: must be in [0, 1), got {self.ema_decay}")
        if self.peak_tflops < 0:
            raise ConfigError(f"training.peak_tflops: must be >= 0, got {self.peak_tflops}")
        if not 0 < self.stall_warning_s < self.collective_timeout_s:
            raise ConfigError(f"training.stall_warning_s ({self.stall_warning_s}) must be > 0 and below "
                              f"training.collective_timeout_s ({self.collective_timeout_s})")


def lr_factor(step: int, o: OptimizerConfig, total_steps: int) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based): warm-up, then the decay schedule."""
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if o.schedule == "cosine" else 1.0 - progress
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * shape


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


def make_deterministic() -> None:
    """training.deterministic: deterministic algorithms and attention backward, no cuDNN autotuning."""
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    attention.set_deterministic(True)


def deepspeed_config(t: TrainingConfig, o: OptimizerConfig, batch_size: int, precision: str,
                     load_universal: bool) -> dict[str, Any]:
    """DeepSpeed's config, derived from ours (the one source of truth) plus the expert passthrough."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": o.grad_accum,
        "gradient_clipping": o.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        # bf16: gradients accumulate in fp32 (DeepSpeed 0.19 defaults to bf16) and are reduced in the dtype
        # chosen by training.grad_reduce_dtype
        **({"data_types": {"grad_accum_dtype": "fp32"},
            "communication_data_type": t.grad_reduce_dtype} if precision == "bf16" else {}),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    return _merge(ds, t.deepspeed)


def build_engine(t: TrainingConfig, o: OptimizerConfig, model_cfg: ModelConfig,
                 ds_config: dict[str, Any], *, load_init: bool = True,
                 log: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """The network (initial weights from training.seed, the same on every rank; then, with load_init, the
    tensors of model.init_from over them), AdamW and the lr schedule wrapped by DeepSpeed as `ds_config`
    says: (engine, scheduler). Needs torch.distributed initialised. load_init False: a resume, whose
    checkpoint brings the weights.

    tests/dp_step.py trains through this on several ranks and checks the weights against one process
    with plain torch (AdamW, clip_grad_norm_, LambdaLR(lr_factor)) on the whole batch."""
    import deepspeed

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    zero3 = t.zero_stage == 3
    with deepspeed.zero.Init(config_dict_or_path=ds_config, enabled=zero3):
        model = VidGPT(model_cfg, init_weights=False)
    gather = (lambda ps: deepspeed.zero.GatheredParameters(ps, modifier_rank=0)) if zero3 else None
    model.initialize_weights(gather=gather)
    if load_init and model_cfg.init_from:
        file = weights_file(model_cfg.init_from)
        names = check_init_weights(model, file, model_cfg.init_reinit)
        count = load_init_weights(model, file, names, reads=not zero3 or torch.distributed.get_rank() == 0,
                                  gather=gather)
        if log is not None:
            kept = f"; freshly initialised: {', '.join(model_cfg.init_reinit)}" if model_cfg.init_reinit else ""
            log(f"initial weights: {count} tensors from {file}{kept}")
    model.activation_checkpointing = t.activation_checkpointing
    if t.compile:
        model.compile_blocks()
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, o, t.steps))
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=ds_config)
    return engine, scheduler


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
