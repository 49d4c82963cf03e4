"""Codecs: uint8 video frames <-> the latents the diffusion model sees.

    from data_pipeline.codecs import build_codec
    codec = build_codec("sd-vae", vae="stabilityai/sd-vae-ft-ema")   # or build_codec("identity")
    z = codec.encode(frames)     # (T, H, W, 3) uint8 -> (T, C, H/d, W/d) float32, already * scale_factor
    frames = codec.decode(z)     # (T, C, h, w) scaled latents -> (T, h*d, w*d, 3) uint8

    codec = build_codec("wan-vae", vae="path/to/Wan2.1_VAE_diffusers")   # a causal video VAE
    z = codec.encode(frames)     # (1 + 4k, H, W, 3) uint8 -> (1 + k, C, H/8, W/8), normalised per channel
    stream = codec.stream_decoder()
    for chunk in chunks: frames = stream.push(chunk)   # decode a generation as it grows, in bounded memory

Encoding is deterministic (the VAEs use their posterior mean), so a resumed encoding job writes the
same latents as an uninterrupted one. `describe()` is what shard metadata and `index.json` record.
A video VAE compresses time too (`temporal_factor` f): a clip of 1 + f*k frames becomes 1 + k latent
frames, the first frame alone (so one latent frame is exactly one image).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_pipeline.codec_names import CODEC_NAMES, VAE_CODECS

__all__ = ["CODEC_NAMES", "VAE_CODECS", "Codec", "StreamDecoder", "build_codec"]


class Codec(ABC):
    """Frames (T, H, W, 3) uint8 <-> scaled latents (T, C, H/d, W/d) float32."""

    name: str
    scale_factor: float
    """Latents are stored multiplied by this (the SD VAE's `scaling_factor`)."""
    latent_channels: int
    downsample: int
    """Spatial factor d between frames and latents."""
    temporal_factor: int = 1
    """f: a clip of 1 + f*k frames has 1 + k latent frames (1: one latent frame per frame)."""

    def pixel_frames(self, latent_frames: int) -> int:
        """Frames that `latent_frames` latent frames decode to (and that encode to them)."""
        return 0 if latent_frames < 1 else 1 + self.temporal_factor * (latent_frames - 1)

    def latent_frames(self, frames: int) -> int:
        """Latent frames of the longest clip on the codec's frame grid with at most `frames` frames."""
        return 0 if frames < 1 else 1 + (frames - 1) // self.temporal_factor

    def on_grid(self, frames: int) -> int:
        """The longest frame count on the codec's grid (1 + f*k) that is at most `frames` (0 if none)."""
        return self.pixel_frames(self.latent_frames(frames))

    def grid_text(self) -> str:
        """The valid frame counts, in words."""
        f = self.temporal_factor
        return "any number of frames" if f == 1 else f"1 + {f}k frames ({', '.join(str(1 + f * k) for k in range(4))}, ...)"

    def stream_decoder(self) -> StreamDecoder:
        """A decoder fed latent frames in order, a chunk at a time (see StreamDecoder)."""
        return FrameByFrame(self)

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
            **({"temporal_factor": int(self.temporal_factor)} if self.temporal_factor != 1 else {}),
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
        if self.on_grid(frames.shape[0]) != frames.shape[0]:
            raise ValueError(f"{self.name} codec takes {self.grid_text()}, got {frames.shape[0]}")
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


class StreamDecoder(ABC):
    """Decodes one video's latents as they are generated: push(latent frames in order) returns the frames
    they complete. Pushing a sequence in any split gives the frames of decoding it whole (within float
    rounding), while only one chunk's activations are ever held."""

    @abstractmethod
    def push(self, latents: np.ndarray | torch.Tensor) -> np.ndarray:
        """The next latent frames (n, C, h, w), n >= 1 -> uint8 frames (m, H, W, 3)."""


class FrameByFrame(StreamDecoder):
    """Codecs whose latent frames decode independently (identity, image VAEs)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def push(self, latents: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.codec.decode(latents)


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


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and bytes, in name order): which VAE encoded a
    dataset, whatever file format or location it was loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_vae(source: str, cls_name: str, codec: str) -> tuple[Any, str]:
    """The diffusers autoencoder `cls_name` at `source` (a local directory or a hub id), in float32 on the
    CPU, and the SHA-256 of its weights; ValueError of one line when it is not there or is another kind
    of VAE (an image VAE given to a video codec, or the other way round)."""
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
        import diffusers  # noqa: PLC0415 - heavy, only for VAE codecs
    except ImportError as e:
        raise ValueError(f"cannot load VAE {source!r}: diffusers is not installed (pip install diffusers)") from e
    cls = getattr(diffusers, cls_name)
    try:
        if os.path.isdir(source):
            config = json.loads(Path(source, "config.json").read_text())
        else:
            config = cls.load_config(source)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear line
        raise ValueError(f"cannot load VAE {source!r}: {_one_line(e)}") from e
    found = config.get("_class_name") if isinstance(config, dict) else None
    if found != cls_name:
        other = {"AutoencoderKL": "sd-vae", "AutoencoderKLWan": "wan-vae"}.get(str(found))
        hint = f" (use --codec {other})" if other else ""
        kind = "a video VAE" if codec == "wan-vae" else "an image VAE"
        raise ValueError(f"cannot load VAE {source!r} for --codec {codec}: its config.json names {found or 'no class'}, "
                         f"not {kind} ({cls_name}){hint}")
    try:
        vae = cls.from_pretrained(source, torch_dtype=torch.float32, low_cpu_mem_usage=False)  # no accelerate needed
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear line
        raise ValueError(f"cannot load VAE {source!r}: {_one_line(e)}") from e
    return vae.eval().requires_grad_(False), weights_sha256(vae)


def _placed(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> Any:
    """The float32 model on `device` in `dtype` (cast only when another dtype is asked for)."""
    return model.to(device) if dtype == torch.float32 else model.to(device, dtype)


class SDVAECodec(Codec):
    """A diffusers `AutoencoderKL` (e.g. the SD VAE) from a local directory or a hub id, frame by frame.

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
        model, self.weights_sha256 = load_vae(self.source, "AutoencoderKL", "sd-vae")
        self.vae = _placed(model, self.device, self.dtype)

        config = self.vae.config
        self.name = "sd-vae"
        self.scale_factor = float(config.scaling_factor)
        shift = config.get("shift_factor")
        self.shift_factor = float(shift) if shift is not None else 0.0
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            vae=self.source,
            shift_factor=self.shift_factor,
            dtype=str(self.dtype).removeprefix("torch."),
            weights_sha256=self.weights_sha256,
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


class WanVAECodec(Codec):
    """A diffusers `AutoencoderKLWan` (the Wan 2.1 VAE and any of its shape): causal in time, a clip of
    1 + 4k frames -> 1 + k latent frames of z_dim channels at 1/8 the size.

    Latents are the posterior mean normalised per channel with the VAE's `latents_mean`/`latents_std`
    ((mean - m) / s, as the Wan pipelines do), so the diffusion model sees unit-scale channels.
    Runs in bfloat16 on CUDA and float32 on CPU unless `dtype` says otherwise.
    """

    def __init__(
        self, vae: str, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        self.source = str(vae)
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = dtype if dtype is not None else (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        model, self.weights_sha256 = load_vae(self.source, "AutoencoderKLWan", "wan-vae")
        config = model.config
        self.name = "wan-vae"
        self.scale_factor = 1.0
        self.latent_channels = int(config.z_dim)
        if config.get("patch_size"):
            raise ValueError(f"cannot use VAE {self.source!r}: patch_size {config.patch_size} (a Wan 2.2 VAE) is not "
                             "supported yet; the Wan 2.1 VAE has none")
        self.downsample = 2 ** (len(config.dim_mult) - 1)
        self.temporal_factor = 2 ** sum(bool(x) for x in config.temperal_downsample)
        mean, std = list(config.latents_mean), list(config.latents_std)
        if len(mean) != self.latent_channels or len(std) != self.latent_channels or min(std) <= 0:
            raise ValueError(f"cannot use VAE {self.source!r}: latents_mean/latents_std need {self.latent_channels} "
                             f"values (z_dim) and a positive std, got {len(mean)}/{len(std)}")
        self.latents_mean = [float(x) for x in mean]
        self.latents_std = [float(x) for x in std]
        self._mean = torch.tensor(self.latents_mean).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(self.latents_std).view(1, -1, 1, 1, 1)
        self.vae = _placed(model, self.device, self.dtype)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            vae=self.source, dtype=str(self.dtype).removeprefix("torch."), weights_sha256=self.weights_sha256,
            latents_mean=self.latents_mean, latents_std=self.latents_std,
        )
        return out

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = self.check_frames(frames)  # (1 + 4k, H, W, 3)
        x = _to_unit(torch.from_numpy(frames).to(self.device))  # (T, 3, H, W)
        x = x.permute(1, 0, 2, 3)[None].to(self.dtype)  # (1, 3, T, H, W)
        mean = self.vae.encode(x).latent_dist.mean.float()  # (1, C, 1 + k, h, w)
        z = (mean - self._mean.to(mean.device)) / self._std.to(mean.device)
        return z[0].permute(1, 0, 2, 3).cpu().contiguous().numpy()  # (1 + k, C, h, w) float32

    def decode(self, latents: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.stream_decoder().push(latents)

    def stream_decoder(self) -> StreamDecoder:
        return WanStream(self)

    def unnormalised(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents (n, C, h, w) -> the VAE's own (1, C, n, h, w), in its dtype on its device."""
        z = z.to(self.device).permute(1, 0, 2, 3)[None]  # (1, C, n, h, w)
        return (z * self._std.to(z.device) + self._mean.to(z.device)).to(self.dtype)


class WanStream(StreamDecoder):
    """The Wan decoder run one latent frame at a time, its causal convolutions' cache carried across
    pushes (what AutoencoderKLWan.decode does inside one call): the first latent frame gives 1 frame,
    each later one 4."""

    def __init__(self, codec: WanVAECodec) -> None:
        self.codec = codec
        self.cache: list[Any] = [None] * len(list(codec.vae.decoder.modules()))  # one slot per causal conv at most
        self.started = False

    @torch.inference_mode()
    def push(self, latents: np.ndarray | torch.Tensor) -> np.ndarray:
        codec, vae = self.codec, self.codec.vae
        x = vae.post_quant_conv(codec.unnormalised(codec.check_latents(latents)))  # (1, C, n, h, w), pointwise
        out = []
        for i in range(x.shape[2]):
            frames = vae.decoder(x[:, :, i : i + 1], feat_cache=self.cache, feat_idx=[0], first_chunk=not self.started)
            self.started = True
            out.append(_to_uint8(frames[0].permute(1, 0, 2, 3).clamp(-1, 1)).cpu())  # (1 or 4, H, W, 3)
        return torch.cat(out).contiguous().numpy()


def build_codec(name: str, *, vae: str | None = None, device: str | None = None, batch_size: int = 8) -> Codec:
    """The codec called `name` (one of CODEC_NAMES); sd-vae and wan-vae load `vae` (a local directory or
    hub id); batch_size: frames per batch of the image VAE."""
    if name == "identity":
        if vae is not None:
            raise ValueError(f"--vae is only used with --codec {'/'.join(VAE_CODECS)}, got --codec identity --vae {vae}")
        return IdentityCodec()
    if name in VAE_CODECS and not vae:
        raise ValueError(f"--codec {name} needs --vae PATH_OR_ID")
    if name == "sd-vae":
        return SDVAECodec(vae, device=device, batch_size=batch_size)
    if name == "wan-vae":
        return WanVAECodec(vae, device=device)
    raise ValueError(f"unknown codec {name!r}; valid codecs: {', '.join(CODEC_NAMES)}")
