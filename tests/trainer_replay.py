"""The trainer's own loop, recorded (tests/test_train.py runs it on 1 rank and replays it).

    python -m torch.distributed.run --nproc_per_node 1 tests/trainer_replay.py OUT --config C [--key=value ...]

Runs `vidgpt.trainer.Trainer` as `vidgpt-train` does, recording before every micro-step the batch and the
states of the trainer's two generators (prompt lengths, noise), and writes to OUT the records, the
final weights and the final EMA. `replay(cfg, records)` then trains one plain-torch model on exactly
those batches and random draws (AdamW, clip_grad_norm_, LambdaLR(lr_factor), an EMA by lerp): the
trainer's step, glue included, must be that loop's step.
"""

from __future__ import annotations

import copy
import sys
import warnings
from typing import Any

import torch

from vidgpt import distributed
from vidgpt.components.engine import lr_factor
from vidgpt.config import Config, load_config
from vidgpt.diffusion import build_diffusion
from vidgpt.model import VidGPT, text_mask_or_none
from vidgpt.objective import LossBatch
from vidgpt.trainer import Trainer

KEYS = ("latents", "valid", "text", "text_mask")


class RecordingTrainer(Trainer):
    records: list[dict[str, Any]]

    def micro_step(self, batch: dict[str, Any], stop: Any = None) -> torch.Tensor | None:
        self.records.append({"batch": {k: batch[k].clone() for k in KEYS if batch.get(k) is not None},
                             **self.streams.state_dict()})
        return super().micro_step(batch, stop)


def replay(cfg: Config, records: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights, EMA) of one process of plain torch after the recorded steps (one micro-batch per step)."""
    o, objective, model_cfg = cfg.optimizer, cfg.objective, cfg.model
    torch.manual_seed(cfg.training.seed)
    model = VidGPT(model_cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    diffusion = build_diffusion(cfg.diffusion)
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, o, cfg.training.steps))
    noise_gen, prompt_gen = torch.Generator(), torch.Generator()
    for r in records:
        b = r["batch"]
        noise_gen.set_state(r["noise_gen"])
        prompt_gen.set_state(r["prompt_gen"])
        x0 = b["latents"]
        limit = int(b["valid"].sum(dim=1).min()) - 1
        text = b.get("text") if model_cfg.text_dim else None
        batch = LossBatch(x0, b["valid"], text, None if text is None else text_mask_or_none(b.get("text_mask")),
                          prompt_limit=limit)
        # latents and captions are stored as fp16; fp32 training casts the input
        loss = objective.loss(model, diffusion, batch, noise_gen, prompt_gen, input_dtype=torch.float32)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - cfg.training.ema_decay)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    return weights, {k: v.detach().clone() for k, v in ema.named_parameters()}


def main(argv: list[str]) -> int:
    import deepspeed

    warnings.filterwarnings("ignore", category=FutureWarning)
    out, rest = argv[0], argv[1:]
    config = rest[rest.index("--config") + 1] if "--config" in rest else None
    cfg = load_config(config, [a for a in rest if a not in ("--config", config)])
    trainer = RecordingTrainer(cfg, None)
    trainer.records = []
    try:
        trainer.setup()
        trainer.train()
        module = trainer.engine.module
        with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=cfg.training.zero_stage == 3):
            weights = {k: v.detach().clone() for k, v in module.named_parameters()}
        assert trainer.ema is not None and trainer.env.world == 1
        ema = {name: shard.flatten()[: v.numel()].view(v.shape).clone()  # 1 rank: the shard is the whole tensor
               for shard, (name, _), v in zip(trainer.ema.shards, trainer.ema.named, weights.values())}
        torch.save({"records": trainer.records, "weights": weights, "ema": ema}, out)
    finally:
        trainer.close()
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
