"""Sliding-window cache of temporal-attention keys/values (the ViD-GPT kv-cache).

Clean (t=0) frames never attend to later frames, so their temporal keys/values are the same at every
denoising step of every later chunk. The cache keeps them per block, for at most `window` frames:
the oldest frames are evicted first. Keys are stored with RoPE already applied at each frame's
absolute position, so re-reading them never needs re-rotation (RoPE scores depend only on distance).

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
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}
        self.length = 0  # frames currently held (every block holds the same frames)
        self.next_position = 0  # absolute index of the next frame to be written
        self.evicted = 0  # frames evicted so far

    def get(self, block: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached (keys, values) of one block, each (B*S, Tc, H, E), or None while empty."""
        if self.length == 0:
            return None
        return self._keys[block], self._values[block]

    def extend(self, block: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append one block's keys/values of new frames (B*S, Tn, H, E), keeping the last `window`."""
        old = self.get(block)
        if old is not None:
            if old[0].shape[0] != keys.shape[0] or old[0].shape[2:] != keys.shape[2:]:
                raise ValueError(
                    f"kv-cache holds rows/heads {tuple(old[0].shape)} but new keys are {tuple(keys.shape)}: "
                    "batch size or image size changed between calls"
                )
            keys = torch.cat([old[0], keys], dim=1)
            values = torch.cat([old[1], values], dim=1)
        self._keys[block] = keys[:, -self.window :]
        self._values[block] = values[:, -self.window :]

    def advance(self, new_frames: int) -> None:
        """Record that every block has been extended by `new_frames` frames."""
        total = self.length + new_frames
        self.length = min(total, self.window)
        self.evicted += total - self.length
        self.next_position += new_frames

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self._keys.values(), *self._values.values()))
