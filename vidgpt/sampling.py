"""Autoregressive long-video generation with (or, for reference, without) the temporal kv-cache.

    video = generate(model, diffusion, prompt, num_frames=64, chunk=8, window=25, steps=50)

With the cache: the prompt frames are written to a per-block cache of temporal keys/values by one
clean (t=0) pass; every denoising step runs the network on the current chunk only, attending to
cache + chunk; a finished chunk is written to the cache by one more clean pass. The cache is a
sliding window of at most `window` frames. Without the cache, every denoising step recomputes the
whole window: the last `window` finished frames at t=0 followed by the chunk. The two agree to
float32 round-off until the first eviction, after which they differ by design (cached keys of
deeper blocks remember evicted frames).

Attention sink (`sink` s > 0): the first s frames of the video (prompt frames) stay visible whatever
the window evicts. They count within the window: a chunk attends to those s frames and the newest
window - s finished frames, presented at contiguous positions (the sink right before the oldest recent
frame, `vidgpt.kv_cache`), so neither the span nor any distance exceeds what the model trained on.
Without the cache the recomputed context is built the same way. Until the first eviction the sink
changes nothing.

Classifier-free guidance batches the conditional and the null-text branch together: rows [0, B) of
every call (and of the cache) are the conditional branch, rows [B, 2B) the null-text branch, so the
null-text branch has its own cache entries.

Context guidance (`context_scale` s != 1) is classifier-free guidance on the earlier frames instead of
the caption: every denoising step also runs the network on the chunk alone, without any earlier frame
(no cache, no window), and moves the prediction to u + s (c - u), c with the context, u without. It
needs a model trained with some 0-frame prompts (`FramePromptObjective.prompt_min_len` 0), which has
learned u; it costs a second network call per step.

Context noise (`context_noise` u > 0, Diffusion Forcing's stabilisation, SkyReels-V2's
addnoise_condition): every generated frame enters the context noised to the fraction u of the noise
range and labelled with that time, so later chunks lean less on its fine errors. Prompt frames stay
clean. The noise is drawn from the sampler's generator after each chunk that later chunks see (not after
the last), in the same order with and without the cache. It needs a model that saw noisy earlier frames
in training (per-frame noise).

Fractional context guidance (`context_guidance_noise` h > 0, the fractional History Guidance of DFoT,
Song et al. 2025): the unguided prediction of context guidance sees the earlier frames noised to the
fraction h of the noise range (labelled with that time) instead of no earlier frame, so guidance pushes
only along what the noise removes from them (their fine detail: outlines, exact positions) and keeps what
it leaves (colours, coarse layout). With the cache it has a second kv-cache of its own, written with the
noised frames; each frame is noised once, with noise drawn from the sampler's generator (the prompt's
before the first chunk, each chunk's after it, after the context-noise draw), the same with and without
the cache. It needs context_scale != 1 and a model trained with per-frame noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from vidgpt.diffusion import Diffusion
from vidgpt.kv_cache import TemporalKVCache
from vidgpt.model import VidGPT, model_stats, text_mask_or_none

PRECISIONS = ("auto", "fp32", "bf16")


def default_chunk(clip_len: int) -> int:
    """Frames per autoregressive chunk when not given: half the training clip, at most 8 (the
    paper's 33-frame clips: chunk 8 with a 25-frame window)."""
    return max(1, min(8, clip_len // 2))


@dataclass(frozen=True)
class SamplingSpec:
    """How a trained model continues a prompt: the one set of sampling settings of the trainer's
    `[eval.sampling]`, of vidgpt-eval and of vidgpt-sample (whose flags have the fields' names).
    chunk and window None are derived from the training clip length by `for_clip_len`."""

    prompt_frames: int = 2
    """True frames each video starts from (fewer than the training clip length). Like every frame count of
    the model, in latent frames: with a video VAE (wan-vae) P latent frames are 1 + 4(P - 1) video frames."""
    chunk: int | None = None
    """Frames denoised together; derived: half the training clip length, at most 8."""
    window: int | None = None
    """Finished frames a chunk attends to (the kv-cache size); derived: training clip length - chunk."""
    sink: int = 0
    """Attention sink: the first `sink` prompt frames stay in the window whatever it evicts, presented right
    before the newest window - sink frames (they count within the window; at most prompt_frames; 0: none)."""
    steps: int = 25
    """Denoising steps per chunk."""
    context_scale: float = 1.0
    """Guidance on the earlier frames: each step also predicts the chunk without them and moves away from
    that by this factor (1 = none; needs a model trained with 0-frame prompts; 2 network calls per step)."""
    cfg_scale: float = 1.0
    """Classifier-free guidance on the caption (1 = none; used when captions are given)."""
    kv_cache: bool = True
    """Keep the earlier frames' keys and values (false: recompute the window at every step, the reference)."""
    context_noise: float = 0.0
    """Generated frames enter the context noised to this fraction of the noise range and labelled with that
    time (prompt frames stay clean; 0 = clean context; for models trained with per-frame noise)."""
    context_guidance_noise: float = 0.0
    """Context guidance's unguided prediction sees the earlier frames noised to this fraction of the noise range
    instead of none (fractional history guidance; 0 = none; needs context_scale != 1 and per-frame noise)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Network precision: auto is bf16 on GPUs of compute capability >= 8.0, fp32 elsewhere; the
    sampler's state stays fp32."""

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= 1 (got {getattr(self, name)})" for name in ("prompt_frames", "steps")
                    if getattr(self, name) < 1]
        problems += [f"{name} must be >= 1 (got {getattr(self, name)})" for name in ("chunk", "window")
                     if getattr(self, name) is not None and getattr(self, name) < 1]
        if self.sink < 0:
            problems.append(f"sink must be >= 0 (got {self.sink})")
        elif self.sink > self.prompt_frames:
            problems.append(f"sink ({self.sink}) must be <= prompt_frames ({self.prompt_frames}): the sink holds "
                            "prompt frames")
        if self.sink > 0 and self.window is not None and self.sink >= self.window:
            problems.append(f"sink ({self.sink}) must be < window ({self.window}): the sink counts within the window")
        for name in ("context_scale", "cfg_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a number > 0 (1 = no guidance), got {value}")
        if not (math.isfinite(self.context_noise) and 0 <= self.context_noise < 1):
            problems.append(f"context_noise must be a number in [0, 1), got {self.context_noise}")
        if not (math.isfinite(self.context_guidance_noise) and 0 <= self.context_guidance_noise < 1):
            problems.append(f"context_guidance_noise must be a number in [0, 1), got {self.context_guidance_noise}")
        elif self.context_guidance_noise and self.context_scale == 1.0:
            problems.append("context_guidance_noise needs context guidance (context_scale != 1): it sets what the "
                            "unguided prediction sees")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def for_clip_len(self, clip_len: int, *, refuse_long_prompts: bool = True) -> SamplingSpec:
        """This spec for a model trained on clips of `clip_len` frames: chunk and window filled in;
        ValueError when the prompt is not shorter than the clip (the model never saw longer ones), unless
        refuse_long_prompts is false (vidgpt-sample continues any prompt it is given)."""
        if refuse_long_prompts and self.prompt_frames >= clip_len:
            raise ValueError(f"prompt_frames ({self.prompt_frames}) must be < the training clip length "
                             f"({clip_len}): the model never saw longer prompts")
        chunk = default_chunk(clip_len) if self.chunk is None else self.chunk
        window = max(1, clip_len - chunk) if self.window is None else self.window
        return replace(self, chunk=chunk, window=window)


def chunks(prompt_frames: int, num_frames: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(first frame index, size) of each generated chunk; the last one may be shorter."""
    for start in range(prompt_frames, prompt_frames + num_frames, chunk):
        yield start, min(chunk, prompt_frames + num_frames - start)


@dataclass(frozen=True)
class ModelCall:
    new_frames: int
    """Frames the network runs on."""
    cached_frames: int
    """Frames whose cached keys/values the temporal attention also reads."""


def model_calls(
    prompt_frames: int, num_frames: int, *, chunk: int, window: int, steps: int, use_cache: bool,
    context_guided: bool = False, fractional: bool = False,
) -> list[ModelCall]:
    """Every network call `generate` makes, in order (for FLOP accounting); context_guided: with
    context_scale != 1 (one more call on the chunk alone per step of every chunk after frame 0);
    fractional: with context_guidance_noise > 0 (that call also reads the noised earlier frames, and the
    cache of them is written as the main one is)."""
    calls: list[ModelCall] = []
    fractional = fractional and context_guided
    writes = 2 if fractional else 1
    if use_cache and prompt_frames:
        calls += [ModelCall(prompt_frames, 0)] * writes
    plan = list(chunks(prompt_frames, num_frames, chunk))
    for i, (start, size) in enumerate(plan):
        context = min(start, window)  # finished frames visible to this chunk
        step = [ModelCall(size, context) if use_cache else ModelCall(context + size, 0)]
        if context_guided and start > 0:  # the chunk without earlier frames, or with them noised
            step.append((ModelCall(size, context) if use_cache else ModelCall(context + size, 0)) if fractional
                        else ModelCall(size, 0))
        calls += step * steps
        if use_cache and i + 1 < len(plan):
            calls += [ModelCall(size, context)] * writes  # write the finished chunk
    return calls


def generation_flops(
    model: VidGPT, prompt: Tensor, num_frames: int, *, chunk: int, window: int, steps: int,
    use_cache: bool, guided: bool = False, context_guided: bool = False, fractional: bool = False,
) -> int:
    """Analytic forward FLOPs of one `generate` call (guided: cfg_scale != 1; context_guided:
    context_scale != 1; fractional: context_guidance_noise > 0)."""
    B, P, _, H, W = prompt.shape
    return sum(
        model_stats(
            model.cfg, c.new_frames, H, W, batch=B * (2 if guided else 1),
            cached_frames=c.cached_frames,
        ).flops
        for c in model_calls(P, num_frames, chunk=chunk, window=window, steps=steps, use_cache=use_cache,
                             context_guided=context_guided, fractional=fractional)
    )


@torch.no_grad()
def generate(
    model: VidGPT,
    diffusion: Diffusion,
    prompt: Tensor,
    num_frames: int,
    *,
    chunk: int,
    window: int,
    steps: int,
    text: Tensor | None = None,
    text_mask: Tensor | None = None,
    cfg_scale: float = 1.0,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
    autocast: torch.dtype | None = None,
    context_scale: float = 1.0,
    sink: int = 0,
    context_noise: float = 0.0,
    context_guidance_noise: float = 0.0,
    on_chunk: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """Generate `num_frames` frames after `prompt` (B, P, C, H, W); returns (B, P + num_frames, C, H, W).
    P may be 0 (text to video, for models trained with 0-frame prompts: `FramePromptObjective.prompt_min_len` 0).

    chunk: frames denoised together; window: most finished frames a chunk attends to (the cache size);
    steps: denoising steps per chunk; cfg_scale != 1 applies classifier-free guidance against the null
    text (needs `text`); progress(frames_done, num_frames) is called after each chunk.
    autocast: run the network under torch.autocast in this dtype (bf16 on GPUs); the sampler's state,
    the noise and the update stay in float32 whatever the network computes in, so rounding does not
    accumulate over the steps. The result is float32 (float64 for a float64 prompt).
    context_scale: guidance on the earlier frames (see the module docstring); 1 = none. A chunk with no
    earlier frame (the first one of text to video) is not guided: there is nothing to guide on.
    sink: the first `sink` prompt frames stay in every chunk's context, within the window (see the module
    docstring); 0 <= sink <= P, and sink < window when > 0; 0 = none.
    context_noise: generated frames enter the context noised to this fraction of the noise range, labelled
    with that time (see the module docstring); 0 = clean.
    context_guidance_noise: context guidance's unguided prediction sees the earlier frames noised to this
    fraction of the noise range instead of none (see the module docstring); 0 = none; needs context_scale != 1.
    on_chunk(frames): called with the prompt (when P > 0) and then each finished chunk (B, n, C, H, W), in
    order, so that a caller can decode the video while it is generated.
    """
    if prompt.ndim != 5:
        raise ValueError(f"prompt must be (B, P, C, H, W) latents, got {tuple(prompt.shape)}")
    if chunk < 1 or window < 1 or steps < 1 or num_frames < 0:
        raise ValueError(f"need chunk, window, steps >= 1 and num_frames >= 0; got {chunk}, {window}, {steps}, {num_frames}")
    if use_cache and not model.cfg.causal:
        raise ValueError(
            "use_cache=True needs a causal model; this one has temporal='bidirectional', whose every frame "
            "sees later ones, so sample it with use_cache=False (the window is recomputed at every step)"
        )
    if not (math.isfinite(context_scale) and context_scale > 0):
        raise ValueError(f"context_scale must be a finite number > 0 (1 = no context guidance), got {context_scale}")
    if sink < 0 or (sink and sink >= window):
        raise ValueError(f"sink ({sink}) must be >= 0 and < window ({window}): the sink counts within the window")
    if not (math.isfinite(context_noise) and 0 <= context_noise < 1):
        raise ValueError(f"context_noise must be a number in [0, 1), got {context_noise}")
    if not (math.isfinite(context_guidance_noise) and 0 <= context_guidance_noise < 1):
        raise ValueError(f"context_guidance_noise must be a number in [0, 1), got {context_guidance_noise}")
    if context_guidance_noise and context_scale == 1.0:
        raise ValueError("context_guidance_noise needs context guidance (context_scale != 1)")
    if sink > prompt.shape[1]:
        raise ValueError(f"sink ({sink}) must be <= the prompt frames ({prompt.shape[1]}): the sink holds prompt frames")
    guided = cfg_scale != 1.0
    if guided and text is None:
        raise ValueError("classifier-free guidance (cfg_scale != 1) needs text")
    B, P = prompt.shape[:2]
    schedule = diffusion.schedule(steps)
    prompt = prompt.to(torch.promote_types(prompt.dtype, torch.float32))  # the state: fp32 (or fp64) always
    text_mask = text_mask_or_none(text_mask)  # read once per call, not per network call

    # conditioning of every call; with CFG rows [B, 2B) are the null-text branch
    cond: dict[str, Tensor | None] = {"text": text, "text_mask": text_mask}
    rows = B
    if guided:
        rows = 2 * B
        cond = {
            "text": torch.cat([text, text]),
            "text_mask": None if text_mask is None else torch.cat([text_mask, text_mask]),
            "drop_text": torch.arange(2 * B, device=prompt.device) >= B,
        }

    def both(x: Tensor) -> Tensor:
        return torch.cat([x, x]) if guided else x

    def net(x: Tensor, t: Tensor, **kw: object) -> Tensor:
        with torch.autocast(prompt.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            return model(both(x), t.expand(rows, -1), **cond, **kw).to(prompt.dtype)

    def guide(out: Tensor) -> Tensor:
        if not guided:
            return out
        c, u = out.chunk(2)
        return u + cfg_scale * (c - u)

    def zeros(n: int) -> Tensor:
        return torch.zeros(1, n, device=prompt.device)

    cache = TemporalKVCache(window, sink=sink, rope_theta=model.cfg.rope_theta,
                            rope_dims=model.cfg.rope_dims[0]) if use_cache else None
    if cache is not None and P:  # P = 0: text to video, the first chunk starts from noise alone
        net(prompt, zeros(P), cache=cache, write_cache=True)

    # fractional context guidance: what the unguided prediction sees of the finished frames, noised once each
    fractional = context_guidance_noise > 0
    free_cache = TemporalKVCache(window, sink=sink, rope_theta=model.cfg.rope_theta,
                                 rope_dims=model.cfg.rope_dims[0]) if use_cache and fractional else None
    free_seen: list[Tensor] = []  # without the cache: the noised frames and their (1, n) model times
    free_seen_t: list[Tensor] = []

    def show_unguided(done_frames: Tensor) -> None:
        n = done_frames.shape[1]
        t_free = diffusion.time_at(torch.full((B, n), context_guidance_noise, device=prompt.device))
        eps = torch.randn(done_frames.shape, generator=generator, device=prompt.device, dtype=prompt.dtype)
        noised, t_label = diffusion.add_noise(done_frames, eps, t_free), diffusion.model_time(t_free[:1])
        if free_cache is not None:
            net(noised, t_label, cache=free_cache, write_cache=True)
        else:
            free_seen.append(noised)
            free_seen_t.append(t_label)

    if fractional and P:
        show_unguided(prompt)

    frames = [prompt]  # what the video is
    if on_chunk is not None and P:
        on_chunk(prompt)
    seen = [prompt]  # what later chunks see of it: generated frames noised by context_noise
    seen_t = [zeros(P)]  # (1, F) their model times
    t_seen = diffusion.time_at(torch.tensor(context_noise, device=prompt.device)) if context_noise else None
    done = 0
    plan = list(chunks(P, num_frames, chunk))
    for i, (start, size) in enumerate(plan):
        shape = (B, size, *prompt.shape[2:])
        x = torch.randn(shape, generator=generator, device=prompt.device, dtype=prompt.dtype)  # fp32 or fp64
        if cache is None:  # (B, <=W, C, H, W) and (1, <=W)
            context = _context(torch.cat(seen, dim=1), window, sink)
            context_t = _context(torch.cat(seen_t, dim=1), window, sink)
            if free_seen:
                free_context = _context(torch.cat(free_seen, dim=1), window, sink)
                free_context_t = _context(torch.cat(free_seen_t, dim=1), window, sink)
        for t, t_next in schedule:
            t_model = diffusion.model_time(torch.full((1, size), t, device=prompt.device))
            if cache is not None:
                out = net(x, t_model, cache=cache)
            else:
                n_ctx = context.shape[1]
                t_all = torch.cat([context_t, t_model], dim=1)
                out = net(torch.cat([context, x], dim=1), t_all, frame_offset=start - n_ctx)[:, n_ctx:]
            if context_scale != 1.0 and start > 0:  # the same chunk without any earlier frame, or with them noised
                if not fractional:
                    free = net(x, t_model, frame_offset=start)
                elif free_cache is not None:
                    free = net(x, t_model, cache=free_cache)
                else:
                    n_free = free_context.shape[1]
                    free = net(torch.cat([free_context, x], dim=1), torch.cat([free_context_t, t_model], dim=1),
                               frame_offset=start - n_free)[:, n_free:]
                out = free + context_scale * (out - free)
            noise = None
            if diffusion.needs_step_noise():
                noise = torch.randn(shape, generator=generator, device=prompt.device, dtype=prompt.dtype)
            x = diffusion.step(guide(out), x, t, t_next, noise)
        frames.append(x)
        if on_chunk is not None:
            on_chunk(x)
        if i + 1 < len(plan):  # later chunks see this one
            x_seen, t_x = x, zeros(size)
            if t_seen is not None:
                eps = torch.randn(shape, generator=generator, device=prompt.device, dtype=prompt.dtype)
                x_seen = diffusion.add_noise(x, eps, t_seen.expand(B, size))
                t_x = diffusion.model_time(t_seen.expand(1, size))
            if cache is not None:
                net(x_seen, t_x, cache=cache, write_cache=True)
            else:
                seen.append(x_seen)
                seen_t.append(t_x)
            if fractional:
                show_unguided(x)
        done += size
        if progress is not None:
            progress(done, num_frames)
    return torch.cat(frames, dim=1)


def generate_as(
    spec: SamplingSpec,
    model: VidGPT,
    diffusion: Diffusion,
    prompt: Tensor,
    num_frames: int,
    *,
    generator: torch.Generator | None = None,
    text: Tensor | None = None,
    text_mask: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    autocast: torch.dtype | None = None,
    on_chunk: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """`generate` with a spec's settings (chunk and window filled in: `SamplingSpec.for_clip_len`): caption
    guidance only when there is a caption, the kv-cache when the spec asks for it and the model is causal
    (a bidirectional model can only recompute the window). autocast: the network's dtype, for a command
    `sampling_autocast(spec.precision, device)`."""
    if spec.chunk is None or spec.window is None:
        raise ValueError("generate_as needs a spec with chunk and window (SamplingSpec.for_clip_len)")
    return generate(
        model, diffusion, prompt, num_frames, chunk=spec.chunk, window=spec.window, steps=spec.steps,
        text=text, text_mask=text_mask, cfg_scale=spec.cfg_scale if text is not None else 1.0,
        use_cache=spec.kv_cache and model.cfg.causal, generator=generator, progress=progress, autocast=autocast,
        context_scale=spec.context_scale, sink=spec.sink, context_noise=spec.context_noise,
        context_guidance_noise=spec.context_guidance_noise, on_chunk=on_chunk,
    )


def _context(finished: Tensor, window: int, sink: int) -> Tensor:
    """The frames a chunk attends to, recomputed without the cache: of finished (B, F, C, H, W), the last
    `window` frames, or once F > window with a sink, the first `sink` then the newest `window - sink`
    ones -> (B, min(F, window), C, H, W). Given contiguous positions, as the kv-cache presents them."""
    if finished.shape[1] <= window or not sink:
        return finished[:, -window:]
    return torch.cat([finished[:, :sink], finished[:, finished.shape[1] - (window - sink) :]], dim=1)


def sampling_autocast(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The `autocast` of `generate` for a --precision choice: auto is bf16 on GPUs of compute capability
    >= 8.0 and fp32 (None) elsewhere; bf16 is refused where the GPU has no bf16."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        if precision == "bf16":
            raise ValueError(f"precision bf16 needs compute capability >= 8.0; {device} has "
                             f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}")
        return None
    return torch.bfloat16


def frames_before_eviction(prompt_frames: int, num_frames: int, *, chunk: int, window: int) -> int:
    """How many generated frames were denoised while the cache had evicted nothing; on these, cached
    and uncached generation must agree to round-off (with or without a sink, which counts within the
    window and so changes nothing here)."""
    return sum(size for start, size in chunks(prompt_frames, num_frames, chunk) if start <= window)
