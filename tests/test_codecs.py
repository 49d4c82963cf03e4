"""Codecs (frames <-> latents) and the caption text encoder, on tiny real models saved to temp dirs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.codecs import Codec, IdentityCodec, SDVAECodec, build_codec
from data_pipeline.text import TextEncoder, save_tiny_text_encoder

SCALE = 0.5


def random_frames(t: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def save_tiny_vae(path: Path, shift_factor: float | None = None) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=32,
        scaling_factor=SCALE,
        shift_factor=shift_factor,
    )
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "vae")


@pytest.fixture(scope="module")
def vae_codec(vae_dir: Path) -> SDVAECodec:
    return SDVAECodec(str(vae_dir), device="cpu")


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "tiny_t5"
    save_tiny_text_encoder(path, dim=16)
    return path


# ----------------------------------------------------------------------------- identity codec


def test_identity_round_trip_is_exact_for_every_byte() -> None:
    codec = IdentityCodec()
    frames = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 16, 16, 3)
    frames = np.concatenate([frames, random_frames(2, 16, 16)])  # (3, 16, 16, 3)
    z = codec.encode(frames)
    assert z.shape == (3, 3, 16, 16) and z.dtype == np.float32
    assert z.min() == -1.0 and z.max() == 1.0
    np.testing.assert_array_equal(z[0, :, 0, 0], np.float32(-1.0))
    back = codec.decode(z)
    assert back.shape == frames.shape and back.dtype == np.uint8
    np.testing.assert_array_equal(back, frames)
    # Shards store float16 latents; that precision still round-trips exactly, as a tensor too.
    np.testing.assert_array_equal(codec.decode(z.astype(np.float16)), frames)
    np.testing.assert_array_equal(codec.decode(torch.from_numpy(z)), frames)


def test_identity_describe_is_json() -> None:
    codec = build_codec("identity")
    assert isinstance(codec, Codec)
    desc = codec.describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc == {"name": "identity", "scale_factor": 1.0, "latent_channels": 3, "downsample": 1}


def test_identity_rejects_bad_inputs() -> None:
    codec = IdentityCodec()
    with pytest.raises(ValueError, match=re.escape("(T>=1, H, W, 3), got (32, 32, 3)")):
        codec.encode(random_frames()[0])
    with pytest.raises(ValueError, match=re.escape("(T>=1, H, W, 3), got (2, 8, 8, 4)")):
        codec.encode(np.zeros((2, 8, 8, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="must be uint8, got float32"):
        codec.encode(random_frames().astype(np.float32))
    with pytest.raises(ValueError, match=re.escape("(T>=1, 3, h, w), got (2, 4, 8, 8)")):
        codec.decode(np.zeros((2, 4, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="floating point"):
        codec.decode(np.zeros((2, 3, 8, 8), dtype=np.int64))


# ----------------------------------------------------------------------------- SD VAE codec


def direct_mean(vae_dir: Path, frames: np.ndarray) -> tuple[torch.Tensor, torch.nn.Module]:
    """Unscaled posterior mean computed straight from diffusers on the same [-1, 1] input."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (T, 3, H, W)
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean, vae


def test_sd_vae_encode_applies_scale_once(vae_codec: SDVAECodec, vae_dir: Path) -> None:
    frames = random_frames()
    z = vae_codec.encode(frames)
    assert z.shape == (3, 4, 16, 16) and z.dtype == np.float32 and z.flags.c_contiguous
    mean, _ = direct_mean(vae_dir, frames)
    np.testing.assert_allclose(z, (mean * SCALE).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(z, mean.numpy(), atol=1e-3)  # the scale is really there
    np.testing.assert_array_equal(vae_codec.encode(frames), z)  # deterministic (posterior mean)


def test_sd_vae_decode_inverts_scale(vae_codec: SDVAECodec, vae_dir: Path) -> None:
    frames = random_frames()
    z = vae_codec.encode(frames)
    back = vae_codec.decode(z)
    assert back.shape == (3, 32, 32, 3) and back.dtype == np.uint8 and back.flags.c_contiguous
    _, vae = direct_mean(vae_dir, frames)
    with torch.no_grad():
        images = vae.decode(torch.from_numpy(z) / SCALE).sample  # (T, 3, 32, 32)
    expected = ((images.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    assert np.abs(back.astype(np.int16) - expected.astype(np.int16)).max() <= 1
    # The same latents give the same frames whatever their container or memory layout.
    np.testing.assert_array_equal(vae_codec.decode(torch.from_numpy(z)), back)
    np.testing.assert_array_equal(vae_codec.decode(torch.from_numpy(z).to(memory_format=torch.channels_last)), back)


def test_sd_vae_batch_size_does_not_change_latents(vae_codec: SDVAECodec, vae_dir: Path) -> None:
    frames = random_frames(t=5)
    small = SDVAECodec(str(vae_dir), device="cpu", batch_size=2)
    np.testing.assert_allclose(small.encode(frames), vae_codec.encode(frames), rtol=1e-5, atol=1e-6)


def test_sd_vae_shift_factor(tmp_path: Path) -> None:
    vae_dir = save_tiny_vae(tmp_path / "vae", shift_factor=0.25)
    codec = SDVAECodec(str(vae_dir), device="cpu")
    frames = random_frames(t=2)
    mean, _ = direct_mean(vae_dir, frames)
    z = codec.encode(frames)
    np.testing.assert_allclose(z, ((mean - 0.25) * SCALE).numpy(), rtol=1e-5, atol=1e-6)
    assert codec.describe()["shift_factor"] == 0.25


def test_sd_vae_describe(vae_codec: SDVAECodec, vae_dir: Path) -> None:
    desc = vae_codec.describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc["name"] == "sd-vae" and desc["vae"] == str(vae_dir)
    assert (desc["scale_factor"], desc["latent_channels"], desc["downsample"]) == (SCALE, 4, 2)
    assert desc["dtype"] == "float32"  # CPU default


def test_sd_vae_rejects_bad_inputs(vae_codec: SDVAECodec) -> None:
    with pytest.raises(ValueError, match=re.escape("divisible by 2, got frames of shape (1, 31, 32, 3)")):
        vae_codec.encode(random_frames(t=1, h=31))
    with pytest.raises(ValueError, match=re.escape("(T>=1, H, W, 3), got (3, 32, 32)")):
        vae_codec.encode(random_frames()[..., 0])
    with pytest.raises(ValueError, match=re.escape("(T>=1, 4, h, w), got (3, 3, 16, 16)")):
        vae_codec.decode(np.zeros((3, 3, 16, 16), dtype=np.float32))


def test_sd_vae_load_errors(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_vae"
    with pytest.raises(ValueError, match=f"cannot load VAE '{re.escape(str(missing))}': no such directory"):
        SDVAECodec(str(missing), device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        SDVAECodec(str(empty), device="cpu")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"_class_name": "AutoencoderKL"}')  # no weights
    with pytest.raises(ValueError, match=f"cannot load VAE '{re.escape(str(broken))}': ") as info:
        SDVAECodec(str(broken), device="cpu")
    assert "\n" not in str(info.value)


def test_build_codec(vae_dir: Path) -> None:
    codec = build_codec("sd-vae", vae=str(vae_dir), device="cpu", batch_size=3)
    assert isinstance(codec, SDVAECodec) and codec.batch_size == 3
    with pytest.raises(ValueError, match="--codec sd-vae needs --vae PATH_OR_ID"):
        build_codec("sd-vae")
    with pytest.raises(ValueError, match="unknown codec 'vqgan'; valid codecs: identity, sd-vae"):
        build_codec("vqgan")


# ----------------------------------------------------------------------------- text encoder


def test_tiny_tokenizer_loads_through_auto_tokenizer(text_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(text_dir))
    ids = tokenizer(["a red circle", "a purple unicorn"])["input_ids"]
    vocab = tokenizer.get_vocab()
    assert ids[0] == [vocab["a"], vocab["red"], vocab["circle"], tokenizer.eos_token_id]
    assert ids[1] == [vocab["a"], vocab["purple"], tokenizer.unk_token_id, tokenizer.eos_token_id]
    assert tokenizer.pad_token == "<pad>"


def test_text_encoder_valid_tokens_only(text_dir: Path) -> None:
    encoder = TextEncoder(str(text_dir), device="cpu")
    assert encoder.dim == 16
    captions = ["a red circle", "a blue square bouncing fast"]
    embs = encoder.encode(captions)
    assert [e.shape for e in embs] == [(4, 16), (6, 16)]  # words + </s>, no padding
    assert all(e.dtype == np.float16 for e in embs)
    # Deterministic, and a caption's embedding does not depend on the padding of its batch.
    again = encoder.encode(captions)
    for a, b in zip(embs, again):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(encoder.encode(["a red circle"])[0], embs[0])
    assert encoder.encode([]) == []


def test_text_encoder_truncates(text_dir: Path) -> None:
    encoder = TextEncoder(str(text_dir), max_length=3, device="cpu")
    embs = encoder.encode(["a red circle", "a blue square bouncing fast", "red"])
    assert [e.shape for e in embs] == [(3, 16), (3, 16), (2, 16)]


def test_text_encoder_errors(tmp_path: Path, text_dir: Path) -> None:
    missing = tmp_path / "no_t5"
    with pytest.raises(ValueError, match=f"cannot load text encoder '{re.escape(str(missing))}': no such directory"):
        TextEncoder(str(missing))
    with pytest.raises(ValueError, match=f"cannot load text encoder '{re.escape(str(tmp_path))}': ") as info:
        TextEncoder(str(tmp_path))  # a directory without a model
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="captions must be a list of str"):
        TextEncoder(str(text_dir), device="cpu").encode("a red circle")  # type: ignore[arg-type]
