"""The wan-vae codec (a causal video VAE: diffusers' AutoencoderKLWan, here a tiny one with random weights
saved to a temporary directory): its frame grid and normalisation, chunked decoding against diffusers'
own whole decode, the refusals, and real footage through encode -> shards -> training -> cached sampling
-> decode -> mp4, all in latent frames."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline.codecs import WanVAECodec, build_codec
from data_pipeline.encode import main as encode
from data_pipeline.video import DecodeOptions, decode_clips, write_video
from vidgpt.export import main as export

from test_real_footage import encode_footage, footage

diffusers = pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]


def save_tiny_wan(path: Path, *, seed: int = 0, **overrides: object) -> Path:
    """A random AutoencoderKLWan of the Wan 2.1 VAE's shape, scaled down: 4 latent channels, 8x spatial,
    4x temporal (9 x 64 x 64 frames <-> 3 x 8 x 8 latents)."""
    torch.manual_seed(seed)
    kwargs = dict(base_dim=16, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, latents_mean=MEAN, latents_std=STD)
    diffusers.AutoencoderKLWan(**{**kwargs, **overrides}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_wan(tmp_path_factory.mktemp("vae") / "tiny-wan")


@pytest.fixture(scope="module")
def codec(wan_dir: Path) -> WanVAECodec:
    built = build_codec("wan-vae", vae=str(wan_dir), device="cpu")
    assert isinstance(built, WanVAECodec)
    return built


def frames(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_the_frame_grid_the_normalisation_and_the_record(codec: WanVAECodec, wan_dir: Path) -> None:
    video = frames(9)
    z = codec.encode(video)
    assert z.shape == (3, 4, 8, 8) and z.dtype == np.float32  # 1 + 4k frames -> 1 + k latent frames
    with torch.no_grad():  # the posterior mean, normalised per channel with the VAE's latents_mean/std
        x = torch.from_numpy(video).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0  # (1, 3, T, H, W)
        mean = codec.vae.encode(x).latent_dist.mean[0].permute(1, 0, 2, 3).numpy()  # (T', C, h, w)
    want = (mean - np.array(MEAN)[None, :, None, None]) / np.array(STD)[None, :, None, None]
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-5)
    # causal in time: the first frame alone is the first latent frame (one image = one latent frame)
    np.testing.assert_allclose(codec.encode(video[:1]), z[:1], rtol=1e-5, atol=1e-5)
    assert codec.decode(z).shape == (9, 64, 64, 3)
    assert [codec.pixel_frames(n) for n in (0, 1, 2, 5)] == [0, 1, 5, 17]
    assert [codec.on_grid(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 5, 5, 9]
    for bad in (2, 7, 8):
        with pytest.raises(ValueError, match=rf"wan-vae codec takes 1 \+ 4k frames \(1, 5, 9, 13, \.\.\.\), got {bad}$"):
            codec.encode(video[:bad])
    record = codec.describe()
    assert json.loads(json.dumps(record)) == record
    assert record["name"] == "wan-vae" and record["vae"] == str(wan_dir)
    assert (record["latent_channels"], record["downsample"], record["temporal_factor"]) == (4, 8, 4)
    assert record["latents_mean"] == MEAN and record["latents_std"] == STD and len(record["weights_sha256"]) == 64


@pytest.mark.parametrize("split", [[5], [1, 4], [1, 1, 1, 1, 1], [2, 3]])
def test_chunked_decoding_equals_diffusers_whole_decode(codec: WanVAECodec, split: list[int]) -> None:
    z = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(1))  # (T', C, h, w), unit scale
    with torch.no_grad():  # diffusers' own decode of the whole sequence, as uint8
        whole = codec.vae.decode(codec.unnormalised(z)).sample[0].permute(1, 2, 3, 0)  # (T, H, W, 3) in [-1, 1]
    whole = ((whole + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    stream = codec.stream_decoder()
    parts, start = [], 0
    for n in split:
        parts.append(stream.push(z[start : start + n]))
        start += n
    ends = np.cumsum(split)
    assert [p.shape[0] for p in parts] == [codec.pixel_frames(e) - codec.pixel_frames(e - n) for e, n in zip(ends, split)]
    chunked = np.concatenate(parts)
    assert chunked.shape == whole.shape == (17, 64, 64, 3)
    # the same convolutions on the same inputs: equal up to float rounding before the uint8 quantisation
    assert np.abs(chunked.astype(int) - whole.astype(int)).max() <= 1


def test_a_vae_of_another_kind_or_shape_is_refused_in_one_line(tmp_path: Path, wan_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    image_vae = tmp_path / "sd"
    diffusers.AutoencoderKL(block_out_channels=(8, 8), norm_num_groups=4, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            ).save_pretrained(image_vae)
    with pytest.raises(ValueError, match=r"config.json names AutoencoderKL, not a video VAE \(AutoencoderKLWan\) "
                                         r"\(use --codec sd-vae\)$"):
        build_codec("wan-vae", vae=str(image_vae), device="cpu")
    with pytest.raises(ValueError, match=r"names AutoencoderKLWan, not an image VAE \(AutoencoderKL\) "
                                         r"\(use --codec wan-vae\)$"):
        build_codec("sd-vae", vae=str(wan_dir), device="cpu")
    bad_norm = save_tiny_wan(tmp_path / "bad", latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    with pytest.raises(ValueError, match=r"latents_mean/latents_std need 4 values \(z_dim\).*got 16/16$"):
        build_codec("wan-vae", vae=str(bad_norm), device="cpu")
    with pytest.raises(ValueError, match="--codec wan-vae needs --vae PATH_OR_ID"):
        build_codec("wan-vae")
    # through vidgpt-encode: one line, exit 2, nothing written
    (tmp_path / "videos").mkdir()
    os.symlink(footage("carphone_pristine.mp4"), tmp_path / "videos" / "carphone.mp4")
    capsys.readouterr()
    for args, line in (
        (["--vae", str(image_vae)],
         "config.json names AutoencoderKL, not a video VAE (AutoencoderKLWan) (use --codec sd-vae)"),
        (["--vae", str(wan_dir), "--min-frames", "2", "--max-frames", "4"],
         "--min-frames 2 / --max-frames 4: no clip length between them that the wan-vae codec takes (1 + 4k frames "
         "(1, 5, 9, 13, ...))"),
    ):
        assert encode([str(tmp_path / "videos"), str(tmp_path / "out"), "--codec", "wan-vae", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith(line) and not (tmp_path / "out").exists()


def run(module: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    if ok:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory, wan_dir: Path) -> Path:
    """Two real clips at 8 fps and 64x64 through the tiny Wan VAE, split into clips of at most 17 frames."""
    return encode_footage(tmp_path_factory.mktemp("wan-real"), ("bikes.mp4", "carphone_pristine.mp4"), "--codec",
                          "wan-vae", "--vae", str(wan_dir), "--device", "cpu", "--size", "64", "--fps", "8",
                          "--min-frames", "6", "--max-frames", "19")


def test_encoding_cuts_clips_on_the_vae_grid_and_records_the_vae(encoded: Path, codec: WanVAECodec) -> None:
    index = json.loads((encoded / "index.json").read_text())
    assert index["codec"] == codec.describe()  # location, factors, normalisation, weights
    lengths = [n for shard in index["shards"] for n in shard["frames"]]  # latent frames per clip
    want = []
    for name in ("bikes.mp4", "carphone_pristine.mp4"):  # --max-frames 19 -> 17, --min-frames 6 -> 9 video frames
        (clip,) = decode_clips(str(footage(name)), DecodeOptions(height=64, width=64, fps=8, max_frames=10_000))
        full, rest = divmod(clip.frames.shape[0], 17)
        want += [5] * full + ([codec.latent_frames(rest)] if rest >= 9 else [])
    assert sorted(lengths) == sorted(want) and index["num_frames"] == sum(want)
    assert 17 < sum(codec.pixel_frames(n) for n in lengths)
    # a sample's latents are the VAE's encoding of exactly the frames it records
    shard = encoded / index["shards"][0]["path"]
    with tarfile.open(shard) as tar:
        names = sorted(m.name for m in tar.getmembers())
        key = names[0].split(".")[0]
        meta = json.loads(tar.extractfile(f"{key}.json").read())  # type: ignore[union-attr]
        latents = np.load(io.BytesIO(tar.extractfile(f"{key}.latents.npy").read()))  # type: ignore[union-attr]
    source = next(footage(n) for n in ("bikes.mp4", "carphone_pristine.mp4") if n == meta["source"])
    (clip,) = decode_clips(str(source), DecodeOptions(height=64, width=64, fps=8, max_frames=10_000))
    position = {index: i for i, index in enumerate(clip.frame_indices)}
    pixels = clip.frames[[position[i] for i in meta["frame_indices"]]]
    assert len(meta["frame_indices"]) == codec.pixel_frames(latents.shape[0])
    assert latents.dtype == np.float16  # stored as float16
    np.testing.assert_array_equal(latents, codec.encode(pixels).astype(np.float16))


def test_train_sample_and_decode_real_footage_in_latent_frames(encoded: Path, wan_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    refused = run("vidgpt.train", "--config", str(ROOT / "configs" / "demo_cpu.toml"), f"--run_dir={run_dir}",
                  f"--data.path={encoded}", ok=False)  # the demo's 3-channel pixel model
    assert refused.returncode == 2 and not run_dir.exists(), refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1].endswith(
        f"model.in_channels is 3 but {encoded} holds wan-vae latents of 4 channels: set --model.in_channels=4")
    run("vidgpt.train", "--config", str(ROOT / "configs" / "demo_cpu.toml"), f"--run_dir={run_dir}",
        f"--data.path={encoded}", "--model.flavor=tiny", "--model.text_dim=0", "--model.in_channels=4", "--model.patch=2",
        "--data.num_frames=3",
        "--training.steps=6", "--checkpoint.interval=100", "--logging.interval=3", "--data.batch_size=2",
        "--eval.interval=0")
    assert export([str(run_dir), str(tmp_path / "export")]) == 0
    out = tmp_path / "continued"
    done = run("vidgpt.sample", str(tmp_path / "export"), "--prompt", str(footage("bikes.mp4")), "--prompt-frames", "2",
               "--frames", "3", "--chunk", "1", "--steps", "2", "--out", str(out))
    assert "(5 from" in done.stdout  # 2 latent prompt frames = the clip's last 5 frames
    import av

    with av.open(str(out / "sample_000.mp4")) as container:
        video = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(video) == 1 + 4 * (2 + 3 - 1) and video[0].shape == (64, 64, 3)  # 5 latent frames -> 17 frames

    # from the dataset's own clips (decoded as they are generated), and with the kv-cache on and off alike
    cached = run("vidgpt.sample", str(tmp_path / "export"), "--num", "1", "--prompt-frames", "1", "--frames", "2",
                 "--chunk", "1", "--steps", "2", "--out", str(tmp_path / "c"))
    uncached = run("vidgpt.sample", str(tmp_path / "export"), "--num", "1", "--prompt-frames", "1", "--frames", "2",
                   "--chunk", "1", "--steps", "2", "--no-kv-cache", "--out", str(tmp_path / "u"))
    assert "9 frames" in cached.stdout and "9 frames" in uncached.stdout
    with av.open(str(tmp_path / "c" / "sample_000.mp4")) as a, av.open(str(tmp_path / "u" / "sample_000.mp4")) as b:
        fa = np.stack([f.to_ndarray(format="rgb24") for f in a.decode(video=0)]).astype(int)
        fb = np.stack([f.to_ndarray(format="rgb24") for f in b.decode(video=0)]).astype(int)
    assert np.abs(fa - fb).max() <= 2  # the same latents up to float rounding, then the same lossy mp4 encoding

    # image to video: one image is one latent frame
    Image.fromarray(np.full((48, 80, 3), 200, np.uint8)).save(tmp_path / "still.png")
    done = run("vidgpt.sample", str(tmp_path / "export"), "--prompt", str(tmp_path / "still.png"), "--frames", "2",
               "--chunk", "1", "--steps", "2", "--out", str(tmp_path / "i2v"))
    assert "9 frames (1 from" in done.stdout  # 1 + 2 latent frames -> 1 + 4 * 2 frames

    # evaluation against the dataset's own clips, decoded: frame counts in video frames, prompt and chunks alike
    done = run("vidgpt.evaluation", str(tmp_path / "export"), "--data", str(encoded), "--clips", "2", "--multiples", "1",
               "--prompt-frames", "1", "--chunk", "1", "--steps", "2", "--out", str(tmp_path / "eval"))
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["spec"]["temporal_factor"] == 4 and report["spec"]["prompt_frames"] == 1
    assert report["spec"]["clip_len"] == 12 and report["frames"] == 13  # 1 + 3 latent frames -> 13 frames

    # refusals, one line each: a prompt off the VAE's grid, another VAE than the data was encoded with
    short = tmp_path / "short.mp4"
    write_video(short, np.full((3, 64, 64, 3), 128, np.uint8), 8)
    done = run("vidgpt.sample", str(tmp_path / "export"), "--prompt", str(short), "--prompt-frames", "2",
               "--frames", "1", "--out", str(tmp_path / "x"), ok=False)
    assert done.returncode == 2 and not (tmp_path / "x").exists()
    assert done.stderr.strip().splitlines()[-1].endswith(
        "short.mp4: 3 frames, but the wan-vae codec takes 1 + 4k frames (1, 5, 9, 13, ...); --prompt-frames 2 "
        "(latent frames) needs 5: give a longer clip or fewer --prompt-frames")
    other = save_tiny_wan(tmp_path / "other-wan", seed=1)
    for args in (["--prompt", str(footage("bikes.mp4"))], ["--num", "1"]):
        done = run("vidgpt.sample", str(tmp_path / "export"), *args, "--vae", str(other), "--frames", "1",
                   "--out", str(tmp_path / "y"), ok=False)
        assert done.returncode == 2 and not (tmp_path / "y").exists(), done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert f"the VAE at {other} is not the one these latents were encoded with ({wan_dir}): weights_sha256 " \
               "differs" in last, last
