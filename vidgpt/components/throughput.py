"""Throughput of training: step time, samples and tokens per second, the share of time spent waiting for
data, model FLOP utilisation (MFU) and peak memory, over the steps since the last report.

    meter = Throughput(peak_flops=1e12, world=2, device=torch.device("cpu"))
    meter.waited(seconds); meter.step_done()                        # every step
    figures = meter.report(StepCost(samples=8, tokens=512, flops=3e9))  # once per logging interval
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vidgpt.model import ModelConfig, model_stats


def measured_cpu_peak_flops(size: int = 2048, trials: int = 5) -> float:
    """FLOP/s of a large float32 matmul on this process's threads (best of a few): the CPU 'peak' for MFU."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process: allocated CUDA memory on a GPU, the resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


@dataclass
class StepCost:
    """What one optimizer step processes, over all ranks."""

    samples: int
    """Clips per optimizer step (batch size x accumulation x ranks)."""
    tokens: int
    """Tokens per optimizer step (samples x frames x tokens per frame)."""
    flops: float
    """Model FLOP per optimizer step (forward and backward: 3x the forward)."""

    @classmethod
    def of(cls, model: ModelConfig, frames: int, lat_h: int, lat_w: int, samples: int) -> StepCost:
        """The cost of a step of `samples` clips of `frames` latent frames of lat_h x lat_w."""
        tokens = samples * frames * (lat_h // model.patch) * (lat_w // model.patch)
        return cls(samples, tokens, 3 * model_stats(model, frames, lat_h, lat_w, batch=samples).flops)


class Throughput:
    """Figures over a window of optimizer steps; time outside the steps (validation) is excluded with
    `exclude`. peak_flops: per device (0: MFU not reported)."""

    def __init__(self, peak_flops: float, world: int, device: torch.device,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.peak_flops = peak_flops
        self.world = world
        self.device = device
        self.clock = clock
        self.start = self.clock()
        self.steps = 0
        self.waiting = 0.0

    @classmethod
    def for_device(cls, peak_tflops: float, world: int, device: torch.device) -> Throughput:
        """peak_tflops: training.peak_tflops (0: measured on CPUs, unknown on GPUs: no MFU)."""
        peak = peak_tflops * 1e12 if peak_tflops else (0.0 if device.type == "cuda" else measured_cpu_peak_flops())
        return cls(peak, world, device)

    def restart(self) -> None:
        """A new window from now (the loop's start)."""
        self.start, self.steps, self.waiting = self.clock(), 0, 0.0

    def exclude(self, seconds: float) -> None:
        """Time spent on something else (validation) inside the window: not counted as steps'."""
        self.start += seconds

    def waited(self, seconds: float) -> None:
        """Time a step spent waiting for its batch."""
        self.waiting += seconds

    def step_done(self) -> None:
        self.steps += 1

    def report(self, cost: StepCost) -> dict[str, float]:
        """Figures over the steps since the last report (or the start), then a new window begins."""
        now = self.clock()
        elapsed = now - self.start
        dt = elapsed / self.steps
        values = {"step_time": dt, "samples_per_s": cost.samples / dt, "tokens_per_s": cost.tokens / dt,
                  "data_wait_frac": self.waiting / elapsed, "memory_gb": peak_memory_gb(self.device)}
        if self.peak_flops:
            values["mfu"] = cost.flops / dt / (self.peak_flops * self.world)
        self.start, self.steps, self.waiting = now, 0, 0.0
        return values
