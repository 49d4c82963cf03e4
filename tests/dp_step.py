"""One rank of the data-parallel equivalence check (tests/test_train.py runs it on 2 ranks).

    python -m torch.distributed.run --nproc_per_node 2 tests/dp_step.py OUT [--key=value ...]

Every rank builds the fixed global batches of `batches()` (the same on every rank), keeps its share of
each (rank r: clips [r*b, (r+1)*b) with b = data.batch_size), and trains through the trainer's own
`vidgpt.components.engine.build_engine` (DeepSpeed with the trainer's config, ZeRO-3 unless overridden). The loss
of a clip is a function of the clip alone (fixed noise and time), so DeepSpeed's average over ranks of
the per-rank means is the mean over the global batch. Rank 0 writes the gathered weights to OUT, for
the test to compare with one process of plain torch on the whole batches (`reference()`).
"""

from __future__ import annotations

import sys
import warnings

import torch

from vidgpt import distributed
from vidgpt.components.engine import build_engine, deepspeed_config, lr_factor
from vidgpt.config import Config, load_config
from vidgpt.diffusion import DiffusionConfig, build_diffusion
from vidgpt.model import VidGPT

STEPS = 3
FLOW = build_diffusion(DiffusionConfig(process="flow", prediction="x0"))


def batches(cfg: Config, world: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """STEPS global batches of (x0, noise, t): (world*b, T, C, H, W) twice and (world*b, T)."""
    m = cfg.model
    g = torch.Generator().manual_seed(1234)
    n, T, s = world * cfg.data.batch_size, cfg.data.num_frames, 8 * m.patch
    out = []
    for _ in range(STEPS):
        x0 = torch.rand(n, T, m.in_channels, s, s, generator=g) * 2 - 1
        noise = torch.randn(x0.shape, generator=g)
        t = torch.rand(n, T, generator=g)
        t[:, 0] = 0  # a clean prompt frame
        out.append((x0, noise, t))
    return out


def clip_losses(model: torch.nn.Module, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The x0 error of each clip's noisy frames: (B,)."""
    pred = model(FLOW.add_noise(x0, noise, t), FLOW.model_time(t))
    return (pred - x0).pow(2)[:, 1:].mean(dim=(1, 2, 3, 4))


def initial(cfg: Config) -> dict[str, torch.Tensor]:
    """The weights before any step (what the trainer starts from)."""
    torch.manual_seed(cfg.training.seed)
    return {k: v.detach().clone() for k, v in VidGPT(cfg.model).state_dict().items()}


def reference(cfg: Config, world: int) -> dict[str, torch.Tensor]:
    """The weights after STEPS steps of one process on the whole global batches, in plain torch."""
    o = cfg.optimizer
    torch.manual_seed(cfg.training.seed)
    model = VidGPT(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, o, cfg.training.steps))
    for x0, noise, t in batches(cfg, world):
        opt.zero_grad(set_to_none=True)
        clip_losses(model, x0, noise, t).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        sched.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(argv: list[str]) -> int:
    import deepspeed

    warnings.filterwarnings("ignore", category=FutureWarning)
    out, overrides = argv[0], argv[1:]
    cfg = load_config(None, overrides)
    env = distributed.detect_env()
    device, backend = distributed.accelerator_device(env.local_rank)
    distributed.init(env, backend)
    t = cfg.training
    engine, _ = build_engine(t, cfg.optimizer, cfg.model,
                             deepspeed_config(t, cfg.optimizer, cfg.data.batch_size, "fp32", False))
    b = cfg.data.batch_size
    for x0, noise, times in batches(cfg, env.world):
        share = slice(env.rank * b, (env.rank + 1) * b)
        loss = clip_losses(engine, x0[share], noise[share], times[share]).mean()
        engine.backward(loss)
        engine.step()
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=cfg.training.zero_stage == 3):
        if env.rank == 0:
            torch.save({k: v.detach().clone() for k, v in engine.module.state_dict().items()}, out)
    distributed.shutdown()  # a rank that exits with gloo's threads alive can abort (SIGABRT) on the way out
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
