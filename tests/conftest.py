from __future__ import annotations

import dataclasses

import pytest
import torch

from vidgpt.model import FLAVORS, ModelConfig, VidGPT
from vidgpt.testing import randomize_weights_

TINY: ModelConfig = FLAVORS["tiny"]
TINY_NO_TEXT: ModelConfig = dataclasses.replace(TINY, text_dim=0)


def tiny_model(text: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32) -> VidGPT:
    """The tiny flavor with random non-zero weights (a fresh model predicts exactly zero)."""
    torch.manual_seed(seed)
    model = VidGPT(TINY if text else TINY_NO_TEXT)
    return randomize_weights_(model, seed=seed).to(dtype).eval()


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(1234)
