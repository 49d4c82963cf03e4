"""The one attention entry point of the project.

`attention(q, k, v, causal=..., key_mask=...)` takes tensors in (B, L, H, D) layout (FlashAttention's)
and dispatches to a kernel:

- FlashAttention (`flash_attn_func(..., causal=True)`) when the package is installed, the tensors are
  on CUDA in fp16/bf16, and there is no key mask;
- PyTorch SDPA otherwise;
- a plain masked-softmax reference ("math"), used by tests and analytic FLOP checks.

Causal masks are **bottom-right aligned**: query i of Lq attends to keys j <= i + (Lk - Lq). That is
FlashAttention's `causal=True` and the kv-cache case (cached keys first, then the new chunk's keys).
SDPA's `is_causal=True` is top-left aligned, so it is used only when Lq == Lk, where the two agree.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

try:  # optional GPU extra: pip install "vidgpt[gpu]"
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    _flash_attn_func = None


class Backend(enum.Enum):
    AUTO = "auto"  # flash when possible, else sdpa
    FLASH = "flash"
    SDPA = "sdpa"
    MATH = "math"  # plain masked softmax: the reference


_backend: Backend = Backend.AUTO


def flash_available() -> bool:
    return _flash_attn_func is not None and torch.cuda.is_available()


@contextlib.contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Force one attention kernel inside the block (tests, benchmarks). Not thread-local."""
    global _backend
    if backend is Backend.FLASH and _flash_attn_func is None:
        raise RuntimeError("attention backend FLASH requested but flash-attn is not installed")
    previous, _backend = _backend, backend
    try:
        yield
    finally:
        _backend = previous


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> torch.Tensor:
    """Bottom-right aligned causal mask (q_len, k_len), True = attend."""
    if q_len > k_len:
        raise ValueError(f"causal attention needs q_len <= k_len, got q_len={q_len}, k_len={k_len}")
    q_idx = torch.arange(q_len, device=device).unsqueeze(1)
    k_idx = torch.arange(k_len, device=device).unsqueeze(0)
    return k_idx <= q_idx + (k_len - q_len)


def _full_mask(
    q: torch.Tensor, k: torch.Tensor, causal: bool, key_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Boolean mask broadcastable to (B, H, Lq, Lk), or None when everything is visible."""
    mask = None
    if causal:
        mask = causal_mask(q.shape[1], k.shape[1], q.device)  # (Lq, Lk)
    if key_mask is not None:
        km = key_mask[:, None, None, :]  # (B, 1, 1, Lk)
        mask = km if mask is None else (mask & km)
    return mask


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain masked softmax attention; (B, Lq, H, D) x (B, Lk, H, D) -> (B, Lq, H, D)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (B, H, Lq, Lk)
    mask = _full_mask(q, k, causal, key_mask)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, key_mask: torch.Tensor | None
) -> torch.Tensor:
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, L, D)
    if causal and key_mask is None and q.shape[1] == k.shape[1]:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    else:
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=_full_mask(q, k, causal, key_mask))
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention.

    q: (B, Lq, H, D); k, v: (B, Lk, H, D); key_mask: (B, Lk) bool, True = valid key.
    causal: bottom-right aligned causal mask (requires Lq <= Lk).
    Returns (B, Lq, H, D).
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"attention expects q (B, Lq, H, D) and k, v (B, Lk, H, D); got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if causal and q.shape[1] > k.shape[1]:
        raise ValueError(f"causal attention needs q_len <= k_len, got {q.shape[1]} > {k.shape[1]}")
    if key_mask is not None and key_mask.shape != (k.shape[0], k.shape[1]):
        raise ValueError(f"key_mask must be (B, Lk)={(k.shape[0], k.shape[1])}, got {tuple(key_mask.shape)}")

    backend = _backend
    if backend is Backend.AUTO:
        use_flash = (
            _flash_attn_func is not None
            and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)
            and key_mask is None
        )
        backend = Backend.FLASH if use_flash else Backend.SDPA
    if backend is Backend.FLASH:
        if key_mask is not None:
            raise ValueError("the FLASH backend does not take a key_mask; use SDPA")
        return _flash_attn_func(q, k, v, causal=causal)  # bottom-right aligned since flash-attn 2.1
    if backend is Backend.SDPA:
        return _sdpa(q, k, v, causal, key_mask)
    return reference_attention(q, k, v, causal=causal, key_mask=key_mask)
