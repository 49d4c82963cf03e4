"""What vidgpt-eval generates and how it measures it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from data_pipeline.synthetic import SyntheticTask
from vidgpt import metrics
from vidgpt.sampling import SamplingSpec


@dataclass(frozen=True)
class EvalSpec:
    """Held-out clips continued from their first P prompt frames for k training clip lengths (k*L frames).

    `sampling` is how the model continues them; its chunk and window, when None, are filled from
    clip_len (`SamplingSpec.for_clip_len`), so `spec.sampling.chunk` is always a number."""

    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    """The sampling settings (P = sampling.prompt_frames true frames given to the model)."""
    clip_len: int = 8
    """L: the training clip length (data.num_frames); Step-metric chunks have this length."""
    multiples: int = 4
    """k: frames generated after the prompt, in training clip lengths (k*L frames)."""
    num_clips: int = 8
    """Held-out clips (the Fréchet distances fit Gaussians over them)."""
    synthetic_seed: int = 1000
    """Seed of the held-out synthetic scenes (training data uses seed 0)."""
    task: SyntheticTask = field(default_factory=SyntheticTask)
    """How the synthetic scenes move and are drawn: the training videos' task (vidgpt-make-synthetic's)."""
    size: int = 32
    """Synthetic frame height and width (even, for yuv420p)."""
    fps: float = 8.0
    """Frame rate of the mp4 round trip of synthetic truth."""
    tolerance: float = metrics.DEFAULT_TOLERANCE
    """RGB L2 distance within which a pixel counts as the background or a palette colour."""
    blend_tolerance: float = metrics.DEFAULT_BLEND_TOLERANCE
    """RGB L2 distance within which a pixel counts as a blend of the background and a palette colour (an
    anti-aliased edge), not garbage; 0: no blends (`metrics.classify`)."""
    min_pixels: int | None = None
    """Pixels a colour needs to be present in a frame; None: `metrics.default_min_pixels`."""
    temporal_factor: int = 1
    """1: frame counts are the model's. f > 1 (`in_video_frames`): the counts of the decoded video of a
    model on video-VAE latents, whose P latent prompt frames are 1 + f(P - 1) frames and whose clip of L
    latent frames is f*L frames."""

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= {low} (got {getattr(self, name)})"
                    for name, low in (("clip_len", 2), ("multiples", 1), ("num_clips", 1), ("synthetic_seed", 0))
                    if getattr(self, name) < low]
        if not problems:  # chunk and window from the clip length; refuses prompts as long as the clip
            object.__setattr__(self, "sampling", self.sampling.for_clip_len(self.clip_len))
        if self.size < 8 or self.size % 2:
            problems.append(f"size must be an even number >= 8 (got {self.size})")
        if not (math.isfinite(self.fps) and self.fps > 0):
            problems.append(f"fps must be > 0 (got {self.fps})")
        if not self.tolerance > 0:
            problems.append(f"tolerance must be > 0 (got {self.tolerance})")
        if not (math.isfinite(self.blend_tolerance) and self.blend_tolerance >= 0):
            problems.append(f"blend_tolerance must be >= 0 (got {self.blend_tolerance})")
        if self.min_pixels is not None and self.min_pixels < 1:
            problems.append(f"min_pixels must be >= 1 (got {self.min_pixels})")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def generated_frames(self) -> int:
        """k*L frames generated after the prompt."""
        return self.multiples * self.clip_len

    @property
    def total_frames(self) -> int:
        """P + k*L frames of every truth and generated video."""
        return self.sampling.prompt_frames + self.generated_frames

    def chunk_range(self, j: int) -> tuple[int, int]:
        """[start, end) frame indices of Step-metric chunk j (0-based) of the continuation."""
        start = self.sampling.prompt_frames + j * self.clip_len
        return start, start + self.clip_len

    def in_video_frames(self, temporal_factor: int) -> EvalSpec:
        """This spec counted in decoded video frames, for a codec that turns f video frames into one
        latent frame after the first (a video VAE); itself for f = 1. The continuation then starts at frame
        1 + f(P - 1) and its Step chunks are f*L frames, exactly the frames the latent ones decode to."""
        if temporal_factor == 1 or self.temporal_factor != 1:
            return self
        f, s = temporal_factor, self.sampling
        return dataclasses.replace(self, clip_len=f * self.clip_len, temporal_factor=f,
                                   sampling=dataclasses.replace(s, prompt_frames=1 + f * (s.prompt_frames - 1)))

    def to_json(self) -> dict[str, Any]:
        """The spec as report.json records it (one flat object)."""
        s = self.sampling
        return {"prompt_frames": s.prompt_frames, "clip_len": self.clip_len, "multiples": self.multiples,
                "chunk": s.chunk, "window": s.window, "sink": s.sink, "steps": s.steps, "context_scale": s.context_scale,
                "num_clips": self.num_clips, "synthetic_seed": self.synthetic_seed, "size": self.size,
                "fps": self.fps, "tolerance": self.tolerance,
                "blend_tolerance": self.blend_tolerance, "min_pixels": self.min_pixels,
                **({} if self.task == SyntheticTask() else {"task": dataclasses.asdict(self.task)}),
                **({} if self.temporal_factor == 1 else {"temporal_factor": self.temporal_factor})}
