"""Helpers shared by the tests and the benchmarks."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_weights_(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Add seeded Gaussian noise to every parameter, in place.

    A freshly initialised ViD-GPT predicts exactly zero (zero-initialised gates and output layer), which
    would make causality and cache checks pass vacuously; with noise every path carries signal.
    """
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p) * std)
    return model
