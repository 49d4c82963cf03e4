"""Codecs: uint8 video frames <-> the latents the diffusion model sees.

    from data_pipeline.codecs import build_codec
    codec = build_codec("sd-vae", vae="stabilityai/sd-vae-ft-ema")   # or build_codec("identity")
    z = codec.encode(frames)     # (T, H, W, 3) uint8 -> (T, C, H/d, W/d) float32, already * scale_factor
    frames = codec.decode(z)     # (T, C, h, w) scaled latents -> (T, h*d, w*d, 3) uint8

Encoding is deterministic (the SD VAE uses its posterior mean), so a resumed encoding job writes the
same latents as an uninterrupted one. `describe()` is what shard metadata and `index.json` record.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

CODEC_NAMES: tuple[str, ...] = ("identity", "sd-vae")


class Codec(ABC):
    """Frames (T, H, W, 3) uint8 <-> scaled latents (T, C, H/d, W/d) float32."""

    name: str
    scale_factor: float
    """Latents are stored multiplied by this (the SD VAE's `scaling_factor`)."""
    latent_channels: int
    downsample: int
    """Spatial factor d between frames and latents."""

    @abstractmethod
    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB frames (T, H, W, 3) -> float32 latents (T, C, H/d, W/d), multiplied by scale_factor."""

    @abstractmethod
    def decode(self, latents: np.ndarray | torch.Tensor) -> np.ndarray:
        """Scaled latents (T, C, h, w) -> uint8 RGB frames (T, h*d, w*d, 3)."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description recorded beside the latents."""
        return {
            "name": self.name,
            "scale_factor": float(self.scale_factor),
            "latent_channels": int(self.latent_channels),
            "downsample": int(self.downsample),
        }

    # ------------------------------------------------------------------ input checks shared by codecs

    def check_frames(self, frames: np.ndarray) -> np.ndarray:
        """Validate uint8 frames (T, H, W, 3) with H and W divisible by `downsample`; returns them contiguous."""
        if not isinstance(frames, np.ndarray):
            raise ValueError(f"frames must be a numpy array of shape (T, H, W, 3), got {type(frames).__name__}")
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
            raise ValueError(f"frames must have shape (T>=1, H, W, 3), got {tuple(frames.shape)}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype} with shape {tuple(frames.shape)}")
        _, h, w, _ = frames.shape
        d = self.downsample
        if h < d or w < d or h % d or w % d:
            raise ValueError(
                f"{self.name} codec needs frame H and W divisible by {d}, got frames of shape {tuple(frames.shape)}"
            )
        return np.ascontiguousarray(frames)

    def check_latents(self, latents: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Validate floating latents (T, C, h, w) with C == latent_channels; returns a float32 CPU tensor."""
        if isinstance(latents, np.ndarray):
            if not np.issubdtype(latents.dtype, np.floating):
                raise ValueError(f"latents must be floating point, got {latents.dtype} with shape {latents.shape}")
            tensor = torch.from_numpy(np.ascontiguousarray(latents))
        elif isinstance(latents, torch.Tensor):
            if not latents.is_floating_point():
                raise ValueError(f"latents must be floating point, got {latents.dtype} with shape {tuple(latents.shape)}")
            tensor = latents.detach()
        else:
            raise ValueError(f"latents must be a numpy array or torch tensor, got {type(latents).__name__}")
        c = self.latent_channels
        if tensor.ndim != 4 or tensor.shape[1] != c or tensor.shape[0] < 1:
            raise ValueError(f"{self.name} codec expects latents of shape (T>=1, {c}, h, w), got {tuple(tensor.shape)}")
        return tensor.to("cpu", torch.float32).contiguous()


def _to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H, W) in [-1, 1]."""
    return (frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float (T, 3, H, W) in [-1, 1] -> uint8 (T, H, W, 3), rounded and clipped."""
    pixels = ((images.float() + 1.0) * 127.5).round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1)


class IdentityCodec(Codec):
    """Pixels as latents: x / 127.5 - 1 in [-1, 1], 3 channels, no downsampling. Serves the CPU demo."""

    def __init__(self) -> None:
        self.name = "identity"
        self.scale_factor = 1.0
        self.latent_channels = 3
        self.downsample = 1

    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = self.check_frames(frames)
        return _to_unit(torch.from_numpy(frames)).mul(self.scale_factor).contiguous().numpy()  # (T, 3, H, W)

    def decode(self, latents: np.ndarray | torch.Tensor) -> np.ndarray:
        z = self.check_latents(latents) / self.scale_factor  # (T, 3, H, W)
        return _to_uint8(z).contiguous().numpy()  # (T, H, W, 3)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _looks_like_local_path(source: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else that names a path is meant to be local."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
    )


class SDVAECodec(Codec):
    """A diffusers `AutoencoderKL` (e.g. the SD VAE) from a local directory or a hub id.

    Encodes with the posterior mean (deterministic), then (mean - shift_factor) * scaling_factor.
    Runs in bfloat16 on CUDA and float32 on CPU unless `dtype` says otherwise.
    """

    def __init__(
        self,
        vae: str,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source = str(vae)
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = dtype if dtype is not None else (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.batch_size = batch_size
        self.vae = self._load(self.source, self.dtype).to(self.device).eval().requires_grad_(False)

        config = self.vae.config
        self.name = "sd-vae"
        self.scale_factor = float(config.scaling_factor)
        shift = config.get("shift_factor")
        self.shift_factor = float(shift) if shift is not None else 0.0
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)

    @staticmethod
    def _load(source: str, dtype: torch.dtype) -> Any:
        local = os.path.expanduser(source)
        if os.path.exists(local):
            if not os.path.isdir(local):
                raise ValueError(f"cannot load VAE {source!r}: not a directory")
            if not os.path.isfile(os.path.join(local, "config.json")):
                raise ValueError(f"cannot load VAE {source!r}: the directory has no config.json")
            source = local
        elif _looks_like_local_path(source):
            raise ValueError(f"cannot load VAE {source!r}: no such directory")
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:
            raise ValueError(f"cannot load VAE {source!r}: diffusers is not installed (pip install diffusers)") from e
        try:
            return AutoencoderKL.from_pretrained(source, torch_dtype=dtype)
        except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot load VAE {source!r}: {type(e).__name__}: {reason}") from e

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            vae=self.source,
            shift_factor=self.shift_factor,
            dtype=str(self.dtype).removeprefix("torch."),
        )
        return out

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = self.check_frames(frames)
        pixels = torch.from_numpy(frames)
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        out: list[torch.Tensor] = []  # on the device: one copy back per clip, not a host sync per batch
        for start in range(0, pixels.shape[0], self.batch_size):
            x = _to_unit(pixels[start : start + self.batch_size].to(self.device, non_blocking=True))  # (B, 3, H, W)
            mean = self.vae.encode(x.to(self.dtype)).latent_dist.mean  # (B, C, H/d, W/d)
            out.append((mean.float() - self.shift_factor) * self.scale_factor)
        return torch.cat(out).cpu().contiguous().numpy()  # (T, C, H/d, W/d) float32, C-contiguous

    @torch.inference_mode()
    def decode(self, latents: np.ndarray | torch.Tensor) -> np.ndarray:
        z = self.check_latents(latents)
        out: list[torch.Tensor] = []
        for start in range(0, z.shape[0], self.batch_size):
            batch = z[start : start + self.batch_size].to(self.device)
            batch = batch / self.scale_factor + self.shift_factor  # (B, C, h, w) unscaled
            images = self.vae.decode(batch.to(self.dtype)).sample  # (B, 3, h*d, w*d)
            out.append(_to_uint8(images.clamp(-1, 1)).cpu())
        return torch.cat(out).contiguous().numpy()  # (T, h*d, w*d, 3) uint8


def build_codec(name: str, *, vae: str | None = None, device: str | None = None, batch_size: int = 8) -> Codec:
    """The codec called `name` ("identity" or "sd-vae"); sd-vae loads `vae` (a local directory or hub id)."""
    if name == "identity":
        if vae is not None:
            raise ValueError(f"--vae is only used with --codec sd-vae, got --codec identity --vae {vae}")
        return IdentityCodec()
    if name == "sd-vae":
        if not vae:
            raise ValueError("--codec sd-vae needs --vae PATH_OR_ID")
        return SDVAECodec(vae, device=device, batch_size=batch_size)
    raise ValueError(f"unknown codec {name!r}; valid codecs: {', '.join(CODEC_NAMES)}")
