"""ViD-GPT: a causal spatial-temporal diffusion transformer (STDiT) on video latents.

Pure model math: no I/O, no logging, no distributed code.

    from vidgpt.model import FLAVORS, VidGPT
    model = VidGPT(FLAVORS["tiny"])
    eps = model(x, t)            # x: (B, T, C, H, W) latents, t: (B, T) per-frame timesteps

Each block: spatial self-attention inside every frame (bidirectional) -> causal temporal
self-attention across frames at every spatial position (RoPE on temporal q/k) -> cross-attention to
text (optional) -> MLP. adaLN-single modulation from per-frame timesteps, so clean prompt frames carry
t=0 while noisy frames carry t. Frame i of the output depends only on frames <= i of the input, which
is what makes the temporal kv-cache (`vidgpt.kv_cache`) exact.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from vidgpt.attention import attention, causal_mask
from vidgpt.kv_cache import TemporalKVCache, apply_rope, rope_angles  # RoPE lives with the cache, which re-rotates

NUM_MODULATIONS = 9  # (shift, scale, gate) x (spatial attention, temporal attention, MLP)


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a ViD-GPT network."""

    depth: int
    """Number of STDiT blocks."""
    hidden: int
    """Token width."""
    heads: int
    """Attention heads (hidden must divide by heads; head dim must be even for RoPE)."""
    patch: int = 2
    """Spatial patch size p; patches are (1, p, p): no temporal patching, one token row per frame."""
    in_channels: int = 4
    """Latent channels C (4 for the SD VAE, 3 for the identity codec)."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of `hidden`."""
    text_dim: int = 4096
    """Width of the text-encoder embeddings (T5-XXL: 4096); 0 disables cross-attention."""
    text_len: int = 120
    """Most text tokens a caption may have (length of the learned null embedding)."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep features."""
    rope_theta: float = 10000.0
    """RoPE base of the temporal attention."""
    temporal: Literal["causal", "bidirectional"] = "causal"
    """causal: frame i attends to frames <= i (ViD-GPT; enables the kv-cache). bidirectional: every frame
    attends to every frame of the call, the baseline that conditions each chunk on earlier frames by
    recomputing the whole window (no kv-cache is possible)."""
    temporal_scope: Literal["position", "frame"] = "position"
    """Which tokens of the frames it may see a token's temporal attention reads. position: the token at its
    own spatial position in each of them (STDiT's factorized attention, the paper's). frame: every token of
    each of them (space-time attention at frame granularity, as Wan-based causal generators use), so a
    token can follow a shape that moves to another patch or behind another shape; the scores grow with
    (frames x tokens per frame)^2 instead of frames^2 x tokens per frame. Its RoPE is 3D: a third of each
    head's pairs rotate by the token's row and column (`rope_dims`), so scores see spatial offsets as
    they see time offsets. Same parameters and kv-cache."""
    refine: int = 0
    """Channels of a convolutional refinement of the output (U-ViT's final 3x3 convolution, here residual: 3x3
    conv C -> refine, scaled and shifted by the frame's timestep embedding, SiLU, 3x3 conv refine -> C, added to
    the unpatchified output; its last conv starts at zero so that a fresh model predicts as it would without it).
    It lets the network draw edges across patch borders, which the per-token output layer cannot see. Per frame:
    causality and the kv-cache are untouched. 0: none (the paper's, and the configs': on the built-in task it drew
    solid shapes and lost small ones over the rollout, docs/experiments.md 2026-12-07)."""
    flavor: str = field(default="custom", compare=False)
    """The named size (a key of FLAVORS) these hyperparameters started from; a label, not compared."""
    init_from: str = field(default="", compare=False)
    """Initial weights instead of random ones: an export directory (vidgpt-export) or a .safetensors file,
    loaded before the first step (a resumed run loads its checkpoint instead); not compared. The settings
    above must fit its tensors, but for the parameters named in init_reinit."""
    init_reinit: list[str] = field(default_factory=list, compare=False)
    """With init_from: parameters that keep their fresh initialisation, by name or name prefix (e.g.
    "x_embedder" when the latent channels change): they may be missing from the file or shaped otherwise."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("depth", "hidden", "heads", "patch", "in_channels", "freq_dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.refine < 0:
            problems.append(f"refine must be >= 0 channels (got {self.refine})")
        if self.heads >= 1 and self.hidden % self.heads:
            problems.append(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        elif self.heads >= 1 and (self.hidden // self.heads) % 2:
            problems.append(f"head dim hidden/heads={self.hidden // self.heads} must be even for RoPE")
        if self.text_dim < 0 or (self.text_dim > 0 and self.text_len < 1):
            problems.append(f"text_dim={self.text_dim}, text_len={self.text_len}: need text_dim >= 0, text_len >= 1")
        if self.mlp_ratio <= 0:
            problems.append(f"mlp_ratio must be > 0 (got {self.mlp_ratio})")
        if self.temporal not in ("causal", "bidirectional"):
            problems.append(f"temporal must be 'causal' or 'bidirectional' (got {self.temporal!r})")
        if self.temporal_scope not in ("position", "frame"):
            problems.append(f"temporal_scope must be 'position' or 'frame' (got {self.temporal_scope!r})")
        elif self.temporal_scope == "frame" and self.heads >= 1 and self.hidden // self.heads < 6:
            problems.append(f"temporal_scope 'frame' needs a head dim >= 6 for 3D RoPE (got {self.hidden // self.heads})")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def causal(self) -> bool:
        return self.temporal == "causal"

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def rope_dims(self) -> tuple[int, int]:
        """(time, space) RoPE dims of a head: the first rotate by frame position, the rest (frame scope only:
        2 * (head_dim // 6) for rows, as many for columns, as Wan splits its heads) by the token's place."""
        space = 4 * (self.head_dim // 6) if self.temporal_scope == "frame" else 0
        return self.head_dim - space, space

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        return self.patch * self.patch * self.in_channels


FLAVORS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(depth=2, hidden=32, heads=2, text_dim=16, text_len=8, flavor="tiny"),
    # the CPU demo's: 32x32 identity-codec frames (64 tokens of 4x4 pixels), the demo's tiny T5
    "cpu": ModelConfig(depth=4, hidden=128, heads=4, patch=4, in_channels=3, text_dim=16, text_len=32, flavor="cpu"),
    "small": ModelConfig(depth=12, hidden=384, heads=6, flavor="small"),
    "base": ModelConfig(depth=12, hidden=768, heads=12, flavor="base"),
    "xl": ModelConfig(depth=28, hidden=1152, heads=16, flavor="xl"),  # the paper's STDiT-XL/2
}


# ----------------------------------------------------------------------------- embeddings


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps: (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().unsqueeze(-1) * freqs  # (..., half)
    feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        feats = F.pad(feats, (0, 1))
    return feats


def sincos_2d(h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed 2D sin-cos positions of an h x w token grid: (h*w, dim), row-major like the patch order."""
    if dim % 4:
        raise ValueError(f"2D sin-cos positions need hidden divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    out = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * omega[None, :]  # (h*w, quarter)
        out += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(out, dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Per-frame timesteps (B, T) -> (B, T, hidden)."""

    def __init__(self, hidden: int, freq_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(t, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)


# ----------------------------------------------------------------------------- layers


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim if out is None else out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, L, D) -> q, k, v each (N, L, H, E)."""
        q, k, v = rearrange(self.qkv(x), "N L (K H E) -> K N L H E", K=3, H=self.heads)
        return q, k, v

    def out(self, o: torch.Tensor) -> torch.Tensor:
        return self.proj(rearrange(o, "N L H E -> N L (H E)"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_heads(x)
        return self.out(attention(q, k, v))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, N, D) queries; context: (B, L, D); mask: (B, L) True = valid token."""
        q = rearrange(self.q(x), "B N (H E) -> B N H E", H=self.heads)
        k, v = rearrange(self.kv(context), "B L (K H E) -> K B L H E", K=2, H=self.heads)
        o = attention(q, k, v, key_mask=mask)
        return self.proj(rearrange(o, "B N H E -> B N (H E)"))


KV = tuple[torch.Tensor, torch.Tensor]
KVSource = Callable[[torch.Tensor, torch.Tensor], KV]
"""A block's kv-cache slot: this call's temporal (k, v) in, cached + new (k, v) out."""
Rope = tuple[torch.Tensor, ...]
"""Temporal RoPE cos, sin (T, 1, Et/2); with temporal_scope "frame" also spatial cos, sin (S, 1, 1, Es/2)."""


class STDiTBlock(nn.Module):
    """Spatial attention -> causal temporal attention -> cross-attention -> MLP, on (B, T, S, D)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.causal = cfg.causal
        self.whole_frames = cfg.temporal_scope == "frame"
        self.norm_s = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn_s = SelfAttention(d, cfg.heads)
        self.norm_t = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn_t = SelfAttention(d, cfg.heads)
        if cfg.text_dim:
            self.norm_c = nn.LayerNorm(d, eps=1e-6)
            self.attn_c = CrossAttention(d, cfg.heads)
        self.norm_m = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(d, cfg.mlp_hidden)
        self.scale_shift_table = nn.Parameter(torch.zeros(NUM_MODULATIONS, d))

    def forward(
        self,
        h: torch.Tensor,
        mod: torch.Tensor,
        rope: Rope,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        cached: KVSource | None,
        temporal_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h: (B, T, S, D); mod: (B, T, 9, D) shared adaLN-single input; rope: `Rope`;
        cached: the kv-cache's slot of this block: takes this call's temporal (k, v), each
        (B*S, T, H, E), and returns cached + new, each (B*S, Tc+T, H, E); temporal_mask: (T, T) bool,
        which frames each frame attends to, in place of the causal mask (`teacher_forcing_mask`). Returns h.

        Two pure halves around the cache (`before_temporal`, `after_temporal`), so that torch.compile
        compiles tensor math only and the cache's in-place writes stay outside the graphs."""
        h, q, k, v = self.before_temporal(h, mod, rope)
        if cached is not None:
            k, v = cached(k, v)  # (B*S, Tc+T, H, E), written in place into the cache's buffers
        return self.after_temporal(h, mod, q, k, v, context, context_mask, temporal_mask)

    def _modulation(self, mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = (mod + self.scale_shift_table).unsqueeze(2)  # (B, T, 1, 9, D): broadcast over S
        return m.unbind(dim=3)  # sh_s, sc_s, g_s, sh_t, sc_t, g_t, sh_m, sc_m, g_m, each (B, T, 1, D)

    def before_temporal(
        self, h: torch.Tensor, mod: torch.Tensor, rope: Rope
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Spatial attention (bidirectional inside each frame), then the temporal q, k, v with RoPE:
        h (B, T, S, D) -> h, and q, k, v each (B*S, T, H, E)."""
        B = h.shape[0]
        sh_s, sc_s, g_s, sh_t, sc_t, *_ = self._modulation(mod)
        xs = rearrange(modulate(self.norm_s(h), sh_s, sc_s), "B T S D -> (B T) S D")
        h = h + g_s * rearrange(self.attn_s(xs), "(B T) S D -> B T S D", B=B)
        xt = rearrange(modulate(self.norm_t(h), sh_t, sc_t), "B T S D -> (B S) T D")
        q, k, v = self.attn_t.qkv_heads(xt)  # (B*S, T, H, E)
        q, k = rotate(q, rope, B), rotate(k, rope, B)
        return h, q, k, v

    def after_temporal(
        self,
        h: torch.Tensor,
        mod: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        temporal_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Temporal attention of q (B*S, T, H, E) over k, v (B*S, Tc+T, H, E), causal (or, for the
        baseline, bidirectional; or as temporal_mask says) across frames at each spatial position, cached
        keys first (temporal_scope "frame": over every position of those frames); then text cross-attention
        (every token attends to the caption, no mixing across frames) and the MLP."""
        B, T = h.shape[:2]
        _, _, _, _, _, g_t, sh_m, sc_m, g_m = self._modulation(mod)
        if self.whole_frames:
            o = self.attn_t.out(whole_frame_attention(q, k, v, B, self.causal, temporal_mask))
        else:
            o = self.attn_t.out(attention(q, k, v, causal=self.causal, mask=temporal_mask))  # (B*S, T, D)
        h = h + g_t * rearrange(o, "(B S) T D -> B T S D", B=B)
        if context is not None:
            xc = rearrange(self.norm_c(h), "B T S D -> B (T S) D")
            h = h + rearrange(self.attn_c(xc, context, context_mask), "B (T S) D -> B T S D", T=T)
        return h + g_m * self.mlp(modulate(self.norm_m(h), sh_m, sc_m))


def rotate(x: torch.Tensor, rope: Rope, batch: int) -> torch.Tensor:
    """RoPE on temporal q or k (B*S, T, H, E): the first Et dims by frame position; with spatial angles, the
    other Es dims by the token's row and column."""
    if len(rope) == 2:
        return apply_rope(x, *rope)
    cos, sin, cos_s, sin_s = rope
    et = 2 * cos.shape[-1]
    space = apply_rope(x[..., et:].unflatten(0, (batch, -1)), cos_s, sin_s)  # (B, S, T, H, Es)
    return torch.cat([apply_rope(x[..., :et], cos, sin), space.flatten(0, 1)], dim=-1)


def spatial_rope_angles(h: int, w: int, dims: int, theta: float,
                        device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of the spatial RoPE of an h x w token grid (row-major), each (h*w, 1, 1, dims/2): half the
    angles by row, half by column."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    cr, sr = rope_angles(rows.reshape(-1), dims // 2, theta)  # (S, 1, dims/4)
    cc, sc = rope_angles(cols.reshape(-1), dims // 2, theta)
    return torch.cat([cr, cc], dim=-1)[:, None], torch.cat([sr, sc], dim=-1)[:, None]


def whole_frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: int, causal: bool,
                          frame_mask: torch.Tensor | None) -> torch.Tensor:
    """Temporal attention at frame granularity: every query token attends to every token of the key frames
    its frame may see. q (B*S, T, H, E), k, v (B*S, Tk, H, E) in the kv-cache's layout -> (B*S, T, H, E).
    frame_mask: (T, Tk) bool over frames (teacher forcing's), else the bottom-right aligned causal pattern
    (causal) or none; one query frame of a causal call sees every key frame, so it needs no mask."""
    S, T, Tk = q.shape[0] // batch, q.shape[1], k.shape[1]
    qf, kf, vf = (rearrange(x, "(B S) T H E -> B (T S) H E", B=batch) for x in (q, k, v))
    if frame_mask is None and causal and T > 1:
        frame_mask = causal_mask(T, Tk, q.device)
    token_mask = None
    if frame_mask is not None:  # (T, Tk) -> (T*S, Tk*S): token (i, s) sees token (j, s') where frame i sees j
        token_mask = frame_mask.repeat_interleave(S, dim=0).repeat_interleave(S, dim=1)
    o = attention(qf, kf, vf, mask=token_mask)  # (B, T*S, H, E)
    return rearrange(o, "B (T S) H E -> (B S) T H E", S=S)


class FinalLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.hidden, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.zeros(2, cfg.hidden))
        self.linear = nn.Linear(cfg.hidden, cfg.patch_dim)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """h: (B, T, S, D), temb: (B, T, D) -> (B, T, S, p*p*C)."""
        shift, scale = (self.scale_shift_table + temb.unsqueeze(2)).unsqueeze(2).unbind(dim=3)
        return self.linear(modulate(self.norm(h), shift, scale))


class Refiner(nn.Module):
    """ModelConfig.refine: a residual two-layer 3x3 convolution over each output frame, its hidden channels
    modulated by the frame's timestep embedding (so that it may smooth at high noise and keep edges at low)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cfg.in_channels, cfg.refine, 3, padding=1)
        self.modulation = nn.Linear(cfg.hidden, 2 * cfg.refine)  # timestep embedding -> (scale, shift)
        self.conv2 = nn.Conv2d(cfg.refine, cfg.in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C, H, W), temb: (B, T, D) -> (B, T, C, H, W)."""
        scale, shift = self.modulation(F.silu(temb)).flatten(0, 1)[:, :, None, None].chunk(2, dim=1)  # (B*T, k, 1, 1)
        h = F.silu(modulate(self.conv1(x.flatten(0, 1)), shift, scale))  # (B*T, k, H, W)
        return x + self.conv2(h).view_as(x)


# ----------------------------------------------------------------------------- the model


def teacher_forcing_mask(frames: int, device: torch.device | None = None) -> torch.Tensor:
    """The temporal attention pattern of a teacher-forced clip of `frames` frames laid out as
    [clean_0 .. clean_{L-1}, noisy_0 .. noisy_{L-1}]: (2L, 2L) bool, True = attend. Clean frame i sees the
    clean frames j <= i (causal, as when they were generated); noisy frame i sees the clean frames j < i
    and itself, which is what frame-by-frame sampling shows it (finished frames in the kv-cache, then the
    frame being denoised)."""
    i = torch.arange(frames, device=device)
    clean_clean = i[None, :] <= i[:, None]
    noisy_clean = i[None, :] < i[:, None]
    noisy_noisy = i[None, :] == i[:, None]
    top = torch.cat([clean_clean, torch.zeros_like(clean_clean)], dim=1)
    return torch.cat([top, torch.cat([noisy_clean, noisy_noisy], dim=1)], dim=0)  # (2L, 2L)


def text_mask_or_none(text_mask: torch.Tensor | None) -> torch.Tensor | None:
    """None when every token of (B, L) text_mask is valid (the unmasked attention kernels apply), else
    the mask. It reads the mask: call it once per batch or per `generate`, before moving a CPU mask to
    the GPU, never per network call."""
    if text_mask is None or bool(text_mask.all()):
        return None
    return text_mask


class VidGPT(nn.Module):
    """The ViD-GPT network. `forward(x, t)` predicts noise (or velocity) of x's shape."""

    block_class = STDiTBlock  # the unit of activation checkpointing and of ZeRO-3 prefetch

    def __init__(self, cfg: ModelConfig, *, init_weights: bool = True) -> None:
        """init_weights=False leaves initialisation to an explicit `initialize_weights(gather=...)` call
        (building under ZeRO-3's partitioned init, where parameters must be gathered to be written)."""
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = False
        d = cfg.hidden
        self.x_embedder = nn.Linear(cfg.patch_dim, d)
        self.t_embedder = TimestepEmbedder(d, cfg.freq_dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, NUM_MODULATIONS * d))
        if cfg.text_dim:
            self.y_embedder = Mlp(cfg.text_dim, d, d)  # caption projection
            self.null_text = nn.Parameter(torch.zeros(cfg.text_len, cfg.text_dim))
        self.blocks = nn.ModuleList(STDiTBlock(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        self.refiner = Refiner(cfg) if cfg.refine else None
        if init_weights:
            self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self, gather: Callable[[list[nn.Parameter]], AbstractContextManager[Any]] | None = None) -> None:
        """Every initialisation in one place, one module at a time. Gates, cross-attention outputs and the
        output layer start at zero, so each block starts as the identity and the prediction as zero.

        gather(params): a context manager in which a module's own parameters are whole and writable
        (e.g. DeepSpeed's GatheredParameters under ZeRO-3); by default they already are."""
        d = self.cfg.hidden
        normal = {id(self.t_embedder.mlp[0]), id(self.t_embedder.mlp[2])}
        zero = {id(self.t_block[1]), id(self.final.linear)}  # adaLN-single starts from the per-block tables
        if self.refiner is not None:
            zero |= {id(self.refiner.conv2), id(self.refiner.modulation)}
        zero |= {id(b.attn_c.proj) for b in self.blocks if self.cfg.text_dim}
        for module in self.modules():
            params = list(module.parameters(recurse=False))
            if not params:
                continue
            with gather(params) if gather is not None else contextlib.nullcontext():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    if id(module) in zero:
                        nn.init.zeros_(module.weight)
                    elif id(module) in normal:
                        nn.init.normal_(module.weight, std=0.02)
                    else:
                        nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, STDiTBlock):
                    table = torch.randn(NUM_MODULATIONS, d) / d**0.5
                    table[2::3] = 0.0  # gates: g_s, g_t, g_m
                    module.scale_shift_table.copy_(table)
                elif isinstance(module, FinalLayer):
                    module.scale_shift_table.copy_(torch.randn(2, d) / d**0.5)
                elif module is self:
                    nn.init.normal_(self.null_text, std=self.cfg.text_dim**-0.5)

    def compile_blocks(self, **options: Any) -> VidGPT:
        """torch.compile every STDiT block, as torchtitan compiles per transformer block: small graphs
        shared by all blocks, short compile times, parameter names and module hooks (ZeRO-3's)
        unchanged. The two halves around the kv-cache are compiled (`before_temporal`,
        `after_temporal`), so the cache's in-place writes never enter a graph. Returns self."""
        for block in self.blocks:
            block.before_temporal = torch.compile(block.before_temporal, **options)  # type: ignore[method-assign]
            block.after_temporal = torch.compile(block.after_temporal, **options)  # type: ignore[method-assign]
        return self

    def _text_context(
        self,
        batch: int,
        text: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        drop_text: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Project text to (B, text_len, D) with mask (B, text_len) or None (all valid).

        Captions shorter than text_len are padded (and masked); missing or dropped text, and rows whose
        mask has no valid token, are the learned null embedding of full length, so unconditional calls
        match caption dropout in training. A given mask is used as it is: pass text_mask=None when every
        token is valid (`text_mask_or_none`, once per batch on the CPU copy) so that attention may take
        its fastest, unmasked kernel."""
        cfg = self.cfg
        if not cfg.text_dim:
            if text is not None or drop_text is not None:
                raise ValueError("this model has text_dim=0 (no cross-attention) but text was given")
            return None, None
        if text is None:
            if text_mask is not None or drop_text is not None:
                raise ValueError("text_mask/drop_text given without text")
            return self.y_embedder(self.null_text).expand(batch, -1, -1), None
        if text.ndim != 3 or text.shape[0] != batch or text.shape[2] != cfg.text_dim or text.shape[1] > cfg.text_len:
            raise ValueError(
                f"text must be (B={batch}, L<={cfg.text_len}, {cfg.text_dim}), got {tuple(text.shape)}"
            )
        L = text.shape[1]
        if text_mask is None:
            text_mask = torch.ones(batch, L, dtype=torch.bool, device=text.device)
        elif text_mask.shape != (batch, L):
            raise ValueError(f"text_mask must be (B, L)={(batch, L)}, got {tuple(text_mask.shape)}")
        text_mask = text_mask.bool()
        if L < cfg.text_len:  # pad to text_len: (B, L, E) -> (B, text_len, E)
            text = F.pad(text, (0, 0, 0, cfg.text_len - L))
            text_mask = F.pad(text_mask, (0, cfg.text_len - L), value=False)
        # a row with no valid token (no caption) gets the null embedding, as caption dropout does; decided
        # on the device, without reading the mask back (no host sync inside forward)
        drop = ~text_mask.any(dim=1)  # (B,)
        if drop_text is not None:
            if drop_text.shape != (batch,):
                raise ValueError(f"drop_text must be (B,)={(batch,)}, got {tuple(drop_text.shape)}")
            drop = drop | drop_text.bool()
        text = torch.where(drop[:, None, None], self.null_text.to(text.dtype), text)
        text_mask = text_mask | drop[:, None]
        return self.y_embedder(text), text_mask

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        cache: TemporalKVCache | None = None,
        write_cache: bool = False,
        frame_offset: int = 0,
        teacher_forced: bool = False,
    ) -> torch.Tensor:
        """Predict the diffusion target for every frame.

        x: (B, T, C, H, W) latents; t: (B, T) per-frame timesteps (0 = clean; prompt frames carry 0).
        text: (B, L, text_dim) embeddings, text_mask: (B, L) True = valid; text=None means unconditional.
        drop_text: (B,) True replaces that sample's text by the null embedding (CFG dropout).
        cache: temporal keys/values of earlier frames; the frames of x come right after them.
        write_cache: append this call's frames to the cache (call it with clean frames and t=0).
        frame_offset: absolute index of x's first frame when no cache is given (RoPE positions).
        teacher_forced: x is a clip of L = T/2 frames twice, [clean frames, noisy frames], and every noisy
        frame sees the clean frames before it and itself (`teacher_forcing_mask`; the clean and the noisy
        frame i share RoPE position frame_offset + i): each noisy frame is predicted as frame-by-frame
        sampling with the kv-cache would predict it from those clean frames, all L in one call.
        Returns (B, T, C, H, W).
        """
        cfg = self.cfg
        if x.ndim != 5 or x.shape[2] != cfg.in_channels or x.shape[3] % cfg.patch or x.shape[4] % cfg.patch:
            raise ValueError(
                f"x must be (B, T, C={cfg.in_channels}, H, W) with H, W divisible by patch={cfg.patch}; "
                f"got {tuple(x.shape)}"
            )
        B, T, _, H, W = x.shape
        if t.shape != (B, T):
            raise ValueError(f"t must hold one timestep per frame, (B, T)={(B, T)}; got {tuple(t.shape)}")
        if write_cache and cache is None:
            raise ValueError("write_cache=True needs a cache")
        if teacher_forced and (cache is not None or not cfg.causal or T % 2):
            raise ValueError(f"teacher_forced needs a causal model, no kv-cache and an even number of frames "
                             f"[clean, noisy]; got temporal={cfg.temporal!r}, cache={cache is not None}, T={T}")
        if cache is not None and not cfg.causal:
            raise ValueError("a bidirectional model cannot use a kv-cache: cached frames would have to see later ones")
        sink_rope = None if cache is None else (cache.rope_theta, cache.rope_dims or cfg.head_dim)
        if cache is not None and cache.sink and sink_rope != (cfg.rope_theta, cfg.rope_dims[0]):
            raise ValueError(f"the kv-cache re-rotates its sink with rope_theta {cache.rope_theta} over "
                             f"{sink_rope[1]} dims, the model's are {cfg.rope_theta} over {cfg.rope_dims[0]}")
        hp, wp = H // cfg.patch, W // cfg.patch

        tokens = rearrange(x, "B T C (h p) (w q) -> B T (h w) (p q C)", p=cfg.patch, q=cfg.patch)
        h = self.x_embedder(tokens) + sincos_2d(hp, wp, cfg.hidden, x.device).to(x.dtype)  # (B, T, S, D)
        temb = self.t_embedder(t)  # (B, T, D)
        mod = rearrange(self.t_block(temb), "B T (K D) -> B T K D", K=NUM_MODULATIONS)
        context, context_mask = self._text_context(B, text, text_mask, drop_text)
        start = cache.next_position if cache is not None else frame_offset
        positions = torch.arange(start, start + T, device=x.device)
        temporal_mask = None
        if teacher_forced:
            positions = torch.arange(start, start + T // 2, device=x.device).repeat(2)
            temporal_mask = teacher_forcing_mask(T // 2, x.device)
        time_dims, space_dims = cfg.rope_dims
        rope: Rope = rope_angles(positions, time_dims, cfg.rope_theta)
        if space_dims:
            rope = (*rope, *spatial_rope_angles(hp, wp, space_dims, cfg.rope_theta, x.device))

        for i, block in enumerate(self.blocks):
            if self.activation_checkpointing and torch.is_grad_enabled() and cache is None:
                h = checkpoint(block, h, mod, rope, context, context_mask, None, temporal_mask, use_reentrant=False)
            else:
                h = block(h, mod, rope, context, context_mask, None if cache is None else functools.partial(cache.attend, i),
                          temporal_mask)
        if write_cache:
            cache.advance(T)

        out = self.final(h, temb)  # (B, T, S, p*p*C)
        out = rearrange(out, "B T (h w) (p q C) -> B T C (h p) (w q)", h=hp, p=cfg.patch, q=cfg.patch)
        return out if self.refiner is None else self.refiner(out, temb)


# ----------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class ModelStats:
    params: int
    """Trainable parameters."""
    flops: int
    """Forward FLOPs (2 per multiply-add) of matmuls and attention (dense score matrices)."""
    attention_flops: int
    """The part of `flops` spent in attention score/value products."""


def count_params(cfg: ModelConfig) -> int:
    """Parameters of VidGPT(cfg), computed from the config alone (no model is built)."""
    d, m, f = cfg.hidden, cfg.mlp_hidden, cfg.freq_dim
    linear = lambda i, o: i * o + o  # noqa: E731
    n = linear(cfg.patch_dim, d) + linear(f, d) + linear(d, d) + linear(d, NUM_MODULATIONS * d)
    if cfg.text_dim:
        n += linear(cfg.text_dim, d) + linear(d, d) + cfg.text_len * cfg.text_dim
    block = NUM_MODULATIONS * d + 2 * (linear(d, 3 * d) + linear(d, d)) + linear(d, m) + linear(m, d)
    if cfg.text_dim:
        block += 2 * d + linear(d, d) + linear(d, 2 * d) + linear(d, d)
    k = cfg.refine
    refiner = 2 * 9 * cfg.in_channels * k + k + cfg.in_channels + linear(d, 2 * k) if k else 0
    return n + cfg.depth * block + 2 * d + linear(d, cfg.patch_dim) + refiner


def model_stats(
    cfg: ModelConfig,
    frames: int,
    height: int,
    width: int,
    *,
    batch: int = 1,
    cached_frames: int = 0,
) -> ModelStats:
    """Parameters and forward FLOPs of one call on a (batch, frames, C, height, width) latent clip.

    cached_frames: frames already in the kv-cache that the temporal attention also reads.
    Captions are always padded to cfg.text_len tokens.
    """
    d, m, p = cfg.hidden, cfg.mlp_hidden, cfg.patch
    if height % p or width % p:
        raise ValueError(f"latent size {height}x{width} is not divisible by patch={p}")
    S = (height // p) * (width // p)
    frame_rows = batch * frames
    N = frame_rows * S  # tokens
    L = cfg.text_len if cfg.text_dim else 0

    mm = 2 * N * cfg.patch_dim * d  # patch embedding
    mm += 2 * frame_rows * (cfg.freq_dim * d + d * d + d * NUM_MODULATIONS * d)  # t embedder + t_block
    mm += 2 * N * d * cfg.patch_dim  # output layer
    mm += 2 * frame_rows * (height * width * 2 * 9 * cfg.in_channels + d * 2) * cfg.refine  # the refiner's convs, modulation
    if L:
        mm += 2 * batch * L * (cfg.text_dim * d + d * d)  # caption projection
    per_block = 2 * N * (2 * (3 * d * d + d * d) + 2 * d * m)  # spatial + temporal attn projections, MLP
    attn = 4 * frame_rows * S * S * d  # spatial scores and values
    keys = cached_frames + frames  # temporal (dense, incl. cached keys): per position, or every position
    attn += 4 * batch * (S * S if cfg.temporal_scope == "frame" else S) * frames * keys * d
    if L:
        per_block += 2 * N * 2 * d * d + 2 * batch * L * 2 * d * d  # cross q, proj; text k, v
        attn += 4 * N * L * d
    total_attn = cfg.depth * attn
    return ModelStats(
        params=count_params(cfg),
        flops=mm + cfg.depth * per_block + total_attn,
        attention_flops=total_attn,
    )

