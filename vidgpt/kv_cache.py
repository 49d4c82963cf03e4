"""Sliding-window cache of temporal-attention keys/values (the ViD-GPT kv-cache).

Clean (t=0) frames never attend to later frames, so their temporal keys/values are the same at every
denoising step of every later chunk. The cache keeps them per block, for at most `window` frames:
the oldest frames are evicted first. Keys are stored with RoPE already applied at each frame's
absolute position, so re-reading them never needs re-rotation (RoPE scores depend only on distance).

Storage: one preallocated buffer per block for keys and one for values, (B*S, capacity, H, E) with
capacity = window + the most frames of one call. A call writes its new frames in place right after
the held ones and attends to a view of held + new frames: nothing is concatenated per denoising step,
and once the window is full every call sees the same shapes (what CUDA graphs and torch.compile
want). `advance` keeps the frames of the last call; when that passes the window, the newest `window`
frames are moved to the front, once per chunk. Frames stay in temporal order, so results equal a
cache that concatenates.

Shapes: per block, keys and values are (B*S, Tc, H, E): B batch rows, S spatial tokens per frame,
Tc cached frames, H heads, E head dim.
"""

from __future__ import annotations

import torch


class TemporalKVCache:
    """Per-block temporal keys/values of the frames generated (or prompted) so far."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"kv-cache window must be >= 1 frame, got {window}")
        self.window = window
        self._keys: dict[int, torch.Tensor] = {}  # block -> (B*S, capacity, H, E) buffer
        self._values: dict[int, torch.Tensor] = {}
        self._written = 0  # frames the last `attend` wrote after the held ones
        self.length = 0  # frames currently held (every block holds the same frames)
        self.next_position = 0  # absolute index of the next frame to be written
        self.evicted = 0  # frames evicted so far

    def get(self, block: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Views of one block's held (keys, values), each (B*S, Tc, H, E), or None while empty."""
        if self.length == 0:
            return None
        return self._keys[block][:, : self.length], self._values[block][:, : self.length]

    def attend(self, block: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one block's keys/values of the call's new frames (B*S, Tn, H, E) after the held frames,
        in place, and return views of held + new, each (B*S, Tc+Tn, H, E). The new frames are kept
        only once `advance` is called (a clean pass); a denoising step's are overwritten by the next."""
        n = keys.shape[1]
        buf = self._keys.get(block)
        if buf is not None and (buf.shape[0] != keys.shape[0] or buf.shape[2:] != keys.shape[2:]):
            raise ValueError(
                f"kv-cache holds rows/heads {(buf.shape[0], *buf.shape[2:])} but new keys are {tuple(keys.shape)}: "
                "batch size or image size changed between calls"
            )
        if buf is None or buf.shape[1] < self.length + n or buf.dtype != keys.dtype:
            self._grow(block, keys, self.window + n)
        k, v = self._keys[block], self._values[block]
        end = self.length + n
        k[:, self.length : end] = keys
        v[:, self.length : end] = values
        self._written = n
        return k[:, :end], v[:, :end]

    def extend(self, block: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write one block's new frames to be kept by the next `advance` (attend without reading)."""
        self.attend(block, keys, values)

    def _grow(self, block: int, like: torch.Tensor, capacity: int) -> None:
        capacity = max(capacity, self.length + like.shape[1])
        shape = (like.shape[0], capacity, *like.shape[2:])
        k = torch.empty(shape, dtype=like.dtype, device=like.device)
        v = torch.empty(shape, dtype=like.dtype, device=like.device)
        if block in self._keys and self.length:
            k[:, : self.length] = self._keys[block][:, : self.length]
            v[:, : self.length] = self._values[block][:, : self.length]
        self._keys[block], self._values[block] = k, v

    def advance(self, new_frames: int) -> None:
        """Keep the `new_frames` frames every block wrote in its last call; evict beyond the window."""
        if new_frames != self._written:
            raise ValueError(f"advance({new_frames}) but the last call wrote {self._written} frames")
        total = self.length + new_frames
        if total > self.window:  # the newest `window` frames move to the front
            drop = total - self.window
            for buf in (*self._keys.values(), *self._values.values()):
                buf[:, : self.window] = buf[:, drop:total].clone()
        self.length = min(total, self.window)
        self.evicted += total - self.length
        self.next_position += new_frames
        self._written = 0

    def nbytes(self) -> int:
        """Bytes of the held frames (the buffers also have room for one call's new frames)."""
        return sum(t[:, : self.length].numel() * t.element_size() for t in (*self._keys.values(), *self._values.values()))

    def reserved_bytes(self) -> int:
        """Bytes of the preallocated buffers."""
        return sum(t.numel() * t.element_size() for t in (*self._keys.values(), *self._values.values()))
