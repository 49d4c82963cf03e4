"""Sliding-window cache of temporal-attention keys/values (the ViD-GPT kv-cache).

Clean (t=0) frames never attend to later frames, so their temporal keys/values are the same at every
denoising step of every later chunk. The cache keeps them per block, for at most `window` frames:
the oldest frames are evicted first (except the sink's, below). Keys are stored with RoPE already
applied at each frame's absolute position, so re-reading them never needs re-rotation (RoPE scores
depend only on distance); only the sink's keys are re-rotated, once per eviction.

Storage: one preallocated buffer per block for keys and one for values, (B*S, capacity, H, E) with
capacity = window + the most frames of one call. A call writes its new frames in place right after
the held ones and attends to a view of held + new frames: nothing is concatenated per denoising step,
and once the window is full every call sees the same shapes (what CUDA graphs and torch.compile
want). `advance` keeps the frames of the last call; when that passes the window, the newest `window`
frames are moved to the front (with a sink: the newest `window - sink`, right after the sink), once
per chunk. Frames stay in temporal order, so results equal a cache that concatenates.

Attention sink (`sink` s > 0, as LongLive and Self-Forcing keep theirs): the first s frames of the
video are never evicted. They count within the window: once it is full the cache holds those s frames
followed by the newest window - s frames, so a chunk never attends to more frames than `window`.
Positions: the sink is presented at the s positions right before the oldest recent frame held (as if
contiguous with the window), so its distance to the current chunk does not grow with the video. The
sink's keys are re-rotated when the window moves: at each eviction they are rewritten as the sink's
keys as first written (rotated at positions 0..s-1, a copy kept at the first eviction) rotated by
`evicted` more positions. RoPE rotations compose (R(a) R(b) = R(a + b)), so this is exact up to one
rotation's float round-off, which never accumulates (always from the first copy); it needs no change
to the model, which keeps handing the cache keys rotated at absolute positions, and costs one rotation
of s frames per chunk (storing the sink un-rotated and rotating on read would cost one per denoising
step and need un-rotated keys from the model). Until the first eviction nothing moves: s > 0 is then
exactly s = 0. With 3D RoPE (`ModelConfig.temporal_scope` "frame") only the leading `rope_dims` dims of a
head are temporal, and only those are re-rotated; the spatial ones never move.

The RoPE helpers (`rope_angles`, `apply_rope`) live here, as the cache re-rotates the sink with them;
`vidgpt.model` applies them to every temporal query and key.

Shapes: per block, keys and values are (B*S, Tc, H, E): B batch rows, S spatial tokens per frame,
Tc cached frames, H heads, E head dim.
"""

from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of RoPE angles for integer positions (T,) -> each (T, 1, head_dim/2)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, E/2), float64: exact at large T
    return torch.cos(angles).float()[:, None, :], torch.sin(angles).float()[:, None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (N, T, H, E) by per-frame angles (T, 1, E/2) (half-split pairing)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class TemporalKVCache:
    """Per-block temporal keys/values of the frames generated (or prompted) so far."""

    def __init__(self, window: int, *, sink: int = 0, rope_theta: float = 10000.0, rope_dims: int | None = None) -> None:
        """window: most frames held; sink: the first frames of the video, held whatever the window
        evicts (within the window: 0 <= sink < window); rope_theta: the model's RoPE base
        (`ModelConfig.rope_theta`), and rope_dims: how many leading dims of a head its temporal RoPE
        rotates (`ModelConfig.rope_dims[0]`; None: all), used to re-rotate the sink's keys."""
        if window < 1:
            raise ValueError(f"kv-cache window must be >= 1 frame, got {window}")
        if sink < 0 or (sink and sink >= window):
            raise ValueError(f"kv-cache sink ({sink}) must be >= 0 and < the window ({window}): the sink counts within it")
        self.window = window
        self.sink = sink
        self.rope_theta = rope_theta
        self.rope_dims = rope_dims
        self._keys: dict[int, torch.Tensor] = {}  # block -> (B*S, capacity, H, E) buffer
        self._values: dict[int, torch.Tensor] = {}
        self._sink_keys: dict[int, torch.Tensor] = {}  # block -> (B*S, sink, H, E) at positions 0..sink-1
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
        s = self.sink
        if total > self.window:  # the sink stays in front; the newest `window - sink` frames move after it
            if s and not self._sink_keys:  # the first eviction: every sink frame is held, still unrotated
                self._sink_keys = {block: k[:, :s].clone() for block, k in self._keys.items()}
            for buf in (*self._keys.values(), *self._values.values()):
                buf[:, s : self.window] = buf[:, total - (self.window - s) : total].clone()
        self.length = min(total, self.window)
        self.evicted += total - self.length
        self.next_position += new_frames
        self._written = 0
        if s and self.evicted:
            self._rotate_sink()

    def sink_position(self) -> int:
        """The position sink frame 0 is presented at (frame j at this + j): right before the oldest recent
        frame held, i.e. the frames evicted so far (0 until the first eviction)."""
        return self.evicted

    def _rotate_sink(self) -> None:
        """Rewrite the held sink keys as the first-written ones rotated by `sink_position` more frames."""
        for block, first in self._sink_keys.items():  # first: (B*S, sink, H, E)
            dims = self.rope_dims or first.shape[-1]  # the temporal dims; spatial ones (if any) stay
            shift = torch.tensor([self.sink_position()], device=first.device)
            cos, sin = rope_angles(shift, dims, self.rope_theta)  # each (1, 1, dims/2): every sink frame
            self._keys[block][:, : self.sink, :, :dims] = apply_rope(first[..., :dims], cos, sin)

    def nbytes(self) -> int:
        """Bytes of the held frames (the buffers also have room for one call's new frames)."""
        return sum(t[:, : self.length].numel() * t.element_size() for t in (*self._keys.values(), *self._values.values()))

    def reserved_bytes(self) -> int:
        """Bytes of the preallocated buffers (and of the sink's first-written keys)."""
        held = (*self._keys.values(), *self._values.values(), *self._sink_keys.values())
        return sum(t.numel() * t.element_size() for t in held)
