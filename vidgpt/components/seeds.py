"""Every random stream of training, derived from one seed formula.

    streams = RandomStreams.for_training(seed=0, rank=1, device=torch.device("cpu"))

A stream's seed is `derive_seed(seed, rank, purpose, step)`: distinct for every rank and purpose, and,
for streams restarted at a step (a resume on another number of ranks), for every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch


class Stream(IntEnum):
    """What a random stream draws."""

    NOISE = 1
    """Training noise, timesteps, prompt noise and text dropout (on the training device)."""
    PROMPT = 2
    """Training prompt lengths (CPU)."""
    EVAL_NOISE = 3
    """Validation noise and timesteps (the same at every evaluation)."""
    EVAL_PROMPT = 4
    """Validation prompt lengths."""


def derive_seed(seed: int, rank: int, stream: Stream, step: int = 0) -> int:
    """The seed of one stream of one rank; `step` > 0 for streams restarted at that step."""
    return seed * 1_000_003 + 7919 * rank + 104_729 * step + int(stream)


@dataclass
class RandomStreams:
    """The two generators a loss draws from: `noise` on the training device, `prompt` on the CPU."""

    noise: torch.Generator
    prompt: torch.Generator

    @classmethod
    def for_training(cls, seed: int, rank: int, device: torch.device, step: int = 0) -> RandomStreams:
        """Training's streams of `rank`; step > 0: restarted at that step (resume on another world size)."""
        return cls(torch.Generator(device).manual_seed(derive_seed(seed, rank, Stream.NOISE, step)),
                   torch.Generator().manual_seed(derive_seed(seed, rank, Stream.PROMPT, step)))

    @classmethod
    def for_validation(cls, seed: int, rank: int, device: torch.device) -> RandomStreams:
        """Validation's streams of `rank`: the same at every evaluation, apart from training's."""
        return cls(torch.Generator(device).manual_seed(derive_seed(seed, rank, Stream.EVAL_NOISE)),
                   torch.Generator().manual_seed(derive_seed(seed, rank, Stream.EVAL_PROMPT)))

    def state_dict(self) -> dict[str, Any]:
        return {"noise_gen": self.noise.get_state(), "prompt_gen": self.prompt.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.noise.set_state(state["noise_gen"].to(torch.uint8))
        self.prompt.set_state(state["prompt_gen"].to(torch.uint8))
