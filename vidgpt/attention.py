"""The one attention entry point of the project.

`attention(q, k, v, causal=..., key_mask=..., mask=...)` takes tensors in (B, L, H, D) layout (FlashAttention's)
and dispatches to a kernel:

- FlashAttention (`flash_attn_func(..., causal=True)`) when the package is installed, the tensors are
  on a CUDA device of compute capability >= 8.0 (FlashAttention 2 needs Ampere or later) in fp16/bf16,
  and there is no key mask or explicit mask;
- PyTorch SDPA otherwise;
- a plain masked-softmax reference ("math"), used by tests and analytic FLOP checks.

The kernel chosen for each (device, dtype, masked) case is logged once (logger `vidgpt.attention`). A
flash-attn that is installed but fails to import (a build for another torch or CUDA) is reported with
a warning naming the error, not silently replaced by SDPA.

Batches larger than `MAX_KERNEL_BATCH` (65535: the CUDA grid's y/z limit, which FlashAttention and the
SDPA kernels put the batch on) are split into several kernel calls. The temporal attention runs with
batch B x (spatial tokens) x (2 under CFG), which passes that limit for large latents.
`set_deterministic(True)` selects FlashAttention's deterministic backward (training.deterministic).

Causal masks are **bottom-right aligned**: query i of Lq attends to keys j <= i + (Lk - Lq). That is
FlashAttention's `causal=True` and the kv-cache case (cached keys first, then the new chunk's keys).
SDPA's `is_causal=True` is top-left aligned, so it is used only when Lq == Lk, where the two agree.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import math
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

FLASH_IMPORT_ERROR: str | None = None
"""Why an installed flash-attn could not be imported (None: imported, or not installed)."""
try:  # optional GPU extra: pip install "vidgpt[gpu]"
    from flash_attn import flash_attn_func as _flash_attn_func
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the machine
    _flash_attn_func = None
    if exc.name not in ("flash_attn", None):  # flash_attn is there but something it needs is not
        FLASH_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
except ImportError as exc:  # pragma: no cover - a broken build: undefined symbols, wrong CUDA
    _flash_attn_func = None
    FLASH_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
if FLASH_IMPORT_ERROR is not None:  # pragma: no cover
    warnings.warn(f"flash-attn is installed but failed to import ({FLASH_IMPORT_ERROR}); attention falls back "
                  "to PyTorch SDPA. Reinstall flash-attn for this torch and CUDA.", stacklevel=1)

MAX_KERNEL_BATCH = 65535
"""Largest batch handed to one kernel call; bigger batches are split (tests lower it)."""
_deterministic = False
_logged: set[tuple[str, str, str, bool]] = set()


class Backend(enum.Enum):
    AUTO = "auto"  # flash when possible, else sdpa
    FLASH = "flash"
    SDPA = "sdpa"
    MATH = "math"  # plain masked softmax: the reference


_backend: Backend = Backend.AUTO


def flash_available() -> bool:
    return _flash_attn_func is not None and torch.cuda.is_available()


@functools.cache
def _capability_ok(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 8


def flash_supported(device: torch.device) -> bool:
    """FlashAttention can run on this device: installed, CUDA, compute capability >= 8.0."""
    return _flash_attn_func is not None and device.type == "cuda" and _capability_ok(
        device.index if device.index is not None else torch.cuda.current_device())


def set_deterministic(enabled: bool) -> None:
    """FlashAttention's deterministic backward (slightly slower); SDPA follows
    torch.use_deterministic_algorithms."""
    global _deterministic
    _deterministic = enabled


def describe(device: torch.device) -> str:
    """The kernel that training in bf16 on `device` gets, in words (for the start-up log)."""
    if _backend is not Backend.AUTO:
        return f"{_backend.value} (forced)"
    if flash_supported(device):
        return "flash-attn" + (" (deterministic)" if _deterministic else "")
    reason = ("not installed" if _flash_attn_func is None and FLASH_IMPORT_ERROR is None else
              f"import failed: {FLASH_IMPORT_ERROR}" if _flash_attn_func is None else
              "needs CUDA" if device.type != "cuda" else "needs compute capability >= 8.0")
    return f"PyTorch SDPA (flash-attn {reason})"


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
    q: torch.Tensor, k: torch.Tensor, causal: bool, key_mask: torch.Tensor | None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Boolean mask broadcastable to (B, H, Lq, Lk), or None when everything is visible."""
    if causal:
        causal_part = causal_mask(q.shape[1], k.shape[1], q.device)  # (Lq, Lk)
        mask = causal_part if mask is None else (mask & causal_part)
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
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain masked softmax attention; (B, Lq, H, D) x (B, Lk, H, D) -> (B, Lq, H, D)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (B, H, Lq, Lk)
    mask = _full_mask(q, k, causal, key_mask, mask)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, key_mask: torch.Tensor | None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, L, D)
    if causal and key_mask is None and mask is None and q.shape[1] == k.shape[1]:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    else:
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=_full_mask(q, k, causal, key_mask, mask))
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_mask: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention.

    q: (B, Lq, H, D); k, v: (B, Lk, H, D); key_mask: (B, Lk) bool, True = valid key.
    causal: bottom-right aligned causal mask (requires Lq <= Lk).
    mask: (Lq, Lk) bool, True = attend, shared by the batch and the heads (teacher-forced training's
    pattern); every query must see a key. FlashAttention takes no mask: AUTO picks SDPA for it.
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
    if mask is not None and (mask.dtype != torch.bool or mask.shape != (q.shape[1], k.shape[1])):
        raise ValueError(f"mask must be a bool (Lq, Lk)={(q.shape[1], k.shape[1])} tensor, got {mask.dtype} "
                         f"{tuple(mask.shape)}")

    backend = _backend
    if backend is Backend.AUTO:
        use_flash = (q.dtype in (torch.float16, torch.bfloat16) and key_mask is None and mask is None
                     and flash_supported(q.device))
        backend = Backend.FLASH if use_flash else Backend.SDPA
    if backend is Backend.FLASH and (key_mask is not None or mask is not None):
        raise ValueError("the FLASH backend does not take a key_mask or mask; use SDPA")
    case = (backend.value, q.device.type, str(q.dtype).removeprefix("torch."), key_mask is not None or mask is not None)
    if case not in _logged:
        _logged.add(case)
        log.info("attention: %s kernel for %s %s%s", *case[:3], " with a mask" if case[3] else "")
    B = q.shape[0]
    if B <= MAX_KERNEL_BATCH:
        return _kernel(backend, q, k, v, causal, key_mask, mask)
    parts = []
    for lo in range(0, B, MAX_KERNEL_BATCH):  # the CUDA grid caps one launch's batch
        hi = min(B, lo + MAX_KERNEL_BATCH)
        parts.append(_kernel(backend, q[lo:hi], k[lo:hi], v[lo:hi], causal,
                             None if key_mask is None else key_mask[lo:hi], mask))
    return torch.cat(parts)


def _kernel(backend: Backend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
            key_mask: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    if backend is Backend.FLASH:
        # bottom-right aligned causal since flash-attn 2.1
        return _flash_attn_func(q, k, v, causal=causal, deterministic=_deterministic)
    if backend is Backend.SDPA:
        return _sdpa(q, k, v, causal, key_mask, mask)
    return reference_attention(q, k, v, causal=causal, key_mask=key_mask, mask=mask)
