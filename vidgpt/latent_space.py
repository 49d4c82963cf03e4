"""Which codec decodes a model's latents and which text encoder embeds its captions: chosen in one
place for training, sampling and evaluation, from what a dataset's index.json (or an export) records.

    codec = codec_for_index(read_json("latents/index.json"))          # the codec the dataset was encoded with
    codec = codec_for_export(info, model.cfg, vae=None)                # an export: its training dataset's codec, ...
    encoder = text_encoder_for(index, model.cfg, "cpu")                # the T5 the index names, or None

Problems are `ValueError`s of one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from data_pipeline.codecs import VAE_CODECS, Codec, build_codec
from data_pipeline.index import DatasetIndexError, read_json
from data_pipeline.storage import StorageError, join
from data_pipeline.text import TextEncoder
from vidgpt.model import ModelConfig

SAME_VAE_KEYS: tuple[str, ...] = (
    "name", "latent_channels", "downsample", "temporal_factor", "scale_factor", "shift_factor",
    "latents_mean", "latents_std", "weights_sha256",
)
"""What must agree between the codec latents were encoded with and the one decoding them (where both say)."""


def codec_of(record: Mapping[str, Any], *, vae: str | None = None, device: str | None = None) -> Codec:
    """The codec a recorded description names (index.json's "codec", or an export's sampling "codec":
    {"name": ..., "vae": ...}); vae: another location of the same VAE (ignored by codecs without one);
    device: where the VAE runs (None: a GPU when there is one). ValueError of one line when `vae` is
    not the VAE the record describes (other weights, channels, factors or normalisation)."""
    name = record["name"]
    codec = build_codec(name, vae=(vae or record.get("vae")) if name in VAE_CODECS else None, device=device)
    check_same_codec(record, codec.describe(), location=vae or record.get("vae"))
    return codec


def check_same_codec(recorded: Mapping[str, Any], found: Mapping[str, Any], *, location: str | None) -> None:
    """ValueError naming the first of SAME_VAE_KEYS on which two codec descriptions differ."""
    for key in SAME_VAE_KEYS:
        if key in recorded and key in found and recorded[key] != found[key]:
            def short(v: Any) -> str:
                return (v[:12] + "...") if isinstance(v, str) and len(v) > 16 else str(v)
            raise ValueError(f"the VAE at {location} is not the one these latents were encoded with "
                             f"({recorded.get('vae')}): {key} differs ({short(found[key])} here, "
                             f"{short(recorded[key])} recorded); latents of one VAE cannot be decoded by another")


def check_model_latents(info: Mapping[str, Any], index: Mapping[str, Any], data: str) -> None:
    """ValueError when dataset `data` (its index.json, read) was encoded with another codec or VAE than the
    one the export (`info`: its config.json) was trained on: its latents would be another language."""
    recorded = (info.get("sampling") or {}).get("codec")
    if isinstance(recorded, Mapping) and isinstance(index.get("codec"), Mapping):
        try:
            check_same_codec(recorded, index["codec"], location=index["codec"].get("vae") or index["codec"].get("name"))
        except ValueError as exc:
            raise ValueError(f"--data {data} was not encoded as this model's training data was: {exc}") from None


def codec_for_index(index: Mapping[str, Any], *, vae: str | None = None, device: str | None = None) -> Codec:
    """The codec a dataset index (index.json, read) records."""
    return codec_of(index["codec"], vae=vae, device=device)


def dataset_codec(path: str, *, vae: str | None = None, device: str | None = None,
                  model: Mapping[str, Any] | None = None) -> Codec:
    """The codec that decodes the latents of the dataset at `path` (its index.json "codec"); model: an
    export's config.json, refused (ValueError) when its training data was encoded otherwise."""
    index = read_json(join(path, "index.json"))
    if model is not None:
        check_model_latents(model, index, path)
    return codec_for_index(index, vae=vae, device=device)


def training_index(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """index.json of an export's training dataset (its config.json "data" "path"), when it can be read
    from here; None otherwise."""
    path = info.get("data", {}).get("path")
    if not path:
        return None
    try:
        return read_json(join(path, "index.json"))
    except (StorageError, DatasetIndexError, OSError, ValueError):
        return None


def codec_for_export(info: Mapping[str, Any], model_cfg: ModelConfig, *, vae: str | None = None,
                     device: str | None = None) -> Codec:
    """The codec of an export (`info`: its config.json): its training dataset's, when the dataset's index
    is readable here; else the codec the export records (its sampling "codec", with `vae` as the VAE's
    location here); else sd-vae with `vae` when given; else identity for a 3-channel (pixel) model;
    else ValueError."""
    index = training_index(info)
    if index is not None:
        return codec_for_index(index, vae=vae, device=device)
    recorded = (info.get("sampling") or {}).get("codec")
    if isinstance(recorded, Mapping) and recorded.get("name"):
        return codec_of(recorded, vae=vae, device=device)
    if vae:
        return build_codec("sd-vae", vae=vae, device=device)
    if model_cfg.in_channels == 3:
        return build_codec("identity")
    raise ValueError("cannot tell which codec decodes this model's latents (its training dataset is not readable "
                     "here): pass --data or --vae")


def text_encoder_path(index: Mapping[str, Any] | None) -> str | None:
    """The T5 directory a dataset index (or an export's sampling record) names, when it exists here."""
    entry = (index or {}).get("text_encoder")
    path = entry.get("path") if isinstance(entry, Mapping) else entry
    return path if path and Path(path).is_dir() else None


def text_encoder_for(source: str | Path | Mapping[str, Any] | None, model_cfg: ModelConfig,
                     device: str | torch.device) -> TextEncoder | None:
    """The text encoder that embeds captions for this model (`model_cfg.text_len` tokens), or None when
    the model takes no text or there is none to use.

    source: a T5 directory (ValueError when it is not one), or a dataset index whose encoder is used
    when it exists here (`text_encoder_path`), or None. ValueError when the encoder's width is not the
    model's text_dim."""
    if not model_cfg.text_dim or source is None:
        return None
    if isinstance(source, Mapping):
        path = text_encoder_path(source)
        if path is None:
            return None
    else:
        path = str(source)
        if not Path(path).is_dir():
            raise ValueError(f"text encoder {path}: no such directory")
    encoder = TextEncoder(path, max_length=model_cfg.text_len, device=device)
    if encoder.dim != model_cfg.text_dim:
        raise ValueError(f"text encoder {path} gives {encoder.dim}-wide embeddings; the model takes "
                         f"{model_cfg.text_dim}")
    return encoder
